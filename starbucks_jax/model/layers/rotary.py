"""Rotary position embeddings (RoFormer), in the "rotate half" convention transformers uses for
ModernBERT, Qwen3 and Gemma 3: a head's two halves are the (cos, sin) rotation's pairs."""

from __future__ import annotations

import jax.numpy as jnp


def rotary(x: jnp.ndarray, positions: jnp.ndarray, theta: float) -> jnp.ndarray:
  """Rotary position embedding of x [batch, length, heads, head_dim] at positions [batch, length], in float32."""
  half = x.shape[-1] // 2
  inv_freq = 1.0 / (theta ** (jnp.arange(0, x.shape[-1], 2, dtype=jnp.float32) / x.shape[-1]))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [batch, length, half]
  cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
  x = x.astype(jnp.float32)
  x1, x2 = x[..., :half], x[..., half:]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
