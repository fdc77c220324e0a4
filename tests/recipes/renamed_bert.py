"""A model family added by the recipe in ARCHITECTURE.md: BERT's math under another `model_type` and other
Hugging Face tensor names ("enc.blocks.{i}.attn.q.weight", ...), as a checkpoint of a renamed copy of
BERT would store it.

Touch list of a real family: `starbucks_jax/model/<family>.py` (config and forward pass; here BERT's are
reused), `starbucks_jax/model/<family>_names.py` (the name table and sharding axes; here the table below)
and one line in `starbucks_jax/model/registry.py` (here `registry.register(FAMILY)` in the test).
"""

import dataclasses
import re

from starbucks_jax.model import bert, bert_names
from starbucks_jax.model.family import HfNames

MODEL_TYPE = "renamed_bert"
RENAMES = (("embeddings.", "emb."), ("encoder.layer.", "enc.blocks."), ("attention.self.query", "attn.q"),
           ("attention.self.key", "attn.k"), ("attention.self.value", "attn.v"), ("attention.output.dense", "attn.o"),
           ("attention.output.LayerNorm", "attn.norm"), ("intermediate.dense", "mlp.up"),
           ("output.dense", "mlp.down"), ("output.LayerNorm", "mlp.norm"), ("pooler.dense", "pool"))


def rename(name: str) -> str:
  """A BertModel tensor name as the renamed checkpoint stores it."""
  for old, new in RENAMES:
    name = name.replace(old, new)
  return name


def _table(rows):
  return tuple((rename(hf), ours, transpose) for hf, ours, transpose in rows)


@dataclasses.dataclass(frozen=True)
class RenamedBertConfig(bert.BertConfig):
  model_type = MODEL_TYPE


HF_NAMES = HfNames(
    embeddings=_table(bert_names.EMBEDDING_NAMES), layer=_table(bert_names.LAYER_NAMES),
    pooler=_table(bert_names.POOLER_NAMES), mlm_head=bert_names.MLM_HEAD_NAMES, base_prefix="renamed.",
    head_prefix="cls.", ignored=re.compile(r"^$"), aliases={}, tied_decoder=None,
    base_architecture="RenamedBertModel", mlm_architecture="RenamedBertForMaskedLM",
    expected_shapes=bert_names.expected_shapes, normalise=lambda name: name.removeprefix("renamed."))

FAMILY = dataclasses.replace(bert.FAMILY, name="renamed_bert", config_class=RenamedBertConfig, hf_names=HF_NAMES)
