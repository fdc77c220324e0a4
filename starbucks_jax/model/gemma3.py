"""The Gemma 3 text family (`model_type` "gemma3_text"): a functional Flax model with the math of
transformers' `Gemma3TextModel`, for EmbeddingGemma-style embedders (bidirectional attention, mean pooling)
and Gemma 3's causal text models alike.

What differs from BERT (`bert.py`):
- Token embeddings times sqrt(hidden_size), the factor rounded to the embeddings' dtype first (as
  transformers does, so that bfloat16 runs scale by what a bfloat16 Gemma scales by); no position table.
- Gemma's RMSNorm, `(1 + w) * x / rms(x)`, on both sides of each sub-layer:
  x + post_attention_norm(attn(input_norm(x))), then x + post_feedforward_norm(mlp(pre_feedforward_norm(x))).
- Attention: q, k, v projections with fewer key/value heads than query heads, an RMSNorm over each query
  and key head, rotary positions, scores scaled by `query_pre_attn_scalar ** -0.5` (not head_dim's), o_proj.
  The attention width (heads x head_dim) may differ from hidden_size.
- Local and global layers (`layer_types`): a sliding window in the local ones, and a rotary theta of each
  kind (`local_rope_theta` / `global_rope_theta`).
- `use_bidirectional_attention` (EmbeddingGemma): no causal mask, and a local layer's window reaches
  `sliding_window // 2` positions on either side instead of `sliding_window - 1` back
  (`Gemma3Config.window` says why).
- A GeGLU MLP with GELU's tanh form (`hidden_activation`), separate gate and up projections.
- A final RMSNorm. As in `modernbert.py`, `hidden_states[n]` is that norm on layer n's output: what the
  n-layer model returns as `last_hidden_state`, so the embedding at (n, d) is what the n-layer export serves
  (index 0: the normed, scaled embeddings).
Dropout only where Gemma 3 has it: on the attention probabilities (`attention_dropout`).

No MLM head (`FAMILY.mlm` is None: SMAE is refused) and `mean` pooling by default, as EmbeddingGemma pools.
Packed rows (`data/packing.py`) keep attention, windows and (when causal) order within each text; the rotary
angles follow `position_ids`, which restart in each text.

config.json (`Gemma3Config.from_hf_dict`):
- `layer_types` ("sliding_attention" / "full_attention"), or in older files `sliding_window_pattern`
  (every p-th layer global, counted from 1; transformers' rule, 6 when absent).
- Two rotary thetas: `rope_parameters` per layer type (transformers 5), or `rope_theta` (global layers) and
  `rope_local_base_freq` (local ones). Only unscaled rotary positions are computed; any other `rope_type`
  (or an older `rope_scaling`) is refused, and so is attention logit softcapping (Gemma 3 has none).
- `sliding_window` is kept as config.json writes it. transformers turns it into the mask's reach on
  loading, and the reach depends on `use_bidirectional_attention` (`Gemma3Config.window`), so the value
  that comes back out in an export must be the file's, not the reach.

The parameter tree (`gemma3_names.py` maps it to Hugging Face names):
  embed_tokens/embedding, norm/scale, layer_{i}/{input,post_attention,pre_feedforward,post_feedforward}_layernorm/scale,
  layer_{i}/self_attn/{q,k,v,o}_proj/kernel, layer_{i}/self_attn/{q,k}_norm/scale, layer_{i}/mlp/{gate,up,down}/kernel
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from starbucks_jax.errors import StarbucksError
from starbucks_jax.model import dense, gemma3_names, remat as remat_lib
from starbucks_jax.model.config import EncoderConfig
from starbucks_jax.model.dropout import Dropout
from starbucks_jax.model.family import (ModelFamily, checked_layers, constrain_activations, init_module_params,
                                        keep_first_layers, module_forward)
from starbucks_jax.model.layers.attention import attend, attention_mask_of, sliding_window
from starbucks_jax.model.layers.mlp import ACTIVATIONS, GatedMlp
from starbucks_jax.model.layers.norms import RMSNorm
from starbucks_jax.model.layers.rotary import rotary
from starbucks_jax.model.pooling import EncoderOutput
from starbucks_jax.model.tokens import Tokens

Dtype = Any
GLOBAL, LOCAL = "full_attention", "sliding_attention"  # transformers' layer_types values
MODEL_TYPE = "gemma3_text"
_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
          "num_key_value_heads", "head_dim", "max_position_embeddings", "initializer_range",
          "query_pre_attn_scalar", "sliding_window", "hidden_activation", "bos_token_id", "eos_token_id")
_DEFAULT_THETAS = {GLOBAL: 1_000_000.0, LOCAL: 10_000.0}  # transformers' Gemma3TextConfig.default_theta


@dataclasses.dataclass(frozen=True)
class Gemma3Config(EncoderConfig):
  """Gemma 3's text hyper-parameters (defaults shaped like EmbeddingGemma-300m; a folder's config.json sets
  every field). `layer_norm_eps` is `rms_norm_eps`, `attention_probs_dropout_prob` is `attention_dropout`;
  Gemma 3 has no other dropout. `sliding_window` is config.json's value (`window`: how far a local layer's
  query sees)."""
  model_type = MODEL_TYPE
  mlp_projections = 3
  family_writes_head_sizes = True
  vocab_size: int = 262144
  hidden_size: int = 768
  intermediate_size: int = 1152
  num_hidden_layers: int = 24
  num_attention_heads: int = 3
  num_key_value_heads: int | None = 1
  head_dim: int | None = 256
  max_position_embeddings: int = 2048
  layer_norm_eps: float = 1e-6
  hidden_dropout_prob: float = 0.0
  attention_probs_dropout_prob: float = 0.0
  pad_token_id: int = 0
  bos_token_id: Optional[int] = 2
  eos_token_id: Optional[int | tuple] = 1  # Gemma 3's instruction-tuned files list several (a tuple here)
  hidden_activation: str = "gelu_pytorch_tanh"
  query_pre_attn_scalar: float = 256  # as written (transformers' field is an int)
  sliding_window: int = 512
  use_bidirectional_attention: bool = True
  layer_types: tuple = ()  # empty: transformers' rule with sliding_window_pattern 6 (`layer_types_every`)
  global_rope_theta: float = _DEFAULT_THETAS[GLOBAL]
  local_rope_theta: float = _DEFAULT_THETAS[LOCAL]

  def __post_init__(self):
    super().__post_init__()
    types = tuple(self.layer_types) or layer_types_every(6, self.num_hidden_layers)
    # A model cut to n layers (`replace(num_hidden_layers=n)`, the n-layer export) keeps the first n types.
    if len(types) < self.num_hidden_layers:
      raise StarbucksError(f"gemma3 config: layer_types has {len(types)} entries for {self.num_hidden_layers} layers")
    object.__setattr__(self, "layer_types", types[:self.num_hidden_layers])
    unknown = sorted(set(self.layer_types) - {GLOBAL, LOCAL})
    if unknown:
      raise StarbucksError(f"gemma3 config: layer_types may hold {GLOBAL!r} and {LOCAL!r}, not {unknown}")
    if self.head_dim % 2:
      raise StarbucksError(f"gemma3 config: rotary positions need an even head_dim, got {self.head_dim}")
    if self.sliding_window < 2:
      raise StarbucksError(f"gemma3 config: sliding_window must be at least 2, got {self.sliding_window}")
    if self.hidden_activation not in ACTIVATIONS:
      raise StarbucksError(f"gemma3 config: hidden_activation {self.hidden_activation!r} is not supported "
                           f"(one of {', '.join(ACTIVATIONS)})")
    if not 0 <= self.pad_token_id < self.vocab_size:
      raise StarbucksError(f"gemma3 config: pad_token_id {self.pad_token_id} is outside the vocabulary")

  @property
  def window(self) -> int:
    """How far a local layer's query sees (`layers/attention.sliding_window`), as transformers builds the
    mask. Causal: keys fewer than `sliding_window` positions back. Bidirectional (EmbeddingGemma):
    transformers first halves the window (`sliding_window // 2 + 1`, an exclusive bound), so keys at most
    `sliding_window // 2` positions away on either side."""
    return self.sliding_window // 2 if self.use_bidirectional_attention else self.sliding_window - 1

  @property
  def causal(self) -> bool:
    return not self.use_bidirectional_attention

  @classmethod
  def from_hf_dict(cls, hf: dict[str, Any], source: str = "config.json") -> "Gemma3Config":
    """A config from config.json (either rotary form); refuses the math the forward pass does not compute."""
    _check_supported(hf, source)
    values = {k: tuple(hf[k]) if isinstance(hf[k], list) else hf[k] for k in _SIZES if hf.get(k) is not None}
    values.update(layer_norm_eps=hf.get("rms_norm_eps", cls.layer_norm_eps),
                  attention_probs_dropout_prob=hf.get("attention_dropout") or 0.0,
                  use_bidirectional_attention=bool(hf.get("use_bidirectional_attention")))
    if isinstance(hf.get("pad_token_id"), int):
      values["pad_token_id"] = hf["pad_token_id"]
    if "hidden_activation" not in values and hf.get("hidden_act"):  # older Gemma files
      values["hidden_activation"] = hf["hidden_act"]
    layers = hf.get("num_hidden_layers", cls.num_hidden_layers)
    values["layer_types"] = tuple(hf.get("layer_types") or layer_types_every(hf.get("sliding_window_pattern") or 6,
                                                                             layers))
    values.update(_rope_thetas(hf, source))
    try:
      return cls(**values)
    except TypeError as e:
      raise StarbucksError(f"{source}: {e}") from None

  def to_hf_dict(self, architecture: str = "Gemma3TextModel") -> dict[str, Any]:
    """A config.json that transformers 5 reads (rope_parameters) and older releases too (rope_theta,
    rope_local_base_freq); `sliding_window` as read, which transformers converts on loading."""
    hf = {k: list(v) if isinstance(v, tuple) else v for k in _SIZES if (v := getattr(self, k)) is not None}
    thetas = {GLOBAL: self.global_rope_theta, LOCAL: self.local_rope_theta}
    return {"architectures": [architecture], "model_type": self.model_type, **hf,
            "rms_norm_eps": self.layer_norm_eps, "attention_dropout": self.attention_probs_dropout_prob,
            "attention_bias": False, "attn_logit_softcapping": None,
            "use_bidirectional_attention": self.use_bidirectional_attention, "layer_types": list(self.layer_types),
            "pad_token_id": self.pad_token_id,
            "rope_parameters": {kind: {"rope_type": "default", "rope_theta": theta} for kind, theta in thetas.items()},
            "rope_theta": self.global_rope_theta, "rope_local_base_freq": self.local_rope_theta,
            "tie_word_embeddings": True}


def _check_supported(hf: dict, source: str) -> None:
  if hf.get("model_type") != MODEL_TYPE:
    raise StarbucksError(f"{source}: model_type is {hf.get('model_type')!r}, not {MODEL_TYPE!r}")
  if hf.get("attention_bias"):
    raise StarbucksError(f"{source}: attention_bias true is not supported (Gemma 3 checkpoints have no biases)")
  if hf.get("attn_logit_softcapping") is not None:
    raise StarbucksError(f"{source}: attn_logit_softcapping {hf['attn_logit_softcapping']} is not supported "
                         "(Gemma 3 has none; set it to null)")


def _rope_thetas(hf: dict, source: str) -> dict[str, float]:
  """The two thetas: `rope_parameters[layer type]["rope_theta"]` first, then the older keys (transformers'
  precedence), then transformers' defaults; any rotary scaling is refused."""
  rope = hf.get("rope_parameters") or {}
  if rope and not set(rope) <= {GLOBAL, LOCAL}:
    raise StarbucksError(f"{source}: rope_parameters must be given per layer type ({GLOBAL!r}, {LOCAL!r}) for "
                         f"gemma3_text, got keys {sorted(rope)}")
  scaling = hf.get("rope_scaling") or {}  # older files: applies to the global layers
  legacy = {GLOBAL: hf.get("rope_theta"), LOCAL: hf.get("rope_local_base_freq")}
  thetas = {}
  for kind, field in ((GLOBAL, "global_rope_theta"), (LOCAL, "local_rope_theta")):
    params = {**(scaling if kind == GLOBAL else {}), **(rope.get(kind) or {})}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
      raise StarbucksError(f"{source}: rope_type {rope_type!r} ({kind} layers) is not supported (only unscaled "
                           "rotary positions, 'default')")
    theta = params.get("rope_theta", legacy[kind])
    thetas[field] = float(_DEFAULT_THETAS[kind] if theta is None else theta)
  return thetas


def layer_types_every(every: int, num_layers: int) -> tuple:
  """Layers every, 2 every, ... (counted from 1) global, the others local (transformers' Gemma 3 rule)."""
  if every < 1:
    raise StarbucksError(f"gemma3 config: sliding_window_pattern must be at least 1, got {every}")
  return tuple(LOCAL if (i + 1) % every else GLOBAL for i in range(num_layers))




def _dense(config: Gemma3Config, features: int, dtype: Dtype, name: str) -> dense.Dense:
  return dense.Dense(features, dtype=dtype, name=name, use_bias=False,
                     kernel_init=nn.initializers.normal(config.initializer_range))


def _norm(config: Gemma3Config, dtype: Dtype, name: str) -> RMSNorm:
  return RMSNorm(config.layer_norm_eps, one_plus=True, dtype=dtype, name=name)


class SelfAttention(nn.Module):
  """Grouped-query attention with per-head q/k norms, rotary positions and Gemma's score scale, over the
  keys `mask` allows (narrowed to the window in a local layer)."""
  config: Gemma3Config
  local: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask, positions, deterministic: bool, row_ids=None):
    cfg = self.config
    batch, length, _ = x.shape
    heads = lambda name, n: _dense(cfg, n * cfg.head_dim, self.dtype, name)(x).reshape(batch, length, n, cfg.head_dim)
    q, k = heads("q_proj", cfg.num_attention_heads), heads("k_proj", cfg.num_key_value_heads)
    v = heads("v_proj", cfg.num_key_value_heads)
    theta = cfg.local_rope_theta if self.local else cfg.global_rope_theta
    q = rotary(_norm(cfg, self.dtype, "q_norm")(q), positions, theta).astype(v.dtype)
    k = rotary(_norm(cfg, self.dtype, "k_norm")(k), positions, theta).astype(v.dtype)
    if self.local:
      mask = sliding_window(mask, cfg.window)
    dropout = Dropout(cfg.attention_probs_dropout_prob)
    drop = None if deterministic or cfg.attention_probs_dropout_prob <= 0 else (
        lambda probs: dropout(probs, deterministic=False, row_ids=row_ids))
    context = attend(q, k, v, mask, dtype=self.dtype, drop=drop, scale=cfg.query_pre_attn_scalar ** -0.5)
    return _dense(cfg, cfg.hidden_size, self.dtype, "o_proj")(context.reshape(batch, length, cfg.attention_width))


class DecoderLayer(nn.Module):
  """One sandwich-normed layer: x + norm(attention(norm(x))), then x + norm(GeGLU(norm(x))). `index` sets
  its attention kind (`layer_types`)."""
  config: Gemma3Config
  index: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, inputs, deterministic: bool, row_ids=None):
    mask, positions = inputs  # one argument for both: `remat.apply_layer` calls layer(x, mask, ...)
    cfg = self.config
    local = cfg.layer_types[self.index] == LOCAL
    h = _norm(cfg, self.dtype, "input_layernorm")(x)
    h = SelfAttention(cfg, local, self.dtype, name="self_attn")(h, mask, positions, deterministic, row_ids)
    x = x + _norm(cfg, self.dtype, "post_attention_layernorm")(h)
    h = _norm(cfg, self.dtype, "pre_feedforward_layernorm")(x)
    mlp = GatedMlp(cfg.hidden_size, cfg.intermediate_size, ACTIVATIONS[cfg.hidden_activation],
                   init_range=cfg.initializer_range, dtype=self.dtype, name="mlp")
    return x + _norm(cfg, self.dtype, "post_feedforward_layernorm")(mlp(h, deterministic, row_ids))


class Gemma3Encoder(nn.Module):
  """Scaled token embeddings, the first `num_layers` layers (all when None), the final norm on every
  layer's output."""
  config: Gemma3Config
  dtype: Dtype = jnp.float32
  remat: bool | str = False  # what each layer recomputes in the backward pass (remat.py)

  @nn.compact
  def __call__(self, tokens: Tokens, *, num_layers: Optional[int] = None, deterministic: bool = True,
               row_ids=None) -> EncoderOutput:
    cfg = self.config
    num_layers = checked_layers(cfg, tokens, num_layers)
    mask = attention_mask_of(tokens.attention_mask, tokens.packed_segments, causal=cfg.causal)
    inputs = (mask, tokens.position_ids)
    x = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=self.dtype, param_dtype=jnp.float32,
                 embedding_init=nn.initializers.normal(cfg.initializer_range), name="embed_tokens")(tokens.input_ids)
    x = constrain_activations(x * jnp.asarray(math.sqrt(cfg.hidden_size), x.dtype))
    norm = _norm(cfg, self.dtype, "norm")
    hidden_states = [constrain_activations(norm(x))]
    layer_cls = remat_lib.layer_class(DecoderLayer, self.remat)
    for i in range(num_layers):  # a Python loop: layers above num_layers are never traced
      tied = False if self.is_initializing() else self.remat  # nothing to differentiate at init
      layer = layer_cls(cfg, i, self.dtype, name=f"layer_{i}")
      x = constrain_activations(remat_lib.apply_layer(layer, tied, x, inputs, deterministic, row_ids))
      hidden_states.append(constrain_activations(norm(x)))
    return EncoderOutput(tuple(hidden_states), tokens)


forward = module_forward(Gemma3Encoder)  # (`family.module_forward`; token_type_ids are ignored)


def init_params(config: Gemma3Config, rng: jax.Array, *, with_mlm_head: bool = False) -> dict:
  """A freshly initialised tree, {"encoder"} only: normal(initializer_range) weights, norms at 0 (the
  identity's scale, as transformers initialises them). No pooler; no MLM head (`FAMILY.mlm` is None)."""
  if with_mlm_head:
    FAMILY.require_mlm("an MLM head")
  return {"encoder": init_module_params(Gemma3Encoder, config, rng)}


FAMILY = ModelFamily(
    name="gemma3", config_class=Gemma3Config, forward=forward, init_params=init_params,
    init_pooler_params=lambda config, rng: {}, keep_layers=keep_first_layers,
    hf_names=gemma3_names.HF_NAMES, param_axes=gemma3_names.PARAM_AXES, default_pooling="mean", mlm=None)
