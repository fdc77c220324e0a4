"""Sentence embeddings from token states: the pooling kinds (a registry), the Matryoshka cut to `dim`,
and L2 normalisation (the one definition every loss, search and export path uses).

A pooling kind turns one layer's hidden states [rows, length, hidden] and the batch's `Tokens` into one
float32 vector per text: per row of a padded batch, per text of packed rows. `POOLINGS` is the one list
that the commands' `--pooling`, the config check, the Hugging Face folder reader and writer, the encoder
and export read; a new kind is one `PoolingKind` and `register` (or a line in `POOLINGS`).

    cls   the text's first token ([CLS] / <s>)
    mean  the mean over the text's tokens (sentence-transformers' masked mean, clamp 1e-9)
    last  the text's last token (decoder embedders: Qwen3-Embedding); right or left padding, packed or not
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax
import jax
import jax.numpy as jnp

from starbucks_jax.errors import StarbucksError
from starbucks_jax.model.tokens import Tokens

SIMILARITIES = ("cosine", "dot")  # how two embeddings are scored (cosine: of the L2-normalised vectors)
# As torch.nn.functional.normalize (sentence-transformers' cos_sim): x / max(||x||, eps).
NORM_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class PoolingKind:
  """One way to pool.

  Attributes:
    name: what configs and commands call it ("mean").
    padded: (hidden [rows, length, hidden], attention_mask [rows, length]) -> [rows, hidden] float32.
    packed: (hidden, segment_ids, position_ids, num_texts) -> [num_texts, hidden] float32.
    st_mode: sentence-transformers' `Pooling` mode name ("cls", "mean", "lasttoken"); its config flag is
      `pooling_mode_<st_mode>` ("..._tokens" for mean: `st_flag`).
  """
  name: str
  padded: Callable
  packed: Callable
  st_mode: str

  @property
  def st_flag(self) -> str:
    return {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens"}.get(
        self.st_mode, f"pooling_mode_{self.st_mode}")

  def __call__(self, hidden: jnp.ndarray, tokens: Tokens) -> jnp.ndarray:
    if tokens.packed:
      return self.packed(hidden, tokens.segment_ids, tokens.position_ids, tokens.num_texts)
    return self.padded(hidden, tokens.attention_mask)


def l2_normalize(x: jnp.ndarray) -> jnp.ndarray:
  """Rows divided by their L2 norm (floored at 1e-12, so an all-zero row stays zero)."""
  norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
  return x / jnp.maximum(norm, NORM_EPS)


def cls_pool(hidden: jnp.ndarray, attention_mask=None) -> jnp.ndarray:
  """[batch, length, hidden] -> [batch, hidden], the first ([CLS]) token, in float32."""
  del attention_mask
  return hidden[:, 0].astype(jnp.float32)


def mean_pool(hidden: jnp.ndarray, attention_mask: jnp.ndarray) -> jnp.ndarray:
  """Mean over the unpadded tokens, in float32 (as sentence-transformers' Pooling does, clamp 1e-9)."""
  mask = attention_mask.astype(jnp.float32)[..., None]
  summed = jnp.sum(hidden.astype(jnp.float32) * mask, axis=1)
  return summed / jnp.maximum(jnp.sum(mask, axis=1), 1e-9)


def last_pool(hidden: jnp.ndarray, attention_mask: jnp.ndarray) -> jnp.ndarray:
  """The last unpadded token of each row, in float32: right padding or left (sentence-transformers'
  `lasttoken`); a row without text gives its first token."""
  index = jnp.arange(hidden.shape[1])[None, :]
  last = jnp.maximum(jnp.max(jnp.where(attention_mask > 0, index, -1), axis=1), 0)
  return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0].astype(jnp.float32)


def _flat(hidden, segment_ids, position_ids):
  return hidden.astype(jnp.float32).reshape(-1, hidden.shape[-1]), segment_ids.reshape(-1), position_ids.reshape(-1)


def packed_cls(hidden, segment_ids, position_ids, num_texts: int) -> jnp.ndarray:
  """Text t's token at position 0 (text t's tokens are those with segment id t; ids of num_texts or more
  are padding, dropped). Sums over segment ids rather than gathers at known offsets, so only ids and
  positions are needed and hosts can number their texts globally without knowing where others put them."""
  h, ids, positions = _flat(hidden, segment_ids, position_ids)
  first = (positions == 0).astype(jnp.float32)
  return jax.ops.segment_sum(h * first[:, None], ids, num_segments=num_texts)


def _counts(ids, num_texts: int) -> jnp.ndarray:
  return jax.ops.segment_sum(jnp.ones_like(ids, jnp.float32), ids, num_segments=num_texts)


def packed_mean(hidden, segment_ids, position_ids, num_texts: int) -> jnp.ndarray:
  """The mean over text t's tokens, per text."""
  h, ids, _ = _flat(hidden, segment_ids, position_ids)
  sums = jax.ops.segment_sum(h, ids, num_segments=num_texts)
  return sums / jnp.maximum(_counts(ids, num_texts), 1e-9)[:, None]


def packed_last(hidden, segment_ids, position_ids, num_texts: int) -> jnp.ndarray:
  """Text t's token at the last position it has (its length less one)."""
  h, ids, positions = _flat(hidden, segment_ids, position_ids)
  lengths = jnp.take(_counts(ids, num_texts), ids, mode="fill", fill_value=0.0)
  last = (positions.astype(jnp.float32) == lengths - 1).astype(jnp.float32)
  return jax.ops.segment_sum(h * last[:, None], ids, num_segments=num_texts)


POOLINGS: dict[str, PoolingKind] = {kind.name: kind for kind in (
    PoolingKind("cls", cls_pool, packed_cls, "cls"),
    PoolingKind("mean", mean_pool, packed_mean, "mean"),
    PoolingKind("last", last_pool, packed_last, "lasttoken"),
)}


def register(kind: PoolingKind) -> None:
  """Adds a pooling kind (a plugin, a test); its name must be new."""
  if kind.name in POOLINGS and POOLINGS[kind.name] is not kind:
    raise StarbucksError(f"pooling {kind.name!r} is registered already")
  POOLINGS[kind.name] = kind


def pooling_kind(name: str) -> PoolingKind:
  if name not in POOLINGS:
    raise StarbucksError(f"pooling must be one of {', '.join(POOLINGS)}, got {name!r}")
  return POOLINGS[name]


def from_st_mode(mode: str):
  """The kind whose sentence-transformers mode is `mode` ("lasttoken" -> "last"), or None."""
  return next((kind.name for kind in POOLINGS.values() if kind.st_mode == mode or kind.name == mode), None)


@flax.struct.dataclass
class EncoderOutput:
  """Per-layer outputs of a forward pass; index 0 is the embedding layer, index n the output of layer n.
  Pooled vectors are computed on demand from a layer's states (`pooled`); under jit, only those read
  are computed."""
  hidden_states: tuple  # of [batch, length, hidden] in the compute dtype
  tokens: Tokens        # the input: what pooling needs of its texts

  def pooled(self, layer: int, kind: str) -> jnp.ndarray:
    """[num_texts, hidden] float32: layer `layer` pooled by `kind`."""
    if kind not in POOLINGS:
      raise ValueError(f"pooling must be one of {tuple(POOLINGS)}, got {kind!r}")
    return POOLINGS[kind](self.hidden_states[layer], self.tokens)

  @property
  def cls(self) -> tuple:
    return tuple(self.pooled(n, "cls") for n in range(len(self.hidden_states)))

  @property
  def mean(self) -> tuple:
    return tuple(self.pooled(n, "mean") for n in range(len(self.hidden_states)))


def cut(embedding: jnp.ndarray, dim: int, normalize: bool = False) -> jnp.ndarray:
  """Keeps the first `dim` coordinates; L2-normalises after the cut when asked."""
  embedding = embedding[..., :dim]
  return l2_normalize(embedding) if normalize else embedding
