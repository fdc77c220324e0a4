"""The one attention every family uses: which keys a query may see (`AttentionMask`), and softmax
attention over them (`attend`), routed to the fastest kernel the backend has.

The mask knows padding, packed texts (segment ids), causal order and sliding windows, and `attend`
takes fewer key/value heads than query heads (grouped-query attention) and an explicit scale, so an
encoder (BERT, ModernBERT) and a decoder (causal, GQA) go through the same function.

Paths, picked while tracing:
- TPU: Pallas' splash kernel (`model/splash.py`) on rows of a multiple of 128 tokens without attention
  dropout; `STARBUCKS_ATTENTION` (auto | xla | splash | splash-interpret) overrides the choice.
- Otherwise, without attention dropout: `jax.nn.dot_product_attention` (cuDNN's fused kernel on a GPU in
  bfloat16 or float16, XLA elsewhere: `attention_implementation`), which takes grouped heads as they are.
- With attention dropout (that API has none): the explicit einsum form, key/value heads repeated.
"""

from __future__ import annotations

from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp

from starbucks_jax.model import splash


@flax.struct.dataclass
class AttentionMask:
  """Which keys each query may attend to, in the two forms the two attention paths read (a pytree, so it
  passes through remat's custom vjp as arrays).

  Attributes:
    dense: [batch, 1, 1 or length, length] bool (XLA's path); causal order and any window included.
    segment_ids: [batch, length] int32, a query seeing the keys of its own id: the packed text, or 1 on
      text and 0 on padding (the splash kernel's path, `splash.py`).
    window: the sliding window `dense` already includes (keys at most this far from the query); None: none.
    causal: whether `dense` already allows only keys at or before the query.
  """
  dense: jnp.ndarray
  segment_ids: jnp.ndarray
  window: Optional[int] = flax.struct.field(pytree_node=False, default=None)
  causal: bool = flax.struct.field(pytree_node=False, default=False)


def attention_mask_of(attention_mask: jnp.ndarray, segment_ids: Optional[jnp.ndarray] = None, *,
                      causal: bool = False) -> AttentionMask:
  """Which keys each query may attend to: dense [batch, 1, 1, length] (unpadded keys) from the [batch,
  length] 0/1 mask, or with `segment_ids` [batch, 1, length, length] (keys of the query's own text;
  padding tokens share an id, so no query row is empty); `causal`: only keys at or before the query (a
  padding query still sees itself). The segment ids the splash kernel reads beside."""
  if segment_ids is None:
    dense, ids = attention_mask[:, None, None, :] > 0, (attention_mask > 0).astype(jnp.int32)
  else:
    dense, ids = segment_ids[:, None, :, None] == segment_ids[:, None, None, :], segment_ids.astype(jnp.int32)
  if causal:
    index = jnp.arange(attention_mask.shape[1])
    before = index[None, :] <= index[:, None]
    dense = (dense | (index[:, None] == index[None, :])[None, None]) & before[None, None]
  return AttentionMask(dense, ids, causal=causal)


def sliding_window(mask: AttentionMask, window: int) -> AttentionMask:
  """`mask` limited to keys at most `window` positions from the query (before it only, for a causal mask):
  its dense form narrowed, and the window recorded for the splash kernel (which applies it itself)."""
  length = mask.dense.shape[-1]
  index = jnp.arange(length)
  near = jnp.abs(index[:, None] - index[None, :]) <= window
  return mask.replace(dense=mask.dense & near[None, None], window=window)


def attention_implementation(dtype) -> str:
  """`jax.nn.dot_product_attention`'s implementation: "cudnn" (the fused kernel) on a GPU in bfloat16 or
  float16, which is all cuDNN takes; "xla" otherwise. (JAX's own default, None, is XLA everywhere.)"""
  if jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    return "cudnn"
  return "xla"


def repeat_kv(x: jnp.ndarray, heads: int) -> jnp.ndarray:
  """[batch, length, kv_heads, head_dim] -> [..., heads, ...]: each key/value head serving its group of
  query heads, as transformers' `repeat_kv` (query head h reads key head h // (heads // kv_heads))."""
  groups = heads // x.shape[2]
  return x if groups == 1 else jnp.repeat(x, groups, axis=2)


def attend(q, k, v, mask: AttentionMask, *, dtype, drop=None, scale: Optional[float] = None) -> jnp.ndarray:
  """Softmax attention of q [batch, length, heads, head_dim] over k, v [batch, length, kv_heads, head_dim]
  where `mask` allows, in `dtype`; `scale` on the scores defaults to head_dim ** -0.5.

  q, k, v share one dtype here: under dense.py's CPU bfloat16 products they come out float32."""
  heads = q.shape[2]
  interpret = splash.kernel_mode(q.shape[0], q.shape[1], dropout=drop is not None)
  if interpret is not None:
    return splash.segment_attention(q, repeat_kv(k, heads), repeat_kv(v, heads), mask.segment_ids,
                                    window=mask.window, causal=mask.causal, scale=scale,
                                    interpret=interpret).astype(dtype)
  if drop is None:
    implementation = attention_implementation(q.dtype)
    return jax.nn.dot_product_attention(q, k, v, mask=mask.dense, scale=scale,
                                        implementation=implementation).astype(dtype)
  k, v = repeat_kv(k, heads), repeat_kv(v, heads)
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
  # The most negative float32 on masked keys, as transformers does: they receive no attention.
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  scores = jnp.where(mask.dense, scores * scale, jnp.finfo(jnp.float32).min)
  probs = drop(jax.nn.softmax(scores, axis=-1))
  return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(dtype), v)
