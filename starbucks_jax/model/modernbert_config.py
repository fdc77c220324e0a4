"""ModernBERT's config: config.json in transformers 5's form or the Hub's older one, and back.

The math it describes is in `modernbert.py`; `layer_types` says which layers attend globally and which
through a sliding window.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from starbucks_jax.errors import StarbucksError
from starbucks_jax.model.config import EncoderConfig

GLOBAL, LOCAL = "full_attention", "sliding_attention"  # transformers' layer_types values


@dataclasses.dataclass(frozen=True)
class ModernBertConfig(EncoderConfig):
  """ModernBERT's hyper-parameters (ModernBERT-base's defaults).

  `layer_norm_eps` is config.json's `norm_eps`; `hidden_dropout_prob` its embedding and MLP dropout,
  `attention_probs_dropout_prob` its attention dropout. `layer_types` has one entry per layer.
  """
  model_type = "modernbert"
  mlm_head_biases = False
  mlp_projections = 3
  vocab_size: int = 50368
  hidden_size: int = 768
  intermediate_size: int = 1152
  num_hidden_layers: int = 22
  num_attention_heads: int = 12
  max_position_embeddings: int = 8192
  layer_norm_eps: float = 1e-5
  hidden_dropout_prob: float = 0.0
  attention_probs_dropout_prob: float = 0.0
  pad_token_id: int = 50283
  layer_types: tuple = ()  # empty: every `global_attn_every_n_layers`-th layer (3) global, from layer 0
  global_rope_theta: float = 160000.0
  local_rope_theta: float = 10000.0
  local_attention: int = 128
  bos_token_id: Optional[int] = 50281
  eos_token_id: Optional[int] = 50282
  cls_token_id: Optional[int] = 50281
  sep_token_id: Optional[int] = 50282

  def __post_init__(self):
    super().__post_init__()
    types = tuple(self.layer_types) or layer_types_every(3, self.num_hidden_layers)
    # A model cut to n layers (`replace(num_hidden_layers=n)`, the n-layer export) keeps the first n types.
    if len(types) < self.num_hidden_layers:
      raise StarbucksError(f"modernbert config: layer_types has {len(types)} entries for "
                           f"{self.num_hidden_layers} layers")
    object.__setattr__(self, "layer_types", types[:self.num_hidden_layers])
    unknown = sorted(set(self.layer_types) - {GLOBAL, LOCAL})
    if unknown:
      raise StarbucksError(f"modernbert config: layer_types may hold {GLOBAL!r} and {LOCAL!r}, not {unknown}")
    if self.head_dim % 2:
      raise StarbucksError(f"modernbert config: rotary positions need an even head size, got {self.head_dim}")
    if self.local_attention < 2:
      raise StarbucksError(f"modernbert config: local_attention must be at least 2, got {self.local_attention}")

  @property
  def window(self) -> int:
    """How far a sliding-window query sees, on each side (transformers' `sliding_window`)."""
    return self.local_attention // 2

  @classmethod
  def from_hf_dict(cls, hf: dict[str, Any], source: str = "config.json") -> "ModernBertConfig":
    """A config from config.json, in transformers 5's form (layer_types, rope_parameters) or the Hub's
    older one (global_attn_every_n_layers, global/local_rope_theta); refuses math we do not implement."""
    if hf.get("model_type") != cls.model_type:
      raise StarbucksError(f"{source}: model_type is {hf.get('model_type')!r}, not {cls.model_type!r}")
    for key in ("hidden_activation", "classifier_activation"):
      if hf.get(key, "gelu") != "gelu":
        raise StarbucksError(f"{source}: {key} {hf[key]!r} is not supported (only exact 'gelu', as in ModernBERT)")
    for key in ("attention_bias", "mlp_bias", "norm_bias", "classifier_bias"):
      if hf.get(key):
        raise StarbucksError(f"{source}: {key} true is not supported (ModernBERT checkpoints have no such biases)")
    if hf.get("decoder_bias") is False:
      raise StarbucksError(f"{source}: decoder_bias false is not supported (ModernBERT's MLM decoder has a bias)")
    values = {k: hf[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                 "num_attention_heads", "max_position_embeddings", "initializer_range",
                                 "pad_token_id", "local_attention", "bos_token_id", "eos_token_id", "cls_token_id",
                                 "sep_token_id") if hf.get(k) is not None}
    if "norm_eps" in hf:
      values["layer_norm_eps"] = hf["norm_eps"]
    values["hidden_dropout_prob"] = max(hf.get("embedding_dropout", 0.0) or 0.0, hf.get("mlp_dropout", 0.0) or 0.0)
    values["attention_probs_dropout_prob"] = hf.get("attention_dropout", 0.0) or 0.0
    layers = hf.get("num_hidden_layers", cls.num_hidden_layers)
    values["layer_types"] = tuple(hf.get("layer_types") or layer_types_every(hf.get("global_attn_every_n_layers", 3),
                                                                             layers))
    rope = hf.get("rope_parameters") or {}
    for kind, field, legacy in ((GLOBAL, "global_rope_theta", "global_rope_theta"),
                                (LOCAL, "local_rope_theta", "local_rope_theta")):
      params = rope.get(kind) or {}
      if params.get("rope_type", "default") != "default":
        raise StarbucksError(f"{source}: rope_type {params['rope_type']!r} ({kind}) is not supported (only 'default')")
      theta = params.get("rope_theta", hf.get(legacy))
      if theta is not None:
        values[field] = float(theta)
    if hf.get("rope_scaling"):
      raise StarbucksError(f"{source}: rope_scaling is not supported")
    try:
      return cls(**values)
    except TypeError as e:
      raise StarbucksError(f"{source}: {e}") from None

  def to_hf_dict(self, architecture: str = "ModernBertModel") -> dict[str, Any]:
    """A config.json that transformers 5 reads (layer_types, rope_parameters) and older releases too
    (global_attn_every_n_layers, global/local_rope_theta)."""
    hf = {
        "architectures": [architecture], "model_type": self.model_type, "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_hidden_layers, "num_attention_heads": self.num_attention_heads,
        "max_position_embeddings": self.max_position_embeddings, "initializer_range": self.initializer_range,
        "norm_eps": self.layer_norm_eps, "norm_bias": False, "attention_bias": False, "mlp_bias": False,
        "classifier_bias": False, "decoder_bias": True, "hidden_activation": "gelu",
        "classifier_activation": "gelu", "embedding_dropout": self.hidden_dropout_prob,
        "mlp_dropout": self.hidden_dropout_prob, "attention_dropout": self.attention_probs_dropout_prob,
        "pad_token_id": self.pad_token_id, "local_attention": self.local_attention,
        "layer_types": list(self.layer_types),
        "rope_parameters": {GLOBAL: {"rope_type": "default", "rope_theta": self.global_rope_theta},
                            LOCAL: {"rope_type": "default", "rope_theta": self.local_rope_theta}},
        "global_rope_theta": self.global_rope_theta, "local_rope_theta": self.local_rope_theta,
        "tie_word_embeddings": True,
    }
    for every in range(1, self.num_hidden_layers + 1):
      if layer_types_every(every, self.num_hidden_layers) == self.layer_types:
        hf["global_attn_every_n_layers"] = every
        break
    for key in ("bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id"):
      if getattr(self, key) is not None:
        hf[key] = getattr(self, key)
    return hf


def layer_types_every(every: int, num_layers: int) -> tuple:
  """Global attention in layers 0, every, 2 every, ...; sliding windows in the others (transformers' rule)."""
  if every < 1:
    raise StarbucksError(f"modernbert config: global_attn_every_n_layers must be at least 1, got {every}")
  return tuple(LOCAL if i % every else GLOBAL for i in range(num_layers))
