"""Validation of training rows: every value of every needed column, before any training code compiles.

A column must hold text (a non-blank string), a score (a finite number) or passages (a list of
{docid, title, text} dicts with non-blank text; at least one where they are the positives). A bad value
found here becomes an error naming the file, the row and the column, instead of a failure deep inside a
compiled training step. `arrow_check` checks Arrow columns with Arrow kernels, chunk by chunk;
`python_check` and `value_problem` look at plain Python values (TFDS records, or Arrow types the
kernels do not cover). `plain` and `as_passages` turn TFDS values into the shapes the checks expect.
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# What a column must hold.
TEXT, SCORE, PASSAGES, OPTIONAL_PASSAGES = "text", "score", "passages", "optional passages"


UTF8_CHUNK = 16 << 20  # bytes decoded at a time


def utf8_problem(path: str | Path) -> str | None:
  """"line N, column C: byte 0xff is not UTF-8" for the first undecodable byte of a text file, else None.

  Read in chunks through an incremental decoder, so a file of any size costs one pass and little memory."""
  decoder = codecs.getincrementaldecoder("utf-8")()
  offset = 0
  with open(path, "rb") as f:
    while chunk := f.read(UTF8_CHUNK):
      pending = len(decoder.getstate()[0])  # the last chunk's unfinished character, decoded with this one
      try:
        decoder.decode(chunk)
      except UnicodeDecodeError as e:
        bad = offset - pending + e.start
        f.seek(0)
        head = f.read(max(bad, 0))
        line, line_start = head.count(b"\n") + 1, head.rfind(b"\n") + 1
        return f"line {line}, column {bad - line_start + 1}: byte {e.object[e.start]:#04x} is not UTF-8"
      offset += len(chunk)
    try:
      decoder.decode(b"", final=True)
    except UnicodeDecodeError:
      return "the file ends inside a UTF-8 character"
  return None


def plain(value):
  """A TFDS value as plain Python: bytes to str, numpy arrays to lists, numpy scalars to numbers."""
  if isinstance(value, bytes):
    try:
      return value.decode("utf-8")
    except UnicodeDecodeError:
      return value
  if isinstance(value, np.ndarray):
    return [plain(v) for v in value.tolist()] if value.ndim else plain(value.item())
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, dict):
    return {k: plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [plain(v) for v in value]
  return value


def as_passages(value) -> list[dict]:
  """Passages as a list of {docid, title, text} dicts; TFDS gives a dict of lists instead."""
  if value is None:
    return []
  if isinstance(value, dict):
    keys = list(value)
    return [dict(zip(keys, items)) for items in zip(*(value[k] for k in keys))]
  return list(value)


def _text_problem(value) -> str | None:
  if value is None:
    return "missing (null)"
  if not isinstance(value, str):
    return f"expected text, got {type(value).__name__} {value!r:.40}"
  if not value.strip():
    return "empty text"
  return None


def _score_problem(value) -> str | None:
  if value is None:
    return "missing (null)"
  if isinstance(value, bool) or not isinstance(value, (int, float, str)):
    return f"expected a number, got {type(value).__name__} {value!r:.40}"
  try:
    number = float(value)
  except ValueError:
    return f"expected a number, got {value!r:.40}"
  return None if np.isfinite(number) else f"expected a finite number, got {value!r}"


def _passages_problem(value, required: bool) -> str | None:
  if value is not None and not isinstance(value, (list, dict)):
    return f"expected a list of passages {{docid, title, text}}, got {type(value).__name__}"
  passages = as_passages(value)
  if required and not passages:
    return "no positive passage"
  for k, passage in enumerate(passages, 1):
    if not isinstance(passage, dict):
      return f"passage {k}: expected {{docid, title, text}}, got {type(passage).__name__}"
    problem = _text_problem(passage.get("text"))
    if problem:
      return f"passage {k}: 'text' is {problem}" if "text" in passage else f"passage {k}: no 'text'"
    if not isinstance(passage.get("title") or "", str):
      return f"passage {k}: 'title' is not text"
  return None


def value_problem(value, check: str) -> str | None:
  if check == TEXT:
    return _text_problem(value)
  if check == SCORE:
    return _score_problem(value)
  return _passages_problem(value, required=check == PASSAGES)


def python_check(values: Iterable, check: str, count: int):
  """((row, problem) or None, passage counts or None) by looking at every value in Python."""
  lengths = np.zeros(count, np.int64) if check in (PASSAGES, OPTIONAL_PASSAGES) else None
  for row, value in enumerate(values):
    problem = value_problem(value, check)
    if problem:
      return (row, problem), None
    if lengths is not None:
      lengths[row] = len(as_passages(value))
  return None, lengths


def _first(mask) -> int:
  return pc.index(mask, True).as_py()


def _arrow_text(values):
  """(index, problem) of the first null or blank string in a string array, or None."""
  blank = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(values)), 0), True)
  i = _first(blank)
  if i < 0:
    return None
  return i, "missing (null)" if not values[i].is_valid else "empty text"


def _is_string(t: pa.DataType) -> bool:
  return pa.types.is_string(t) or pa.types.is_large_string(t)


def arrow_check(column: pa.ChunkedArray, check: str):
  """Like `python_check` with Arrow kernels, chunk by chunk; None for types it does not cover."""
  kind = column.type
  if check == TEXT and not _is_string(kind):
    return None
  if check == SCORE and not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
    return None
  if check in (PASSAGES, OPTIONAL_PASSAGES) and not _passage_type_ok(kind):
    return None
  lengths, offset = [], 0
  for chunk in column.chunks:
    if check == TEXT:
      bad = _arrow_text(chunk)
    elif check == SCORE:
      bad = _arrow_score(chunk)
    else:
      bad = _arrow_passages(chunk, required=check == PASSAGES)
      lengths.append(pc.fill_null(pc.list_value_length(chunk), 0).to_numpy(zero_copy_only=False))
    if bad is not None:
      return (offset + bad[0], bad[1]), None
    offset += len(chunk)
  if check in (PASSAGES, OPTIONAL_PASSAGES):
    return None, np.concatenate(lengths).astype(np.int64) if lengths else np.zeros(0, np.int64)
  return None, None


def _arrow_score(values):
  if pa.types.is_integer(values.type):
    i = _first(pc.is_null(values))
    return None if i < 0 else (i, "missing (null)")
  i = _first(pc.fill_null(pc.invert(pc.is_finite(values)), True))
  if i < 0:
    return None
  return i, "missing (null)" if not values[i].is_valid else f"expected a finite number, got {values[i]}"


def _passage_type_ok(kind: pa.DataType) -> bool:
  if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)):
    return False
  item = kind.value_type
  if pa.types.is_null(item):  # every list empty (SciFact's negatives)
    return True
  if not pa.types.is_struct(item) or item.get_field_index("text") < 0:
    return False
  title = item.get_field_index("title")
  return _is_string(item.field("text").type) and (title < 0 or _is_string(item.field(title).type))


def _arrow_passages(values, required: bool):
  counts = pc.list_value_length(values)
  if required:
    i = _first(pc.fill_null(pc.equal(counts, 0), True))
    if i >= 0:
      return i, "no positive passage" if values[i].is_valid else "missing (null)"
  flat = values.flatten()
  if len(flat) == 0:
    return None
  parents = pc.list_parent_indices(values).to_numpy()
  if pa.types.is_null(flat.type):
    return int(parents[0]), "passage 1 is null"
  for i, problem in ((_first(pc.is_null(flat)), "is null"),
                     (_first(pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(
                         flat.field("text"))), 0), True)), "has a missing or empty 'text'")):
    if i >= 0:
      row = int(parents[i])
      return row, f"passage {i - int(np.searchsorted(parents, row)) + 1} {problem}"
  return None
