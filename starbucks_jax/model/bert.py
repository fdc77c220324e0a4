"""The BERT family: its config, and a functional Flax encoder with the same math as transformers' `BertModel`.

`forward(params, tokens)` returns every layer's hidden states (index 0 is the embedding output, index n
the output of layer n, as Hugging Face numbers them), pooled on demand (`pooling.EncoderOutput`). With
`num_layers=n` it stops after layer n: the layers above are never traced, so they cost nothing and need
not even be in `params`. `apply(params, input_ids, attention_mask, token_type_ids)` is the same over
loose arrays (`ModelFamily.apply`).

Packed rows (`tokens.Tokens`, `data/packing.py`): a token attends only to its own text and reads its
position in that text; the pooled vectors are per text. The math per text is the same as that text
alone in a padded row.

Attention is the shared one (`layers/attention.attend`: cuDNN, XLA or the splash kernel), with the
`AttentionMask` built once per forward pass.

Parameters stay float32; `dtype` sets the compute dtype (float32 or bfloat16). Softmax, LayerNorm
statistics and pooling run in float32 either way. The dense layers are `dense.Dense`: flax's Dense,
whose bfloat16 products return float32 on the CPU (`dense.py` says why).

The parameter tree (`bert_names.py` maps it to Hugging Face names):
  embeddings/{word_embeddings,position_embeddings,token_type_embeddings}/embedding, embeddings/layer_norm
  layer_{i}/attention/{query,key,value,output}/{kernel,bias}, layer_{i}/attention_layer_norm/{scale,bias}
  layer_{i}/intermediate/{kernel,bias}, layer_{i}/output/{kernel,bias}, layer_{i}/output_layer_norm/{scale,bias}
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from starbucks_jax.errors import StarbucksError
from starbucks_jax.model import bert_names, dense, remat as remat_lib
from starbucks_jax.model.config import EncoderConfig
from starbucks_jax.model.dropout import Dropout
from starbucks_jax.model.family import (MlmSupport, ModelFamily, checked_layers, constrain_activations,
                                        init_module_params, keep_first_layers, module_forward)
from starbucks_jax.model.layers.attention import attend, attention_mask_of
from starbucks_jax.model.layers.mlp import gelu
from starbucks_jax.model.layers.norms import layer_norm
from starbucks_jax.model.mlm_head import init_mlm_head_params
from starbucks_jax.model.pooling import EncoderOutput
from starbucks_jax.model.tokens import Tokens

Dtype = Any


@dataclasses.dataclass(frozen=True)
class BertConfig(EncoderConfig):
  """BERT's hyper-parameters: the shared ones and the token-type vocabulary; only BERT's math is accepted."""
  model_type = "bert"
  type_vocab_size: int = 2

  def __post_init__(self):
    super().__post_init__()
    if self.type_vocab_size < 1:
      raise StarbucksError(f"bert config: type_vocab_size must be at least 1, got {self.type_vocab_size}")

  @classmethod
  def from_hf_dict(cls, hf: dict[str, Any], source: str = "config.json") -> "BertConfig":
    """Builds a config from a Hugging Face config dict; rejects models whose math differs from BERT's."""
    act = hf.get("hidden_act", "gelu")
    if act != "gelu":
      raise StarbucksError(f"{source}: hidden_act {act!r} is not supported (only exact 'gelu', as in BERT)")
    position_type = hf.get("position_embedding_type", "absolute")
    if position_type != "absolute":
      raise StarbucksError(f"{source}: position_embedding_type {position_type!r} is not supported (only 'absolute')")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
      raise StarbucksError(f"{source}: decoder / cross-attention BERT models are not supported")
    return super().from_hf_dict(hf, source)

  def to_hf_dict(self, architecture: str = "BertModel") -> dict[str, Any]:
    """A `config.json` dict that transformers' BertConfig reads."""
    return {**super().to_hf_dict(architecture), "hidden_act": "gelu", "position_embedding_type": "absolute"}

  def embedding_positions(self, input_ids, position_ids=None):
    """The rows of the position table each token reads: its place in its text (given for packed rows,
    else 0, 1, 2, ...). RoBERTa (`roberta.py`) shifts them."""
    return jnp.arange(input_ids.shape[1])[None, :] if position_ids is None else position_ids


def _dense(config: BertConfig, features: int, dtype: Dtype, name: str) -> dense.Dense:
  return dense.Dense(features, dtype=dtype, name=name, kernel_init=nn.initializers.normal(config.initializer_range))


def _layer_norm(config: BertConfig, dtype: Dtype, name: str) -> nn.LayerNorm:
  return layer_norm(config.layer_norm_eps, dtype, name)


class Embeddings(nn.Module):
  """Word + position + token-type embeddings, then LayerNorm and dropout."""
  config: BertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids, token_type_ids, deterministic: bool, row_ids=None, position_ids=None):
    cfg = self.config
    init = nn.initializers.normal(cfg.initializer_range)
    embed = lambda n, name: nn.Embed(n, cfg.hidden_size, embedding_init=init, dtype=self.dtype,
                                     param_dtype=jnp.float32, name=name)
    positions = cfg.embedding_positions(input_ids, position_ids)
    x = (embed(cfg.vocab_size, "word_embeddings")(input_ids)
         + embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids)
         + embed(cfg.max_position_embeddings, "position_embeddings")(positions))
    x = _layer_norm(cfg, self.dtype, "layer_norm")(x)
    return Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic, row_ids=row_ids)


class SelfAttention(nn.Module):
  """Multi-head self-attention where `mask` (an `AttentionMask`) allows, with its output projection."""
  config: BertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask, deterministic: bool, row_ids=None):
    cfg = self.config
    batch, length, _ = x.shape
    split = lambda t: t.reshape(batch, length, cfg.num_attention_heads, cfg.head_dim)
    q = split(_dense(cfg, cfg.hidden_size, self.dtype, "query")(x))
    k = split(_dense(cfg, cfg.hidden_size, self.dtype, "key")(x))
    v = split(_dense(cfg, cfg.hidden_size, self.dtype, "value")(x))
    rate = cfg.attention_probs_dropout_prob
    drop = None if deterministic or rate <= 0 else (
        lambda probs: Dropout(rate)(probs, deterministic=False, row_ids=row_ids))
    context = attend(q, k, v, mask, dtype=self.dtype, drop=drop)
    return _dense(cfg, cfg.hidden_size, self.dtype, "output")(context.reshape(batch, length, cfg.hidden_size))


class EncoderLayer(nn.Module):
  """One post-LayerNorm transformer layer: attention, add & norm, GELU MLP, add & norm."""
  config: BertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask, deterministic: bool, row_ids=None):
    cfg = self.config
    dropout = Dropout(cfg.hidden_dropout_prob)
    attended = SelfAttention(cfg, self.dtype, name="attention")(x, mask, deterministic, row_ids)
    x = _layer_norm(cfg, self.dtype, "attention_layer_norm")(
        x + dropout(attended, deterministic=deterministic, row_ids=row_ids))
    h = _dense(cfg, cfg.intermediate_size, self.dtype, "intermediate")(x)
    h = gelu(h)
    h = _dense(cfg, cfg.hidden_size, self.dtype, "output")(h)
    return _layer_norm(cfg, self.dtype, "output_layer_norm")(x + dropout(h, deterministic=deterministic,
                                                                          row_ids=row_ids))


class BertEncoder(nn.Module):
  """Embeddings and the first `num_layers` encoder layers (all of them when None)."""
  config: BertConfig
  dtype: Dtype = jnp.float32
  remat: bool | str = False  # what each layer recomputes in the backward pass: "none" | "dots" | "full" (remat.py)

  @nn.compact
  def __call__(self, tokens: Tokens, *, num_layers: Optional[int] = None, deterministic: bool = True,
               row_ids=None) -> EncoderOutput:
    cfg = self.config
    num_layers = checked_layers(cfg, tokens, num_layers)
    input_ids = tokens.input_ids
    token_type_ids = jnp.zeros_like(input_ids) if tokens.token_type_ids is None else tokens.token_type_ids
    mask = attention_mask_of(tokens.attention_mask, tokens.packed_segments)
    x = constrain_activations(Embeddings(cfg, self.dtype, name="embeddings")(input_ids, token_type_ids, deterministic,
                                                                                  row_ids, tokens.given_positions))
    hidden_states = [x]
    layer_cls = remat_lib.layer_class(EncoderLayer, self.remat)
    for i in range(num_layers):  # a Python loop: layers above num_layers are never traced
      layer = layer_cls(cfg, self.dtype, name=f"layer_{i}")
      tied = False if self.is_initializing() else self.remat  # nothing to differentiate at init
      x = constrain_activations(remat_lib.apply_layer(layer, tied, x, mask, deterministic, row_ids))
      hidden_states.append(x)
    return EncoderOutput(tuple(hidden_states), tokens)


forward = module_forward(BertEncoder)  # the family's forward pass (`family.module_forward`)


def apply(params, input_ids, attention_mask=None, token_type_ids=None, **options) -> EncoderOutput:
  """`forward` over loose arrays (`ModelFamily.apply`): padded rows, or packed ones with `segment_ids`,
  `position_ids` and `num_texts`."""
  return FAMILY.apply(params, input_ids, attention_mask, token_type_ids, **options)


def embed(params, input_ids, token_type_ids=None, *, config: BertConfig, dtype: Dtype = jnp.float32,
          deterministic: bool = True, dropout_rng: Optional[jax.Array] = None, position_ids=None) -> jnp.ndarray:
  """The embedding layer's output [batch, length, hidden] alone (SMAE's decoder input)."""
  encoder_params = params["encoder"] if "encoder" in params else params
  if token_type_ids is None:
    token_type_ids = jnp.zeros_like(input_ids)
  rngs = None if deterministic else {"dropout": dropout_rng}
  return constrain_activations(Embeddings(config, dtype).apply({"params": encoder_params["embeddings"]}, input_ids,
                                                    token_type_ids, deterministic, None, position_ids, rngs=rngs))


def apply_layer(layer_params, x, attention_mask, *, config: BertConfig, dtype: Dtype = jnp.float32,
                deterministic: bool = True, dropout_rng: Optional[jax.Array] = None, segment_ids=None,
                position_ids=None) -> jnp.ndarray:
  """One encoder layer with the given parameters (an `encoder/layer_{i}` tree) over [batch, length, hidden];
  with `segment_ids`, attention stays within each packed text. (`position_ids`: unused, BERT's positions
  are in its embeddings.)"""
  rngs = None if deterministic else {"dropout": dropout_rng}
  return constrain_activations(EncoderLayer(config, dtype).apply({"params": layer_params}, x.astype(dtype),
                                                      attention_mask_of(attention_mask, segment_ids), deterministic,
                                                      rngs=rngs))


def init_encoder_params(config: BertConfig, rng: jax.Array) -> dict:
  """Random encoder parameters with BERT's initialisation (normal(initializer_range), LayerNorm 1/0)."""
  return init_module_params(BertEncoder, config, rng)


def init_pooler_params(config: BertConfig, rng: jax.Array) -> dict:
  """BERT's tanh pooler. We never use it, but `AutoModel` expects its weights in an export."""
  kernel = config.initializer_range * jax.random.normal(rng, (config.hidden_size, config.hidden_size), jnp.float32)
  return {"kernel": kernel, "bias": jnp.zeros((config.hidden_size,), jnp.float32)}


def init_params(config: BertConfig, rng: jax.Array, *, with_mlm_head: bool = False) -> dict:
  """A full, freshly initialised model tree: {"encoder", "pooler"} and, if asked, "mlm_head"."""
  encoder_rng, pooler_rng, head_rng = jax.random.split(rng, 3)
  params = {"encoder": init_encoder_params(config, encoder_rng), "pooler": init_pooler_params(config, pooler_rng)}
  if with_mlm_head:
    params["mlm_head"] = init_mlm_head_params(config, head_rng)
  return params


MLM = MlmSupport(embed=embed, apply_layer=apply_layer,
                 word_embeddings=lambda params: params["encoder"]["embeddings"]["word_embeddings"]["embedding"],
                 first_layer=lambda encoder_params: encoder_params["layer_0"])

FAMILY = ModelFamily(
    name="bert", config_class=BertConfig, forward=forward, init_params=init_params,
    init_pooler_params=init_pooler_params, keep_layers=keep_first_layers, hf_names=bert_names.HF_NAMES,
    param_axes=bert_names.PARAM_AXES, default_pooling="cls", mlm=MLM)
