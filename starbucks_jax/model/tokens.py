"""The one input layout every family's forward pass reads: `Tokens`, rows of token ids that always carry
segment ids and positions.

A padded batch is one text a row (`Tokens.padded`): segment id 1 on its tokens and 0 on padding,
positions 0, 1, 2, ... A packed batch (`Tokens.packed_rows`, `data/packing.py`) lays several texts end to
end in a row: each token's text id (numbered over the batch; `num_texts` or more on padding) and its
place in its text. `num_texts` is how many pooled vectors a forward pass gives: the rows of a padded
batch, the texts of a packed one.

The layout's one static difference, `packed`, is read in two places only: the attention mask
(`layers/attention.attention_mask_of`: keys of the query's own text) and pooling (`pooling.py`: per
text rather than per row). A padded batch keeps its one-text-a-row mask and pooling, which are cheaper
and compute exactly what they always have.
"""

from __future__ import annotations

from typing import Optional

import flax.struct
import jax.numpy as jnp


@flax.struct.dataclass
class Tokens:
  """Rows of tokens [rows, length] and what the model needs to know of their texts.

  Attributes:
    input_ids: int32 token ids.
    attention_mask: 1 on text tokens, 0 on padding.
    segment_ids: int32, the text each token belongs to: 1 / 0 in a padded row, the text's id in packed rows.
    position_ids: int32, each token's place in its text.
    token_type_ids: BERT's segment embeddings' ids, or None (zeros).
    num_texts: texts in the batch (static): the rows when padded.
    packed: several texts a row (static).
  """
  input_ids: jnp.ndarray
  attention_mask: jnp.ndarray
  segment_ids: jnp.ndarray
  position_ids: jnp.ndarray
  token_type_ids: Optional[jnp.ndarray] = None
  num_texts: int = flax.struct.field(pytree_node=False, default=0)
  packed: bool = flax.struct.field(pytree_node=False, default=False)

  @classmethod
  def padded(cls, input_ids, attention_mask=None, token_type_ids=None) -> "Tokens":
    """One text a row; no mask means no padding."""
    mask = jnp.ones_like(input_ids) if attention_mask is None else attention_mask
    positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1])[None, :], input_ids.shape)
    return cls(input_ids, mask, (mask > 0).astype(jnp.int32), positions, token_type_ids,
               num_texts=int(input_ids.shape[0]), packed=False)

  @classmethod
  def packed_rows(cls, input_ids, attention_mask, segment_ids, position_ids, num_texts: int,
                  token_type_ids=None) -> "Tokens":
    """Texts end to end in rows (`data/packing.py`)."""
    if position_ids is None or num_texts is None:
      raise ValueError("packed rows need position_ids and num_texts with their segment_ids")
    mask = (segment_ids < num_texts).astype(jnp.int32) if attention_mask is None else attention_mask
    return cls(input_ids, mask, segment_ids, position_ids, token_type_ids, num_texts=int(num_texts), packed=True)

  @classmethod
  def of(cls, input_ids, attention_mask=None, token_type_ids=None, segment_ids=None, position_ids=None,
         num_texts: Optional[int] = None) -> "Tokens":
    """From loose arrays: packed rows when `segment_ids` is given, else padded ones."""
    if segment_ids is None:
      return cls.padded(input_ids, attention_mask, token_type_ids)
    return cls.packed_rows(input_ids, attention_mask, segment_ids, position_ids, num_texts, token_type_ids)

  @property
  def shape(self) -> tuple[int, int]:
    return self.input_ids.shape

  @property
  def given_positions(self) -> Optional[jnp.ndarray]:
    """Positions a family must read from the batch (packed rows restart them); None where they are 0, 1,
    2, ... in every row, which a family may compute itself (RoBERTa skips its padding)."""
    return self.position_ids if self.packed else None

  @property
  def packed_segments(self) -> Optional[jnp.ndarray]:
    """The segment ids that keep attention within a text: None for one text a row (the mask does)."""
    return self.segment_ids if self.packed else None
