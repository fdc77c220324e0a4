"""Sentence embeddings from token states: CLS or masked-mean pooling, the Matryoshka cut to `dim`, and
L2 normalisation (the one definition every loss, search and export path uses).
"""

from __future__ import annotations

import flax
import jax.numpy as jnp

POOLINGS = ("cls", "mean")
SIMILARITIES = ("cosine", "dot")  # how two embeddings are scored (cosine: of the L2-normalised vectors)
# As torch.nn.functional.normalize (sentence-transformers' cos_sim): x / max(||x||, eps).
NORM_EPS = 1e-12


@flax.struct.dataclass
class EncoderOutput:
  """Per-layer outputs of a forward pass; index 0 is the embedding layer, index n the output of layer n."""
  hidden_states: tuple  # of [batch, length, hidden] in the compute dtype
  cls: tuple            # of [batch, hidden] float32
  mean: tuple           # of [batch, hidden] float32

  def pooled(self, layer: int, kind: str) -> jnp.ndarray:
    if kind not in POOLINGS:
      raise ValueError(f"pooling must be one of {POOLINGS}, got {kind!r}")
    return getattr(self, kind)[layer]


def l2_normalize(x: jnp.ndarray) -> jnp.ndarray:
  """Rows divided by their L2 norm (floored at 1e-12, so an all-zero row stays zero)."""
  norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
  return x / jnp.maximum(norm, NORM_EPS)


def cls_pool(hidden: jnp.ndarray) -> jnp.ndarray:
  """[batch, length, hidden] -> [batch, hidden], the first ([CLS]) token, in float32."""
  return hidden[:, 0].astype(jnp.float32)


def mean_pool(hidden: jnp.ndarray, attention_mask: jnp.ndarray) -> jnp.ndarray:
  """Mean over the unpadded tokens, in float32 (as sentence-transformers' Pooling does, clamp 1e-9)."""
  mask = attention_mask.astype(jnp.float32)[..., None]
  summed = jnp.sum(hidden.astype(jnp.float32) * mask, axis=1)
  return summed / jnp.maximum(jnp.sum(mask, axis=1), 1e-9)


def cut(embedding: jnp.ndarray, dim: int, normalize: bool = False) -> jnp.ndarray:
  """Keeps the first `dim` coordinates; L2-normalises after the cut when asked."""
  embedding = embedding[..., :dim]
  return l2_normalize(embedding) if normalize else embedding
