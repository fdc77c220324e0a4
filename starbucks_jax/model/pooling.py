"""Sentence embeddings from token states: CLS or masked-mean pooling, the Matryoshka cut to `dim`, and
L2 normalisation (the one definition every loss, search and export path uses).
"""

from __future__ import annotations

from typing import Optional

import flax
import jax
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


def packed_pools(hidden: jnp.ndarray, segment_ids: jnp.ndarray, position_ids: jnp.ndarray,
                 num_texts: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(cls, mean) [num_texts, hidden] float32 of packed rows: text t's tokens are those with segment id t
  (ids of num_texts or more are padding, dropped); its CLS is its token at position 0.

  Sums over segment ids rather than gathers at known offsets, so only ids and positions are needed and
  hosts can number their texts globally without knowing where other hosts put them."""
  h = hidden.astype(jnp.float32).reshape(-1, hidden.shape[-1])
  ids = segment_ids.reshape(-1)
  first = (position_ids.reshape(-1) == 0).astype(jnp.float32)
  cls = jax.ops.segment_sum(h * first[:, None], ids, num_segments=num_texts)
  sums = jax.ops.segment_sum(h, ids, num_segments=num_texts)
  counts = jax.ops.segment_sum(jnp.ones_like(ids, jnp.float32), ids, num_segments=num_texts)
  return cls, sums / jnp.maximum(counts, 1e-9)[:, None]


def encoder_output(hidden_states: tuple, attention_mask: jnp.ndarray, segment_ids: Optional[jnp.ndarray] = None,
                   position_ids: Optional[jnp.ndarray] = None, num_texts: Optional[int] = None) -> EncoderOutput:
  """Every layer's states and pooled vectors: per row, or per text of packed rows when `segment_ids` is given."""
  if segment_ids is None:
    return EncoderOutput(hidden_states=hidden_states, cls=tuple(cls_pool(h) for h in hidden_states),
                         mean=tuple(mean_pool(h, attention_mask) for h in hidden_states))
  if position_ids is None or num_texts is None:
    raise ValueError("packed rows need position_ids and num_texts with their segment_ids")
  pools = [packed_pools(h, segment_ids, position_ids, num_texts) for h in hidden_states]
  return EncoderOutput(hidden_states=hidden_states, cls=tuple(c for c, _ in pools), mean=tuple(m for _, m in pools))


def cut(embedding: jnp.ndarray, dim: int, normalize: bool = False) -> jnp.ndarray:
  """Keeps the first `dim` coordinates; L2-normalises after the cut when asked."""
  embedding = embedding[..., :dim]
  return l2_normalize(embedding) if normalize else embedding
