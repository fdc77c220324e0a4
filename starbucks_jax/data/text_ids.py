"""Text identities for clean in-batch negatives (`data.clean_negatives`): one int32 per text of a batch.

A text that is a query's positive must not count as one of its negatives when it turns up again in the
batch: another example with the same positive (SNLI premises with several hypotheses, a SciFact abstract
cited by several claims), a hard negative equal to the positive, or another example of the same query
text. The loss can only tell such texts apart from real negatives if it knows which texts are equal, so
with `data.clean_negatives` the SRL data add to each batch

    query_text_ids     int32 [b]       the identity of each query
    passage_text_ids   int32 [b * G]   the identity of each passage (same order as the passages)

in both the padded and the packed layout (values per text, split like labels by micro-batches and over
devices). The identity is a hash of the exact text after its prompt (a passage: title + " " + text, as
the model reads it): equal texts get equal ids on every host and in every step. Two different texts
share an id with probability 2^-32 per pair; such a collision masks one real negative, nothing worse.
Texts that differ only past the max length are different texts here. `losses/negatives.py` turns the
ids into the mask. Without the setting the batch has no such keys, and the loss is what it was.
"""

from __future__ import annotations

import hashlib
from typing import Mapping, Sequence

import numpy as np

QUERY_KEY, PASSAGE_KEY = "query_text_ids", "passage_text_ids"


def text_id(text: str) -> int:
  """A stable signed 32-bit identity of `text` (blake2b of its UTF-8 bytes; Python's hash() is salted)."""
  return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=4).digest(), "little", signed=True)


def text_ids(texts: Sequence[str]) -> np.ndarray:
  return np.asarray([text_id(text) for text in texts], np.int32)


def batch_text_ids(queries: Sequence[str], passages: Sequence[str]) -> dict[str, np.ndarray]:
  """The batch keys of a host's queries and passages (texts as the model reads them, prompts included)."""
  return {QUERY_KEY: text_ids(queries), PASSAGE_KEY: text_ids(passages)}


def same_passage(a: Mapping, b: Mapping) -> bool:
  """Whether two Tevatron passages are one: the same docid, or the same title and text (filling groups)."""
  if a.get("docid") and a.get("docid") == b.get("docid"):
    return True
  return a["text"] == b["text"] and (a.get("title") or "") == (b.get("title") or "")
