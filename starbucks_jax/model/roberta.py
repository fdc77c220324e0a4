"""The RoBERTa and XLM-RoBERTa families: BERT's layers (`bert.py`) with RoBERTa's positions.

RoBERTa numbers positions from `pad_token_id + 1` and gives padding tokens the position `pad_token_id`
(transformers' `create_position_ids_from_input_ids`), so a model with max_position_embeddings 514 and
pad id 1 reads texts of up to 512 tokens (`max_text_length`). It has one token type. Packed rows
(`position_ids` restarting at 0 in each text) are shifted the same way (`embedding_positions`, which
BERT's embeddings call). Everything else (attention,
the GELU MLP, post-LayerNorm, pooling, dropout, remat) is BERT's code. XLM-RoBERTa is the same model
under another `model_type` and architecture names (a 250k SentencePiece vocabulary).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from starbucks_jax.model import bert, roberta_names
from starbucks_jax.model.family import ModelFamily


@dataclasses.dataclass(frozen=True)
class RobertaConfig(bert.BertConfig):
  """RoBERTa's defaults: one token type, pad id 1, positions offset past the pad id."""
  model_type = "roberta"
  type_vocab_size: int = 1
  pad_token_id: int = 1
  max_position_embeddings: int = 514
  layer_norm_eps: float = 1e-5

  @property
  def max_text_length(self) -> int:
    return self.max_position_embeddings - self.pad_token_id - 1

  def embedding_positions(self, input_ids, position_ids=None):
    """pad_token_id + 1 + the token's place in its text; pad_token_id on padding tokens."""
    real = input_ids != self.pad_token_id
    if position_ids is None:
      position_ids = jnp.cumsum(real, axis=1) - 1
    return jnp.where(real, position_ids + self.pad_token_id + 1, self.pad_token_id)

  def to_hf_dict(self, architecture: str = "RobertaModel") -> dict[str, Any]:
    return {**super().to_hf_dict(architecture), "bos_token_id": 0, "eos_token_id": 2}


@dataclasses.dataclass(frozen=True)
class XLMRobertaConfig(RobertaConfig):
  model_type = "xlm-roberta"
  vocab_size: int = 250002

  def to_hf_dict(self, architecture: str = "XLMRobertaModel") -> dict[str, Any]:
    return super().to_hf_dict(architecture)


def _family(name: str, config_class: type, names) -> ModelFamily:
  return dataclasses.replace(bert.FAMILY, name=name, config_class=config_class, hf_names=names,
                             param_axes=roberta_names.PARAM_AXES)


FAMILY = _family("roberta", RobertaConfig, roberta_names.ROBERTA_NAMES)
XLM_FAMILY = _family("xlm-roberta", XLMRobertaConfig, roberta_names.XLM_ROBERTA_NAMES)
