"""RoBERTa's and XLM-RoBERTa's parameter names: BERT's encoder table (`bert_names.py`: the same tensor
names under `roberta.` in the masked-LM layout) with RoBERTa's LM head, and BERT's sharding axes.

`RobertaForMaskedLM` / `XLMRobertaForMaskedLM` store `roberta.<BertModel names>` and `lm_head.{dense,
layer_norm,bias}` (`lm_head.decoder` is tied to the word embeddings): the same math as BERT's MLM head,
so our "mlm_head" tree serves both.
"""

from __future__ import annotations

import re

from starbucks_jax.model import bert_names
from starbucks_jax.model.family import HfNames

MLM_HEAD_NAMES = (
    ("lm_head.dense.weight", "mlm_head/transform/kernel", True),
    ("lm_head.dense.bias", "mlm_head/transform/bias", False),
    ("lm_head.layer_norm.weight", "mlm_head/layer_norm/scale", False),
    ("lm_head.layer_norm.bias", "mlm_head/layer_norm/bias", False),
    ("lm_head.bias", "mlm_head/bias", False),
)
# Buffers and the tied decoder (its bias is lm_head.bias under another name).
IGNORED_NAMES = re.compile(r"^(embeddings\.position_ids|embeddings\.token_type_ids|lm_head\.decoder\.(weight|bias))$")


def normalise_name(name: str) -> str:
  return name[len("roberta."):] if name.startswith("roberta.") else name


def hf_names(architecture_stem: str) -> HfNames:
  """The table of `RobertaModel` ("Roberta") or `XLMRobertaModel` ("XLMRoberta")."""
  return HfNames(
      embeddings=bert_names.EMBEDDING_NAMES, layer=bert_names.LAYER_NAMES, pooler=bert_names.POOLER_NAMES,
      mlm_head=MLM_HEAD_NAMES, base_prefix="roberta.", head_prefix="lm_head.", ignored=IGNORED_NAMES,
      aliases={"lm_head.bias": "lm_head.decoder.bias"}, tied_decoder="lm_head.decoder.weight",
      base_architecture=f"{architecture_stem}Model", mlm_architecture=f"{architecture_stem}ForMaskedLM",
      expected_shapes=bert_names.expected_shapes, normalise=normalise_name)


ROBERTA_NAMES = hf_names("Roberta")
XLM_ROBERTA_NAMES = hf_names("XLMRoberta")
PARAM_AXES = bert_names.PARAM_AXES
