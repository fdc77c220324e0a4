"""Text identities for clean in-batch negatives (`data.clean_negatives`): an int32 per text of a batch.

A text that is a query's positive must not count as one of its negatives when it turns up again in the
batch: another example with the same positive (SNLI premises with several hypotheses, a SciFact abstract
cited by several claims), a hard negative equal to the positive, or another example of the same query
text. The loss can only tell such texts apart from real negatives if it knows which texts are equal, so
with `data.clean_negatives` the SRL data add to each batch

    query_text_ids          int32 [b]       the identity of each query
    passage_text_ids        int32 [b * G]   the identity of each passage (same order as the passages)
    labelled_positive_ids   int32 [b, P]    the identities of each query's labelled positives

in both the padded and the packed layout (values per query or text, split like labels by micro-batches and
over devices). A query's labelled positives are every positive its row lists (Tevatron's
`positive_passages`: a claim citing several abstracts trains with one of them a group, and the others must
not be its negatives either), or its one positive (pairs, triplets). P is fixed for the run: the most
positives a row of the table has (`labelled_width`, from the counts taken when the table is opened; lazy
Parquet shards count nothing at start: `UNCOUNTED_WIDTH`), so every batch and host has one shape. A row
with fewer repeats its last id, which masks nothing new.

The identity is a hash of the exact text after its prompt (a passage: title + " " + text, as the model
reads it): equal texts get equal ids on every host and in every step. Two different texts share an id
with probability 2^-32 per pair; such a collision masks one real negative, nothing worse. Texts that
differ only past the max length are different texts here. `losses/negatives.py` turns the ids into the
mask. Without the setting the batch has no such keys, and the loss is what it was.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from typing import Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

QUERY_KEY, PASSAGE_KEY, LABELLED_KEY = "query_text_ids", "passage_text_ids", "labelled_positive_ids"
# Labelled positives a row can carry when the table does not count them at start (lazy Parquet shards: the
# count would read every row); a row with more keeps its first this many, with a warning.
UNCOUNTED_WIDTH = 16


def text_id(text: str) -> int:
  """A stable signed 32-bit identity of `text` (blake2b of its UTF-8 bytes; Python's hash() is salted)."""
  return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=4).digest(), "little", signed=True)


def text_ids(texts: Sequence[str]) -> np.ndarray:
  return np.asarray([text_id(text) for text in texts], np.int32)


def labelled_width(counts: np.ndarray | None) -> int:
  """P: the most labelled positives of a row (`counts`: each row's, or None where the table did not count)."""
  return UNCOUNTED_WIDTH if counts is None else max(1, int(np.max(counts, initial=1)))


def labelled_ids(positives: Sequence[Sequence[str]], width: int) -> np.ndarray:
  """int32 [rows, width]: each row's distinct positive texts' ids, in order, the last repeated to `width`."""
  out = np.empty((len(positives), width), np.int32)
  for row, texts in enumerate(positives):
    ids = list(dict.fromkeys(text_id(text) for text in texts))
    if len(ids) > width:
      _warn_once(width)
    out[row] = (ids + ids[-1:] * width)[:width]
  return out


@functools.cache
def _warn_once(width: int) -> None:
  log.warning("a query has more than %d labelled positives (a table not counted at start): clean negatives "
              "see its first %d", width, width)


def widen(ids: np.ndarray, width: int) -> np.ndarray:
  """`labelled_ids` rows padded to `width` as they pad themselves (a mixed batch joins sources' widths)."""
  return np.pad(ids, ((0, 0), (0, width - ids.shape[1])), mode="edge")


def batch_text_ids(queries: Sequence[str], passages: Sequence[str], positives: Sequence[Sequence[str]],
                   width: int) -> dict[str, np.ndarray]:
  """The batch keys of a host's queries, passages and each query's labelled positives (texts as the model
  reads them, prompts included), `width` labelled positives a query."""
  return {QUERY_KEY: text_ids(queries), PASSAGE_KEY: text_ids(passages), LABELLED_KEY: labelled_ids(positives, width)}


def same_passage(a: Mapping, b: Mapping) -> bool:
  """Whether two Tevatron passages are one: the same docid, or the same title and text (filling groups)."""
  if a.get("docid") and a.get("docid") == b.get("docid"):
    return True
  return a["text"] == b["text"] and (a.get("title") or "") == (b.get("title") or "")
