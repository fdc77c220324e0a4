"""What every model family's config has, and reading a Hugging Face `config.json`.

`EncoderConfig` holds the hyper-parameters the rest of the package reads from any encoder: sizes (for
pairs, pooling, FLOPs and the MLM head), the position limit, the pad id, the dropout rates (a run may
override them) and the initialiser's scale. A family's config (`bert.BertConfig`) subclasses it, sets
`model_type` and adds its own fields and checks.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar

from starbucks_jax import storage
from starbucks_jax.errors import StarbucksError


def read_config_json(path) -> dict[str, Any]:
  """A config.json (local or in a bucket) as a dict; a missing, unreadable or non-object file is a
  StarbucksError naming it."""
  path = storage.as_path(path)
  if not path.is_file():
    raise StarbucksError(f"no config.json in {path.parent}")
  try:
    hf = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise StarbucksError(f"{path} is not valid JSON: {e}") from None
  if not isinstance(hf, dict):
    raise StarbucksError(f"{path} does not hold a JSON object")
  return hf


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """The fields every family's config has; frozen and hashable (a static argument of jitted functions)."""
  model_type: ClassVar[str] = ""  # config.json's model_type; set by each family's subclass
  mlm_head_biases: ClassVar[bool] = True  # does the MLM head's transform and LayerNorm have biases (`mlm_head.py`)
  mlp_projections: ClassVar[int] = 2  # matrices in a layer's MLP, for FLOPs: 2 (in, out); 3 with a GLU's gate
  family_writes_head_sizes: ClassVar[bool] = False  # decoders' config.json always names head_dim and kv heads
  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  layer_norm_eps: float = 1e-12
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  initializer_range: float = 0.02
  pad_token_id: int = 0
  # Grouped-query attention and explicit head sizes (decoders): None derives them as an encoder has them,
  # as many key/value heads as query heads, each hidden_size / num_attention_heads wide.
  num_key_value_heads: int | None = None
  head_dim: int | None = None

  def __post_init__(self):
    for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "max_position_embeddings"):
      if getattr(self, name) < 1:
        raise StarbucksError(f"{self.model_type} config: {name} must be at least 1, got {getattr(self, name)}")
    if self.head_dim is None and self.hidden_size % self.num_attention_heads:
      raise StarbucksError(
          f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}")
    derived = {"head_dim": self.hidden_size // self.num_attention_heads,
               "num_key_value_heads": self.num_attention_heads}
    for name, value in derived.items():  # frozen: fill the derived values in place, once
      if getattr(self, name) is None:
        object.__setattr__(self, name, value)
    if self.num_attention_heads % self.num_key_value_heads:
      raise StarbucksError(f"{self.model_type} config: num_attention_heads {self.num_attention_heads} is not a "
                           f"multiple of num_key_value_heads {self.num_key_value_heads}")

  @property
  def attention_width(self) -> int:
    """The query heads' total width (hidden_size for an encoder; Qwen3's may differ)."""
    return self.num_attention_heads * self.head_dim

  def flops_per_token(self, length: int) -> int:
    """One layer's forward matmul FLOPs per token of a length-`length` text (2 a multiply-add): the query
    and output projections, the key and value projections (grouped heads: fewer), the MLP
    (`mlp_projections` matrices), and the scores and mixing over every key (`model/flops.py`)."""
    h, i, width = self.hidden_size, self.intermediate_size, self.attention_width
    kv_width = self.num_key_value_heads * self.head_dim
    return 4 * h * width + 4 * h * kv_width + 2 * self.mlp_projections * h * i + 4 * length * width

  @property
  def max_text_length(self) -> int:
    """The most tokens one text may have: the position table's size, less any rows a family reserves
    (RoBERTa's start past its pad id)."""
    return self.max_position_embeddings

  @classmethod
  def from_hf_dict(cls, hf: dict[str, Any], source: str = "config.json"):
    """The fields of this class found in a Hugging Face config dict; other keys are ignored."""
    model_type = hf.get("model_type")
    if model_type != cls.model_type:
      raise StarbucksError(f"{source}: model_type is {model_type!r}, not {cls.model_type!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in hf.items() if k in known and v is not None}
    try:
      return cls(**values)
    except TypeError as e:  # a value of the wrong type
      raise StarbucksError(f"{source}: {e}") from None

  def to_hf_dict(self, architecture: str) -> dict[str, Any]:
    """A `config.json` dict that transformers reads for `architecture` (the head sizes only where they are
    not an encoder's derived ones, so an encoder's file is as transformers writes it)."""
    values = dataclasses.asdict(self)
    derived = (self.head_dim * self.num_attention_heads == self.hidden_size
               and self.num_key_value_heads == self.num_attention_heads)
    if derived and not self.family_writes_head_sizes:
      del values["head_dim"], values["num_key_value_heads"]
    return {"architectures": [architecture], "model_type": self.model_type, **values}

  def replace(self, **changes):
    return dataclasses.replace(self, **changes)
