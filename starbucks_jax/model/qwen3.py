"""The Qwen3 family: its config, and a functional Flax decoder with the math of transformers' `Qwen3Model`
(Qwen3 base models and the Qwen3-Embedding embedders, whose vector is the last token's state).

What differs from BERT (`bert.py`):
- Token embeddings without a position table: rotary positions on queries and keys (`rope_theta`).
- Pre-norm layers without biases: x + attn(rms(x)), then x + SwiGLU(rms(x)).
- Attention: q, k, v projections with fewer key/value heads than query heads (grouped-query attention),
  an RMSNorm over each query and key head (q_norm, k_norm) before the rotation, causal softmax
  attention, o_proj. The attention width (heads x head_dim) may differ from hidden_size.
- A final RMSNorm. As in `modernbert.py`, `hidden_states[n]` is that norm on layer n's output: what the
  n-layer model returns as its `last_hidden_state`, so the embedding at (n, d) is what the n-layer export
  serves (index 0: the normed embeddings).
- Dropout only where Qwen3 has it: on the attention probabilities (`attention_dropout`).
- No MLM head (`FAMILY.mlm` is None: SMAE is refused) and `last` pooling by default: Qwen3-Embedding's
  tokenizer ends every text with <|endoftext|>, whose state is the embedding.

config.json: `rms_norm_eps`, `rope_theta` (or transformers 5's `rope_parameters`), `head_dim`,
`num_key_value_heads`; a null `pad_token_id` falls back to `eos_token_id` (Qwen3 pads with
<|endoftext|>); `tie_word_embeddings` concerns the LM head only, which an embedder does not keep
(`qwen3_names.py` ignores `lm_head.weight`). What this forward pass does not compute (other activations,
attention biases, sliding windows, scaled rotary positions) is refused when the config is read.

Packed rows (`data/packing.py`) are causal within each text: `attention_mask_of` meets the segment mask
and the causal one, and the rotary angles follow `position_ids`, which restart in each text.

The parameter tree (`qwen3_names.py` maps it to Hugging Face names):
  embed_tokens/embedding, norm/scale, layer_{i}/input_layernorm/scale,
  layer_{i}/self_attn/{q,k,v,o}_proj/kernel, layer_{i}/self_attn/{q,k}_norm/scale,
  layer_{i}/post_attention_layernorm/scale, layer_{i}/mlp/{gate,up,down}/kernel
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from starbucks_jax.errors import StarbucksError
from starbucks_jax.model import dense, qwen3_names, remat as remat_lib
from starbucks_jax.model.config import EncoderConfig
from starbucks_jax.model.dropout import Dropout
from starbucks_jax.model.family import (ModelFamily, checked_layers, constrain_activations, init_module_params,
                                        keep_first_layers, module_forward)
from starbucks_jax.model.layers.attention import attend, attention_mask_of
from starbucks_jax.model.layers.mlp import ACTIVATIONS, GatedMlp
from starbucks_jax.model.layers.norms import RMSNorm
from starbucks_jax.model.layers.rotary import rotary
from starbucks_jax.model.pooling import EncoderOutput
from starbucks_jax.model.tokens import Tokens

Dtype = Any
_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
          "num_key_value_heads", "head_dim", "max_position_embeddings", "initializer_range")


@dataclasses.dataclass(frozen=True)
class Qwen3Config(EncoderConfig):
  """Qwen3's hyper-parameters (Qwen3-Embedding-0.6B's defaults). `layer_norm_eps` is `rms_norm_eps`,
  `attention_probs_dropout_prob` is `attention_dropout`; Qwen3 has no other dropout, so
  `hidden_dropout_prob` is read by nothing."""
  model_type = "qwen3"
  mlp_projections = 3
  family_writes_head_sizes = True
  vocab_size: int = 151669
  hidden_size: int = 1024
  intermediate_size: int = 3072
  num_hidden_layers: int = 28
  num_attention_heads: int = 16
  num_key_value_heads: int | None = 8
  head_dim: int | None = 128
  max_position_embeddings: int = 32768
  layer_norm_eps: float = 1e-6
  hidden_dropout_prob: float = 0.0
  attention_probs_dropout_prob: float = 0.0
  pad_token_id: int = 0  # padding is masked out: any id in the vocabulary serves; config.json's eos when read
  rope_theta: float = 1000000.0

  def __post_init__(self):
    super().__post_init__()
    if self.head_dim % 2:
      raise StarbucksError(f"qwen3 config: rotary positions need an even head_dim, got {self.head_dim}")
    if not 0 <= self.pad_token_id < self.vocab_size:
      raise StarbucksError(f"qwen3 config: pad_token_id {self.pad_token_id} is outside the vocabulary")

  @classmethod
  def from_hf_dict(cls, hf: dict[str, Any], source: str = "config.json") -> "Qwen3Config":
    """A config from config.json (transformers 5's `rope_parameters` or the older `rope_theta`); refuses
    the math we do not implement. The pad id is `pad_token_id`, else `eos_token_id` (Qwen3's configs
    leave the first null and pad with the second)."""
    _check_supported(hf, cls.model_type, source)
    values = {k: hf[k] for k in _SIZES if hf.get(k) is not None}
    values.update(layer_norm_eps=hf.get("rms_norm_eps", cls.layer_norm_eps),
                  attention_probs_dropout_prob=hf.get("attention_dropout") or 0.0)
    pad = next((hf[k] for k in ("pad_token_id", "eos_token_id") if isinstance(hf.get(k), int)), None)
    if pad is not None:
      values["pad_token_id"] = pad
    theta = (hf.get("rope_parameters") or {}).get("rope_theta", hf.get("rope_theta"))
    if theta is not None:
      values["rope_theta"] = float(theta)
    try:
      return cls(**values)
    except TypeError as e:
      raise StarbucksError(f"{source}: {e}") from None

  def to_hf_dict(self, architecture: str = "Qwen3Model") -> dict[str, Any]:
    """A config.json that transformers' Qwen3Config reads (5's `rope_parameters`, and `rope_theta` for
    older versions); no LM head, so nothing is tied."""
    hf = {k: getattr(self, k) for k in _SIZES}
    return {"architectures": [architecture], "model_type": self.model_type, **hf,
            "rms_norm_eps": self.layer_norm_eps, "attention_dropout": self.attention_probs_dropout_prob,
            "hidden_act": "silu", "attention_bias": False, "use_sliding_window": False, "sliding_window": None,
            "layer_types": ["full_attention"] * self.num_hidden_layers, "pad_token_id": self.pad_token_id,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "rope_theta": self.rope_theta, "tie_word_embeddings": False}


def _check_supported(hf: dict, model_type: str, source: str) -> None:
  """One error line for a config.json whose math the forward pass does not compute."""
  if hf.get("model_type") != model_type:
    raise StarbucksError(f"{source}: model_type is {hf.get('model_type')!r}, not {model_type!r}")
  if hf.get("hidden_act", "silu") != "silu":
    raise StarbucksError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported (only 'silu', as in Qwen3)")
  if hf.get("attention_bias"):
    raise StarbucksError(f"{source}: attention_bias true is not supported (Qwen3 checkpoints have no biases)")
  if hf.get("use_sliding_window") or any(t != "full_attention" for t in hf.get("layer_types") or ()):
    raise StarbucksError(f"{source}: sliding-window layers (use_sliding_window true) are not supported")
  rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  if rope.get("rope_type", rope.get("type", "default")) != "default":
    raise StarbucksError(f"{source}: rope_type {rope.get('rope_type', rope.get('type'))!r} is not supported")


def _dense(config: Qwen3Config, features: int, dtype: Dtype, name: str) -> dense.Dense:
  return dense.Dense(features, dtype=dtype, name=name, use_bias=False,
                     kernel_init=nn.initializers.normal(config.initializer_range))


def _norm(config: Qwen3Config, dtype: Dtype, name: str) -> RMSNorm:
  return RMSNorm(config.layer_norm_eps, dtype=dtype, name=name)


class SelfAttention(nn.Module):
  """Causal grouped-query attention with per-head q/k RMSNorms and rotary positions."""
  config: Qwen3Config
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask, positions, deterministic: bool, row_ids=None):
    cfg = self.config
    batch, length, _ = x.shape

    def heads(name, n):
      return _dense(cfg, n * cfg.head_dim, self.dtype, name)(x).reshape(batch, length, n, cfg.head_dim)

    q, k, v = heads("q_proj", cfg.num_attention_heads), heads("k_proj", cfg.num_key_value_heads), \
        heads("v_proj", cfg.num_key_value_heads)
    q = rotary(_norm(cfg, self.dtype, "q_norm")(q), positions, cfg.rope_theta).astype(v.dtype)
    k = rotary(_norm(cfg, self.dtype, "k_norm")(k), positions, cfg.rope_theta).astype(v.dtype)
    dropout = Dropout(cfg.attention_probs_dropout_prob)
    drop = None if deterministic or cfg.attention_probs_dropout_prob <= 0 else (
        lambda probs: dropout(probs, deterministic=False, row_ids=row_ids))
    context = attend(q, k, v, mask, dtype=self.dtype, drop=drop, scale=cfg.head_dim ** -0.5)
    return _dense(cfg, cfg.hidden_size, self.dtype, "o_proj")(context.reshape(batch, length, cfg.attention_width))


class DecoderLayer(nn.Module):
  """One pre-norm layer: x + attention(rms(x)), then x + SwiGLU(rms(x))."""
  config: Qwen3Config
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, inputs, deterministic: bool, row_ids=None):
    mask, positions = inputs  # one argument for both: `remat.apply_layer` calls layer(x, mask, ...)
    cfg = self.config
    h = _norm(cfg, self.dtype, "input_layernorm")(x)
    x = x + SelfAttention(cfg, self.dtype, name="self_attn")(h, mask, positions, deterministic, row_ids)
    h = _norm(cfg, self.dtype, "post_attention_layernorm")(x)
    mlp = GatedMlp(cfg.hidden_size, cfg.intermediate_size, ACTIVATIONS["silu"], init_range=cfg.initializer_range,
                   dtype=self.dtype, name="mlp")
    return x + mlp(h, deterministic, row_ids)


class Qwen3Decoder(nn.Module):
  """Token embeddings, the first `num_layers` layers (all when None), the final norm on every layer's output."""
  config: Qwen3Config
  dtype: Dtype = jnp.float32
  remat: bool | str = False  # what each layer recomputes in the backward pass (remat.py)

  @nn.compact
  def __call__(self, tokens: Tokens, *, num_layers: Optional[int] = None, deterministic: bool = True,
               row_ids=None) -> EncoderOutput:
    cfg = self.config
    num_layers = checked_layers(cfg, tokens, num_layers)
    inputs = (attention_mask_of(tokens.attention_mask, tokens.packed_segments, causal=True), tokens.position_ids)
    x = constrain_activations(nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=self.dtype, param_dtype=jnp.float32,
                                       embedding_init=nn.initializers.normal(cfg.initializer_range),
                                       name="embed_tokens")(tokens.input_ids))
    norm = _norm(cfg, self.dtype, "norm")
    hidden_states = [constrain_activations(norm(x))]
    layer_cls = remat_lib.layer_class(DecoderLayer, self.remat)
    for i in range(num_layers):  # a Python loop: layers above num_layers are never traced
      tied = False if self.is_initializing() else self.remat  # nothing to differentiate at init
      layer = layer_cls(cfg, self.dtype, name=f"layer_{i}")
      x = constrain_activations(remat_lib.apply_layer(layer, tied, x, inputs, deterministic, row_ids))
      hidden_states.append(constrain_activations(norm(x)))
    return EncoderOutput(tuple(hidden_states), tokens)


forward = module_forward(Qwen3Decoder)  # (`family.module_forward`; token_type_ids are ignored)


def init_params(config: Qwen3Config, rng: jax.Array, *, with_mlm_head: bool = False) -> dict:
  """A freshly initialised tree, {"encoder"} only (no pooler; no MLM head: `FAMILY.mlm` is None)."""
  if with_mlm_head:
    FAMILY.require_mlm("an MLM head")
  return {"encoder": init_module_params(Qwen3Decoder, config, rng)}


FAMILY = ModelFamily(
    name="qwen3", config_class=Qwen3Config, forward=forward, init_params=init_params,
    init_pooler_params=lambda config, rng: {}, keep_layers=keep_first_layers,
    hf_names=qwen3_names.HF_NAMES, param_axes=qwen3_names.PARAM_AXES, default_pooling="last", mlm=None)
