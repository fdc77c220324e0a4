"""The BERT family: its config, and a functional Flax encoder with the same math as transformers' `BertModel`.

`apply(params, input_ids, attention_mask, token_type_ids)` returns every layer's hidden states
(index 0 is the embedding output, index n the output of layer n, as Hugging Face numbers them) and
every layer's CLS and masked-mean pooled vectors. With `num_layers=n` it stops after layer n: the
layers above are never traced, so they cost nothing and need not even be in `params`.

Packed rows (`data/packing.py`): given `segment_ids` (each token's text; `num_texts` or more on
padding) and `position_ids` (restarting at 0 for each text), a token attends only to its own text, and
the pooled vectors are per text ([num_texts, hidden]), not per row. The math per text is the same as
that text alone in a padded row.

Attention (`attend`, which ModernBERT uses too) goes through `jax.nn.dot_product_attention` (cuDNN's
fused kernel on a GPU in bfloat16, XLA elsewhere: `attention_implementation`), except while attention
dropout is active: that API has no dropout, so training with `attention_probs_dropout_prob > 0` keeps
the explicit einsum form. On a TPU, rows of a multiple of 128 tokens without attention dropout run
Pallas' splash kernel instead (`splash.py`); the environment variable `STARBUCKS_ATTENTION` (auto, the
default | xla | splash | splash-interpret), read while tracing, overrides that choice. The layers receive
an `AttentionMask`, built once per forward pass, which carries what either path needs.

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
import flax.struct
import jax
import jax.numpy as jnp

from starbucks_jax.errors import StarbucksError
from starbucks_jax.model import bert_names, dense, pooling, remat as remat_lib, splash
from starbucks_jax.model.config import EncoderConfig
from starbucks_jax.model.dropout import Dropout
from starbucks_jax.model.family import ModelFamily, constrain_activations
from starbucks_jax.model.mlm_head import init_mlm_head_params
from starbucks_jax.model.pooling import EncoderOutput

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
  # Flax computes LayerNorm statistics in float32 even when dtype is bfloat16.
  return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=dtype, param_dtype=jnp.float32, name=name)


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


def attention_implementation(dtype) -> str:
  """`jax.nn.dot_product_attention`'s implementation: "cudnn" (the fused kernel) on a GPU in bfloat16 or
  float16, which is all cuDNN takes; "xla" otherwise. (JAX's own default, None, is XLA everywhere.)"""
  if jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    return "cudnn"
  return "xla"


@flax.struct.dataclass
class AttentionMask:
  """Which keys each query may attend to, in the two forms the two attention paths read (a pytree, so it
  passes through remat's custom vjp as arrays).

  Attributes:
    dense: [batch, 1, 1 or length, length] bool (XLA's path).
    segment_ids: [batch, length] int32, a query seeing the keys of its own id: the packed text, or 1 on
      text and 0 on padding (the splash kernel's path, `splash.py`).
    window: the sliding window `dense` already includes (keys at most this far from the query); None: none.
  """
  dense: jnp.ndarray
  segment_ids: jnp.ndarray
  window: Optional[int] = flax.struct.field(pytree_node=False, default=None)


def attend(q, k, v, mask: AttentionMask, *, dtype, drop=None) -> jnp.ndarray:
  """Softmax attention of q over k, v ([batch, length, heads, head_dim]) where `mask` allows, in `dtype`.

  The splash kernel where `splash.kernel_mode` picks it. Otherwise, without `drop` (dropout on the
  probabilities), through the fused API; that API has no dropout, so with it the explicit einsum form.
  q, k, v share one dtype here: under dense.py's CPU bfloat16 products they come out float32."""
  interpret = splash.kernel_mode(q.shape[0], q.shape[1], dropout=drop is not None)
  if interpret is not None:
    return splash.segment_attention(q, k, v, mask.segment_ids, window=mask.window,
                                    interpret=interpret).astype(dtype)
  if drop is None:
    implementation = attention_implementation(q.dtype)
    return jax.nn.dot_product_attention(q, k, v, mask=mask.dense, implementation=implementation).astype(dtype)
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
  # The most negative float32 on masked keys, as transformers does: they receive no attention.
  scores = jnp.where(mask.dense, scores * (q.shape[-1] ** -0.5), jnp.finfo(jnp.float32).min)
  probs = drop(jax.nn.softmax(scores, axis=-1))
  return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(dtype), v)


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


def gelu(x: jnp.ndarray) -> jnp.ndarray:
  """BERT's "gelu", the exact form, written with erf as PyTorch computes it.

  jax.nn.gelu(approximate=False) goes through erfc, which XLA's CPU backend evaluates more slowly.
  """
  return x * (0.5 + 0.5 * jax.lax.erf(x * (2 ** -0.5)))


def attention_mask_of(attention_mask: jnp.ndarray, segment_ids: Optional[jnp.ndarray] = None) -> AttentionMask:
  """Which keys each query may attend to: dense [batch, 1, 1, length] (unpadded keys) from the [batch,
  length] 0/1 mask, or with `segment_ids` [batch, 1, length, length] (keys of the query's own text;
  padding tokens share an id, so no query row is empty); the segment ids the splash kernel reads beside."""
  if segment_ids is None:
    return AttentionMask(attention_mask[:, None, None, :] > 0, (attention_mask > 0).astype(jnp.int32))
  same_text = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
  return AttentionMask(same_text, segment_ids.astype(jnp.int32))


def layers_and_mask(config: EncoderConfig, input_ids, attention_mask, num_layers, position_ids):
  """(layers to run: all when None, the [batch, length] mask: all ones when None), checked against the model
  (a length beyond its positions only where positions are implicit; packed rows restart them)."""
  num_layers = config.num_hidden_layers if num_layers is None else num_layers
  if not 0 <= num_layers <= config.num_hidden_layers:
    raise ValueError(f"num_layers must be in 0..{config.num_hidden_layers}, got {num_layers}")
  if position_ids is None and input_ids.shape[1] > config.max_text_length:
    raise ValueError(f"sequence length {input_ids.shape[1]} exceeds the model's {config.max_text_length} positions")
  return num_layers, jnp.ones_like(input_ids) if attention_mask is None else attention_mask


class BertEncoder(nn.Module):
  """Embeddings and the first `num_layers` encoder layers (all of them when None)."""
  config: BertConfig
  dtype: Dtype = jnp.float32
  remat: bool | str = False  # what each layer recomputes in the backward pass: "none" | "dots" | "full" (remat.py)

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               num_layers: Optional[int] = None, deterministic: bool = True, row_ids=None,
               segment_ids=None, position_ids=None, num_texts: Optional[int] = None) -> EncoderOutput:
    cfg = self.config
    num_layers, attention_mask = layers_and_mask(cfg, input_ids, attention_mask, num_layers, position_ids)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    mask = attention_mask_of(attention_mask, segment_ids)
    x = constrain_activations(Embeddings(cfg, self.dtype, name="embeddings")(input_ids, token_type_ids, deterministic,
                                                                                  row_ids, position_ids))
    hidden_states = [x]
    layer_cls = remat_lib.layer_class(EncoderLayer, self.remat)
    for i in range(num_layers):  # a Python loop: layers above num_layers are never traced
      layer = layer_cls(cfg, self.dtype, name=f"layer_{i}")
      tied = False if self.is_initializing() else self.remat  # nothing to differentiate at init
      x = constrain_activations(remat_lib.apply_layer(layer, tied, x, mask, deterministic, row_ids))
      hidden_states.append(x)
    return pooling.encoder_output(tuple(hidden_states), attention_mask, segment_ids, position_ids, num_texts)


def apply(params, input_ids, attention_mask=None, token_type_ids=None, *, config: BertConfig,
          num_layers: Optional[int] = None, dtype: Dtype = jnp.float32, deterministic: bool = True,
          dropout_rng: Optional[jax.Array] = None, remat: bool | str = False, row_ids=None, segment_ids=None,
          position_ids=None, num_texts: Optional[int] = None) -> EncoderOutput:
  """Runs the encoder. `params` is the full model tree (`{"encoder": ..., ...}`) or its "encoder" part.

  `remat`: "none" | "dots" | "full" (True = "full", False = "none"): what each layer recomputes in the
  backward pass (`remat.py`).
  `row_ids` [batch]: each row's index in the whole batch, for dropout masks that do not depend on how a
  batch is split (`model/dropout.py`); None: the rows are the whole batch.
  `segment_ids`, `position_ids` [batch, length] and `num_texts`: packed rows (see the module docstring).
  """
  encoder_params = params["encoder"] if "encoder" in params else params
  rngs = None if deterministic else {"dropout": dropout_rng}
  return BertEncoder(config, dtype, remat).apply({"params": encoder_params}, input_ids, attention_mask, token_type_ids,
                                          num_layers=num_layers, deterministic=deterministic, row_ids=row_ids,
                                          segment_ids=segment_ids, position_ids=position_ids, num_texts=num_texts,
                                          rngs=rngs)


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
  ids = jnp.zeros((1, 2), jnp.int32)
  return jax.jit(lambda r: BertEncoder(config).init(r, ids)["params"])(rng)


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


FAMILY = ModelFamily(
    name="bert", config_class=BertConfig, apply=apply, embed=embed, apply_layer=apply_layer,
    init_params=init_params, init_pooler_params=init_pooler_params,
    word_embeddings=lambda params: params["encoder"]["embeddings"]["word_embeddings"]["embedding"],
    first_layer=lambda encoder_params: encoder_params["layer_0"],
    keep_layers=lambda encoder_params, n: {k: v for k, v in encoder_params.items()
                                           if not k.startswith("layer_") or int(k.split("_")[1]) < n},
    hf_names=bert_names.HF_NAMES, param_axes=bert_names.PARAM_AXES)
