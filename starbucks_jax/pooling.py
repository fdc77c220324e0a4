"""Sentence embeddings from token states: CLS or masked-mean pooling, then a Matryoshka cut to `dim`."""

from __future__ import annotations

import jax.numpy as jnp

POOLINGS = ("cls", "mean")


def cls_pool(hidden: jnp.ndarray) -> jnp.ndarray:
  """[batch, length, hidden] -> [batch, hidden], the first ([CLS]) token, in float32."""
  return hidden[:, 0].astype(jnp.float32)


def mean_pool(hidden: jnp.ndarray, attention_mask: jnp.ndarray) -> jnp.ndarray:
  """Mean over the unpadded tokens, in float32 (as sentence-transformers' Pooling does, clamp 1e-9)."""
  mask = attention_mask.astype(jnp.float32)[..., None]
  summed = jnp.sum(hidden.astype(jnp.float32) * mask, axis=1)
  return summed / jnp.maximum(jnp.sum(mask, axis=1), 1e-9)


def pool(hidden: jnp.ndarray, attention_mask: jnp.ndarray, pooling: str) -> jnp.ndarray:
  if pooling == "cls":
    return cls_pool(hidden)
  if pooling == "mean":
    return mean_pool(hidden, attention_mask)
  raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


def cut(embedding: jnp.ndarray, dim: int, normalize: bool = False) -> jnp.ndarray:
  """Keeps the first `dim` coordinates; L2-normalises after the cut when asked."""
  embedding = embedding[..., :dim]
  if normalize:
    norm = jnp.linalg.norm(embedding, axis=-1, keepdims=True)
    embedding = embedding / jnp.maximum(norm, 1e-12)
  return embedding
