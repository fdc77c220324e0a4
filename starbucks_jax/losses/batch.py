"""The typed training batch: what the tasks, the losses and GradCache read of a batch, in one layout.

The data give the step a dict of arrays, in one of two forms: padded rows, one text a row, with each
side of an SRL example in arrays of its own (`data/srl.py`, `data/smae.py`); or packed rows, several texts
a row (`data/packing.py`). This module is the one place that reads those keys. `SrlBatch.of` and
`SmaeBatch.of` turn either form into encoder inputs that always carry segment ids and positions
(`model/tokens.Tokens`: a padded batch is one text a row), and `micro_batches` splits either form. Nothing
above asks which form a batch came in: the layout's one static difference is `Tokens.packed`, which the
model reads (attention and pooling), and GradCache, whose chunks of packed rows must hold whole packing
groups (`training/grad_cache.py`).
"""

from __future__ import annotations

from typing import Mapping, Optional

import flax.struct
import jax.numpy as jnp

from starbucks_jax.data import packing, text_ids
from starbucks_jax.losses import negatives
from starbucks_jax.model.tokens import Tokens


@flax.struct.dataclass
class TextPass:
  """The texts of one encoder pass, and how many of them each side holds.

  Attributes:
    tokens: the pass's rows (padded: one text a row; packed: texts numbered over the pass).
    side_texts: texts per side, in the pass's order (queries, then passages; or one side alone); static.
  """
  tokens: Tokens
  side_texts: tuple = flax.struct.field(pytree_node=False, default=())

  def side_rows(self) -> list[slice]:
    """Each side's texts in the pass: rows of a padded pass, vectors of any pass."""
    starts = [sum(self.side_texts[:i]) for i in range(len(self.side_texts))]
    return [slice(start, start + texts) for start, texts in zip(starts, self.side_texts)]

  def sides(self, vectors: dict) -> list[dict]:
    """{layer: [texts, hidden]} of the whole pass -> one such dict per side."""
    return [{layer: v[rows] for layer, v in vectors.items()} for rows in self.side_rows()]


@flax.struct.dataclass
class SrlBatch:
  """An SRL batch: its encoder passes, which hold the queries' texts and then the passages'.

  One pass when queries and passages are padded to one length (rows of both in one array, passage rows
  numbered on from the queries') or packed (one set of rows); otherwise two, the queries' and the
  passages'. `labels`: the scored pairs' scores (CoSENT), or None. `query_text_ids`, `passage_text_ids`,
  `labelled_positive_ids`: each text's identity and each query's labelled positives' with
  `data.clean_negatives` (`data/text_ids.py`), else None.
  """
  passes: tuple
  labels: Optional[jnp.ndarray] = None
  query_text_ids: Optional[jnp.ndarray] = None
  passage_text_ids: Optional[jnp.ndarray] = None
  labelled_positive_ids: Optional[jnp.ndarray] = None

  @classmethod
  def of(cls, batch: Mapping) -> "SrlBatch":
    queries, passages = examples(batch), _passages(batch)
    per_text = dict(labels=batch.get("labels"), query_text_ids=batch.get(text_ids.QUERY_KEY),
                    passage_text_ids=batch.get(text_ids.PASSAGE_KEY),
                    labelled_positive_ids=batch.get(text_ids.LABELLED_KEY))
    if packing.is_packed(batch):
      tokens = Tokens.packed_rows(batch["input_ids"], batch["attention_mask"], batch["segment_ids"],
                                  batch["position_ids"], num_texts=queries + passages)
      return cls((TextPass(tokens, (queries, passages)),), **per_text)
    query_ids, passage_ids = batch["query_input_ids"], batch["passage_input_ids"]
    if query_ids.shape[1] == passage_ids.shape[1]:
      tokens = Tokens.padded(jnp.concatenate([query_ids, passage_ids]),
                             jnp.concatenate([batch["query_attention_mask"], batch["passage_attention_mask"]]))
      return cls((TextPass(tokens, (queries, passages)),), **per_text)
    return cls((TextPass(Tokens.padded(query_ids, batch["query_attention_mask"]), (queries,)),
                TextPass(Tokens.padded(passage_ids, batch["passage_attention_mask"]), (passages,))), **per_text)

  def false_negatives(self, group_size: int) -> Optional[jnp.ndarray]:
    """bool [queries, passages]: each query's in-batch false negatives (`negatives.py`); None without ids."""
    if self.passage_text_ids is None:
      return None
    return negatives.false_negatives(self.query_text_ids, self.passage_text_ids, group_size,
                                     self.labelled_positive_ids)


@flax.struct.dataclass
class SmaeBatch:
  """An SMAE batch: the masked texts, their labels, and the MAE decoder's input and labels (or None).

  Attributes:
    tokens: the encoder input; labels: [rows, length], -100 where nothing is predicted.
    decoder_input_ids, decoder_labels: the same layout (mode "smae"), or None.
  """
  tokens: Tokens
  labels: jnp.ndarray
  decoder_input_ids: Optional[jnp.ndarray] = None
  decoder_labels: Optional[jnp.ndarray] = None

  @classmethod
  def of(cls, batch: Mapping) -> "SmaeBatch":
    if packing.is_packed(batch):
      tokens = Tokens.packed_rows(batch["input_ids"], batch["attention_mask"], batch["segment_ids"],
                                  batch["position_ids"], num_texts=examples(batch))
    else:
      tokens = Tokens.padded(batch["input_ids"], batch["attention_mask"])
    return cls(tokens, batch["labels"], batch.get("decoder_input_ids"), batch.get("decoder_labels"))

  @staticmethod
  def layout_keys(batch: Mapping) -> tuple[str, ...]:
    """The keys a batch of its form needs besides the texts and labels: packed rows' ids and lengths."""
    return ("segment_ids", "position_ids", "text_lengths") if packing.is_packed(batch) else ()


def examples(batch: Mapping) -> int:
  """Examples in a batch: its queries (SRL; CoSENT: first sentences) or its texts (SMAE)."""
  for key in ("query_lengths", "query_input_ids", "text_lengths", "input_ids"):  # packed rows' first
    if key in batch:
      return int(batch[key].shape[0])
  raise KeyError(f"a batch with none of the known example arrays: {sorted(batch)}")


def _passages(batch: Mapping) -> int:
  return int(batch["passage_lengths" if packing.is_packed(batch) else "passage_input_ids"].shape[0])


def micro_batches(batch: Mapping, count: int) -> dict:
  """[rows, ...] -> [count, rows / count, ...], keeping each example's passages with it.

  Micro-batch k takes rows k, k + count, k + 2 count, ...: a strided split keeps every device's share
  of each micro-batch on that device, where a contiguous split would move data between devices. An
  array of G x examples rows holds G rows per example. Packed batches come with their rows in `count`
  interleaved groups (`data/packing.py`): micro-batch k takes group k's rows, and the per-text arrays
  (lengths, scores) split as above.
  """
  queries = examples(batch)

  def split(x):
    group = x.shape[0] // queries  # passages per query (1 for query-side arrays and labels)
    x = x.reshape((queries // count, count, group) + x.shape[1:])
    x = jnp.swapaxes(x, 0, 1)
    return x.reshape((count, (queries // count) * group) + x.shape[3:])

  # A query's labelled positives are [queries, P]: a value per query, whatever its shape.
  rows = {k for k in batch if packing.is_row_array(batch, k) and k != text_ids.LABELLED_KEY}
  return {k: packing.split_rows(v, count) if k in rows else split(v) for k, v in batch.items()}
