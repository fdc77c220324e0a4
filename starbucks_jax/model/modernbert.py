"""The ModernBERT family: its config, and a functional Flax encoder with the math of transformers'
`ModernBertModel` (answerdotai/ModernBERT, gte-modernbert, nomic-modernbert-embed, mmBERT).

What differs from BERT (`bert.py`):
- No position table: rotary positions on queries and keys, with one theta for global-attention layers
  and another for local ones (`rotary`). So `max_position_embeddings` (8192) is a nominal limit.
- Pre-norm layers without biases: x + attn(norm(x)), then x + mlp(norm(x)). Layer 0 has no attention
  norm (its input is the embedding norm's output). Dense layers and LayerNorms have no bias terms.
- A GeGLU MLP: Wi makes [input | gate], GELU(input) * gate, then Wo.
- Global attention in the layers `layer_types` marks "full_attention" (every
  `global_attn_every_n_layers`-th, from layer 0), a sliding window elsewhere: a query attends to keys at
  most `local_attention // 2` positions away, on either side.
- A final LayerNorm after the last layer, before pooling and before the MLM head.

Hidden states, and why each is normed. `EncoderOutput.hidden_states[n]` here is `final_norm` applied to
the output of layer n: exactly what a ModernBERT cut to its first n layers returns as its
`last_hidden_state`, so the embedding at (n, d) is what the n-layer export serves, and the MLM head at
layer n reads normed states as the pretrained head expects. (transformers' `output_hidden_states` gives
the raw residual stream for n < N and the normed one at N; `tests/model/test_modernbert.py` compares both
ways.) Index 0 is the normed embedding output.

Packed rows (`data/packing.py`): `position_ids` restart in each text (the rotary angles follow them) and
`segment_ids` keep attention within each text, sliding windows included (a text's tokens are contiguous,
so distance in the row is distance in the text).

Attention, norms, rotary positions and the GeGLU MLP are the shared layers (`layers/`): on a TPU, Pallas'
splash kernel (`splash.py`), whose local layers take the window that `sliding_window` records instead of
the dense mask it narrows.

The parameter tree (`modernbert_names.py` maps it to Hugging Face names):
  embeddings/word_embeddings/embedding, embeddings/layer_norm/scale, final_norm/scale
  layer_{i}/attention_norm/scale (not layer 0), layer_{i}/attention/{qkv,output}/kernel,
  layer_{i}/mlp_norm/scale, layer_{i}/mlp/{wi,wo}/kernel
No pooler: ModernBertModel has none.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from starbucks_jax.model import dense, modernbert_names, remat as remat_lib
from starbucks_jax.model.dropout import Dropout
from starbucks_jax.model.family import (MlmSupport, ModelFamily, checked_layers, constrain_activations,
                                        init_module_params, keep_first_layers, module_forward)
from starbucks_jax.model.layers.attention import attend, attention_mask_of, sliding_window
from starbucks_jax.model.layers.mlp import GatedMlp, gelu
from starbucks_jax.model.layers.norms import layer_norm
from starbucks_jax.model.layers.rotary import rotary
from starbucks_jax.model.mlm_head import init_mlm_head_params
from starbucks_jax.model.modernbert_config import LOCAL, ModernBertConfig
from starbucks_jax.model.pooling import EncoderOutput
from starbucks_jax.model.tokens import Tokens

Dtype = Any


def _dense(config: ModernBertConfig, features: int, dtype: Dtype, name: str) -> dense.Dense:
  return dense.Dense(features, dtype=dtype, name=name, use_bias=False,
                     kernel_init=nn.initializers.normal(config.initializer_range))


def _layer_norm(config: ModernBertConfig, dtype: Dtype, name: str) -> nn.LayerNorm:
  return layer_norm(config.layer_norm_eps, dtype, name, use_bias=False)


class Embeddings(nn.Module):
  """Token embeddings, LayerNorm and dropout (positions come in attention, as rotations)."""
  config: ModernBertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids, deterministic: bool, row_ids=None):
    cfg = self.config
    x = nn.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=nn.initializers.normal(cfg.initializer_range),
                 dtype=self.dtype, param_dtype=jnp.float32, name="word_embeddings")(input_ids)
    x = _layer_norm(cfg, self.dtype, "layer_norm")(x)
    return Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic, row_ids=row_ids)


class SelfAttention(nn.Module):
  """Rotary multi-head self-attention (one fused Wqkv projection) over the keys `mask` allows."""
  config: ModernBertConfig
  local: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask, positions, deterministic: bool, row_ids=None):
    cfg = self.config
    batch, length, _ = x.shape
    qkv = _dense(cfg, 3 * cfg.hidden_size, self.dtype, "qkv")(x).reshape(
        batch, length, 3, cfg.num_attention_heads, cfg.head_dim)
    theta = cfg.local_rope_theta if self.local else cfg.global_rope_theta
    q = rotary(qkv[:, :, 0], positions, theta).astype(qkv.dtype)
    k = rotary(qkv[:, :, 1], positions, theta).astype(qkv.dtype)
    v = qkv[:, :, 2]
    if self.local:
      mask = sliding_window(mask, cfg.window)
    dropout = Dropout(cfg.attention_probs_dropout_prob)
    drop = None if deterministic or cfg.attention_probs_dropout_prob <= 0 else (
        lambda probs: dropout(probs, deterministic=False, row_ids=row_ids))
    context = attend(q, k, v, mask, dtype=self.dtype, drop=drop)
    out = _dense(cfg, cfg.hidden_size, self.dtype, "output")(context.reshape(batch, length, cfg.hidden_size))
    return dropout(out, deterministic=deterministic, row_ids=row_ids)  # transformers' out_drop


class EncoderLayer(nn.Module):
  """One pre-norm layer: x + attention(norm(x)), then x + GeGLU(norm(x)). `index` sets its attention kind
  (`layer_types`) and whether it has an attention norm (not layer 0)."""
  config: ModernBertConfig
  index: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, inputs, deterministic: bool, row_ids=None):
    mask, positions = inputs  # one argument for both: `remat.apply_layer` calls layer(x, mask, ...)
    cfg = self.config
    h = x if self.index == 0 else _layer_norm(cfg, self.dtype, "attention_norm")(x)
    local = cfg.layer_types[self.index] == LOCAL
    x = x + SelfAttention(cfg, local, self.dtype, name="attention")(h, mask, positions, deterministic, row_ids)
    h = _layer_norm(cfg, self.dtype, "mlp_norm")(x)
    mlp = GatedMlp(cfg.hidden_size, cfg.intermediate_size, gelu, fused=True, dropout_rate=cfg.hidden_dropout_prob,
                   init_range=cfg.initializer_range, dtype=self.dtype, name="mlp")
    return x + mlp(h, deterministic, row_ids)


class ModernBertEncoder(nn.Module):
  """Embeddings, the first `num_layers` layers (all when None), and the final norm on every layer's output."""
  config: ModernBertConfig
  dtype: Dtype = jnp.float32
  remat: bool | str = False  # what each layer recomputes in the backward pass (remat.py)

  @nn.compact
  def __call__(self, tokens: Tokens, *, num_layers: Optional[int] = None, deterministic: bool = True,
               row_ids=None) -> EncoderOutput:
    cfg = self.config  # token_type_ids: ModernBERT has none
    num_layers = checked_layers(cfg, tokens, num_layers)
    inputs = (attention_mask_of(tokens.attention_mask, tokens.packed_segments), tokens.position_ids)
    x = constrain_activations(Embeddings(cfg, self.dtype, name="embeddings")(tokens.input_ids, deterministic,
                                                                             row_ids))
    final_norm = _layer_norm(cfg, self.dtype, "final_norm")
    hidden_states = [constrain_activations(final_norm(x))]
    for i in range(num_layers):  # a Python loop: layers above num_layers are never traced
      layer = remat_lib.layer_class(EncoderLayer, self.remat)(cfg, i, self.dtype, name=f"layer_{i}")
      tied = False if self.is_initializing() else self.remat  # nothing to differentiate at init
      x = constrain_activations(remat_lib.apply_layer(layer, tied, x, inputs, deterministic, row_ids))
      hidden_states.append(constrain_activations(final_norm(x)))
    return EncoderOutput(tuple(hidden_states), tokens)


forward = module_forward(ModernBertEncoder)  # (`family.module_forward`; token_type_ids are ignored)


def apply(params, input_ids, attention_mask=None, token_type_ids=None, **options) -> EncoderOutput:
  """`forward` over loose arrays (`ModelFamily.apply`)."""
  return FAMILY.apply(params, input_ids, attention_mask, token_type_ids, **options)


def embed(params, input_ids, token_type_ids=None, *, config: ModernBertConfig, dtype: Dtype = jnp.float32,
          deterministic: bool = True, dropout_rng: Optional[jax.Array] = None, position_ids=None) -> jnp.ndarray:
  """The embedding layer's output [batch, length, hidden] alone (SMAE's decoder input; positions come later,
  in `apply_layer`'s rotations)."""
  del token_type_ids, position_ids
  encoder_params = params["encoder"] if "encoder" in params else params
  rngs = None if deterministic else {"dropout": dropout_rng}
  return constrain_activations(Embeddings(config, dtype).apply({"params": encoder_params["embeddings"]}, input_ids,
                                                               deterministic, rngs=rngs))


def apply_layer(layer_params, x, attention_mask, *, config: ModernBertConfig, dtype: Dtype = jnp.float32,
                deterministic: bool = True, dropout_rng: Optional[jax.Array] = None, segment_ids=None,
                position_ids=None) -> jnp.ndarray:
  """SMAE's decoder: a layer shaped like layer 0 (global attention, no attention norm), then its own copy of
  the final norm (`layer_params["final_norm"]`), since the MLM head reads normed states (`first_layer`)."""
  rngs = None if deterministic else {"dropout": dropout_rng}
  layer = {k: v for k, v in layer_params.items() if k != "final_norm"}
  positions = Tokens.padded(jnp.zeros(x.shape[:2], jnp.int32)).position_ids if position_ids is None else position_ids
  inputs = (attention_mask_of(attention_mask, segment_ids), positions)
  y = EncoderLayer(config, 0, dtype).apply({"params": layer}, x.astype(dtype), inputs, deterministic, rngs=rngs)
  y = _layer_norm(config, dtype, "final_norm").apply({"params": layer_params["final_norm"]}, y)
  return constrain_activations(y)


def first_layer(encoder_params: dict) -> dict:
  """The MAE decoder's start: layer 0 and the final norm, copied."""
  return {**encoder_params["layer_0"], "final_norm": encoder_params["final_norm"]}


def init_encoder_params(config: ModernBertConfig, rng: jax.Array) -> dict:
  """Random encoder parameters: normal(initializer_range) weights, LayerNorm scales 1. (transformers draws a
  truncated normal with smaller output projections; either is a start for pre-training, not a model.)"""
  return init_module_params(ModernBertEncoder, config, rng)


def init_params(config: ModernBertConfig, rng: jax.Array, *, with_mlm_head: bool = False) -> dict:
  """A full, freshly initialised model tree: {"encoder"} and, if asked, "mlm_head" (no pooler)."""
  encoder_rng, head_rng = jax.random.split(rng)
  params = {"encoder": init_encoder_params(config, encoder_rng)}
  if with_mlm_head:
    params["mlm_head"] = init_mlm_head_params(config, head_rng)
  return params


MLM = MlmSupport(embed=embed, apply_layer=apply_layer,
                 word_embeddings=lambda params: params["encoder"]["embeddings"]["word_embeddings"]["embedding"],
                 first_layer=first_layer)

FAMILY = ModelFamily(
    name="modernbert", config_class=ModernBertConfig, forward=forward, init_params=init_params,
    init_pooler_params=lambda config, rng: {}, keep_layers=keep_first_layers,
    hf_names=modernbert_names.HF_NAMES, param_axes=modernbert_names.PARAM_AXES, default_pooling="cls", mlm=MLM)
