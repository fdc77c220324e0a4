"""Normalisation layers: LayerNorm (BERT's, with or without a bias) and RMSNorm (Qwen3's `w * x`, or
Gemma's `(1 + w) * x` whose weights start at 0). Statistics are computed in float32 whatever the dtype."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def layer_norm(epsilon: float, dtype: Dtype, name: str, use_bias: bool = True) -> nn.LayerNorm:
  """Flax's LayerNorm with float32 parameters (Flax computes its statistics in float32 for bfloat16 inputs)."""
  return nn.LayerNorm(epsilon=epsilon, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, name=name)


class RMSNorm(nn.Module):
  """x / rms(x) times a learnt scale over the last axis; `one_plus`: times (1 + scale) (Gemma), the scale
  initialised to 0 so that a fresh norm is the identity's scale either way. Parameter: `scale`."""
  epsilon: float = 1e-6
  one_plus: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    init = nn.initializers.zeros if self.one_plus else nn.initializers.ones
    scale = self.param("scale", init, (x.shape[-1],), jnp.float32)
    h = x.astype(jnp.float32)
    h = h * jax.lax.rsqrt(jnp.mean(jnp.square(h), axis=-1, keepdims=True) + self.epsilon)
    return (h * ((1.0 + scale) if self.one_plus else scale)).astype(self.dtype)
