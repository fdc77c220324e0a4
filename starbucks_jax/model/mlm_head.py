"""BERT's masked-LM head as a pure function: transform dense, exact GELU, LayerNorm, tied decoder, bias.

Parameters: `{"transform": {"kernel", "bias"}, "layer_norm": {"scale", "bias"}, "bias": [vocab]}`; the
decoder matrix is the word-embedding table. ModernBERT's head is the same math without the transform's
and the LayerNorm's biases: its tree simply lacks them (its config's `mlm_head_biases` is False).
When the hidden states are narrower than the model (a Matryoshka prefix of d < hidden dims), only the
first d input rows of the transform kernel are used, with its full bias, as SMAE pre-training does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from starbucks_jax.model import dense
from starbucks_jax.model.config import EncoderConfig


def head_transform(head_params: dict, hidden: jnp.ndarray, *, layer_norm_eps: float,
                   dtype=jnp.float32) -> jnp.ndarray:
  """[..., d] hidden states -> [..., hidden_size] float32: dense on the first d input rows, GELU, LayerNorm."""
  kernel = head_params["transform"]["kernel"][: hidden.shape[-1]]
  h = dense.matmul(hidden, kernel, dtype)
  if "bias" in head_params["transform"]:
    h = h + head_params["transform"]["bias"].astype(h.dtype)
  h = jax.nn.gelu(h.astype(jnp.float32), approximate=False)
  mean = jnp.mean(h, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(h - mean), axis=-1, keepdims=True)
  h = (h - mean) * jax.lax.rsqrt(var + layer_norm_eps)
  h = h * head_params["layer_norm"]["scale"]
  return h + head_params["layer_norm"]["bias"] if "bias" in head_params["layer_norm"] else h


def vocab_logits(head_params: dict, word_embeddings: jnp.ndarray, transformed: jnp.ndarray,
                 dtype=jnp.float32) -> jnp.ndarray:
  """The tied decoder: [..., hidden_size] transformed states -> [..., vocab] float32 logits, plus the bias."""
  logits = dense.matmul(transformed, word_embeddings.T, dtype, out_dtype=jnp.float32)
  return dense.add_bias(logits, head_params["bias"])


def init_mlm_head_params(config: EncoderConfig, rng: jax.Array) -> dict:
  """BERT's initialisation for a model that comes without a head (normal(initializer_range), LN 1/0, bias 0);
  without the transform's and the LayerNorm's biases where the family's head has none (`mlm_head_biases`)."""
  h = config.hidden_size
  transform = {"kernel": config.initializer_range * jax.random.normal(rng, (h, h), jnp.float32)}
  layer_norm = {"scale": jnp.ones((h,), jnp.float32)}
  if config.mlm_head_biases:
    transform["bias"] = jnp.zeros((h,), jnp.float32)
    layer_norm["bias"] = jnp.zeros((h,), jnp.float32)
  return {"transform": transform, "layer_norm": layer_norm, "bias": jnp.zeros((config.vocab_size,), jnp.float32)}
