"""The BERT hyper-parameters we support, read from and written to Hugging Face `config.json`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from starbucks_jax.errors import StarbucksError


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  initializer_range: float = 0.02
  pad_token_id: int = 0

  def __post_init__(self):
    if self.hidden_size % self.num_attention_heads:
      raise StarbucksError(
          f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}")
    for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "max_position_embeddings", "type_vocab_size"):
      if getattr(self, name) < 1:
        raise StarbucksError(f"BERT config: {name} must be at least 1, got {getattr(self, name)}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @classmethod
  def from_hf_dict(cls, hf: dict[str, Any], source: str = "config.json") -> "BertConfig":
    """Builds a config from a Hugging Face config dict; rejects models whose math differs from BERT's."""
    model_type = hf.get("model_type")
    if model_type != "bert":
      raise StarbucksError(f"{source}: model_type is {model_type!r}, but only 'bert' models are supported")
    act = hf.get("hidden_act", "gelu")
    if act != "gelu":
      raise StarbucksError(f"{source}: hidden_act {act!r} is not supported (only exact 'gelu', as in BERT)")
    position_type = hf.get("position_embedding_type", "absolute")
    if position_type != "absolute":
      raise StarbucksError(f"{source}: position_embedding_type {position_type!r} is not supported (only 'absolute')")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
      raise StarbucksError(f"{source}: decoder / cross-attention BERT models are not supported")
    known = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in hf.items() if k in known and v is not None}
    try:
      return cls(**values)
    except TypeError as e:  # a value of the wrong type
      raise StarbucksError(f"{source}: {e}") from None

  @classmethod
  def from_json_file(cls, path: str | Path) -> "BertConfig":
    path = Path(path)
    if not path.is_file():
      raise StarbucksError(f"no config.json in {path.parent}")
    try:
      hf = json.loads(path.read_text())
    except json.JSONDecodeError as e:
      raise StarbucksError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(hf, dict):
      raise StarbucksError(f"{path} does not hold a JSON object")
    return cls.from_hf_dict(hf, source=str(path))

  def to_hf_dict(self, architecture: str = "BertModel") -> dict[str, Any]:
    """A `config.json` dict that transformers' BertConfig reads."""
    return {
        "architectures": [architecture],
        "model_type": "bert",
        "hidden_act": "gelu",
        "position_embedding_type": "absolute",
        **dataclasses.asdict(self),
    }

  def replace(self, **changes) -> "BertConfig":
    return dataclasses.replace(self, **changes)
