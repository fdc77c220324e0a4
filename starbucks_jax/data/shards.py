"""What every lazily read source shares: shards listed at open, rows read on demand and checked as they are read.

A lazy table (`parquet_shards.ParquetShards`, `jsonl_shards.JsonLinesShards`, `array_record_shards.
ArrayRecordShards`; `shard_formats.py` picks one) opens knowing only its shards' row counts and columns (from
footers or indexes: no rows are read), so that each host then reads just the rows of its share of a batch.
A format supplies `_take(indices, columns)`, the rows asked for, and `_chunks()`, the row ranges the full
pass reads at a time; this base class does the rest:

- `read` validates the rows it returns with the rules `check` kept (Arrow kernels where the format gives an
  Arrow table, else a Python check of just those rows). A bad row raises one StarbucksError naming the shard
  and its row (from 1, in that file), or with `bad_rows="skip"` is replaced by the next good row after it
  (wrapping at the end), so that a batch stays a function of (seed, step).
- `check_every_row` is the full offline pass (`python -m starbucks_jax.check`).
- `bytes_read` counts every byte a format fetched (footers and indexes included), where it can count them.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import os
import threading
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa

from starbucks_jax import storage
from starbucks_jax.data.checks import OPTIONAL_PASSAGES, PASSAGES, arrow_check, python_check, value_problem
from starbucks_jax.errors import StarbucksError

log = logging.getLogger(__name__)

READ_THREADS = 16                # pieces (row groups, blocks, footers) fetched at once
CACHE_BYTES = 256 << 20          # fetched pieces kept for later reads
MAX_SKIPPED_IN_A_ROW = 1000      # bad_rows="skip": consecutive bad rows before giving up
BAD_ROWS = ("error", "skip")


class ByteCount:
  """A thread-safe byte counter (reads run in a pool)."""

  def __init__(self):
    self.value, self._lock = 0, threading.Lock()

  def add(self, n: int) -> None:
    with self._lock:
      self.value += n


class PieceCache:
  """The last fetched pieces of shards (decoded row groups, raw blocks), up to `limit` bytes, most recent kept."""

  def __init__(self, limit: int = CACHE_BYTES):
    self.limit, self._pieces, self._bytes, self._lock = limit, collections.OrderedDict(), 0, threading.Lock()

  def get(self, key, fetch: Callable[[], object], size: Callable[[object], int]):
    with self._lock:
      if key in self._pieces:
        self._pieces.move_to_end(key)
        return self._pieces[key]
    piece = fetch()  # outside the lock: pieces are fetched in parallel
    with self._lock:
      if key not in self._pieces:
        self._pieces[key] = piece
        self._bytes += size(piece)
      while self._bytes > self.limit and len(self._pieces) > 1:
        self._bytes -= size(self._pieces.popitem(last=False)[1])
    return piece


@dataclasses.dataclass
class Taken:
  """Rows a format read: {column: [value per row]}, the same rows as an Arrow table where the format has one
  (fast checks), and {position: problem} for rows that could not even be decoded (bad JSON, say)."""
  values: dict[str, list]
  table: pa.Table | None = None
  problems: dict[int, str] = dataclasses.field(default_factory=dict)


def is_pattern(part: str) -> bool:
  """Whether a source names several files: a glob, or a folder ending in "/"."""
  return any(c in part for c in storage.GLOB_CHARACTERS) or part.endswith("/")


def shard_files(pattern: str, extensions: tuple[str, ...], what: str) -> list[tuple[str, int]]:
  """(path, size) of the shards `pattern` names (a glob, a folder ending in "/", or one file) whose names end
  in one of `extensions`."""
  if is_pattern(pattern):
    files = [(p, s) for p, s in storage.matching_files(pattern, "data source") if p.endswith(extensions)]
    if not files:
      raise StarbucksError(f"data source {pattern} holds no {what} file ({', '.join(extensions)})")
    return files
  if storage.is_remote(pattern):
    return [(pattern, storage.remote_size(pattern, "data file"))]
  if not os.path.isfile(pattern):
    raise StarbucksError(f"data file {pattern} does not exist")
  return [(pattern, os.path.getsize(pattern))]


class LazyShards:
  """Rows of shards read on demand (module docstring), a `sources.Table`; a format subclasses it and calls
  `_opened` when its shards' row counts and columns are known."""
  bad_rows: str = "error"

  def _opened(self, name: str, files, shard_rows: list[int], columns, limit: int | None, bad_rows: str) -> None:
    if bad_rows not in BAD_ROWS:
      raise StarbucksError(f"data.bad_rows must be 'error' or 'skip', got {bad_rows!r}")
    self.name, self.files, self.columns, self.bad_rows = name, list(files), tuple(columns), bad_rows
    self.total_bytes = sum(size for _, size in self.files)
    self._shard_starts = np.cumsum([0] + list(shard_rows))
    total = int(self._shard_starts[-1])
    self._len = total if limit is None else min(limit, total)
    self._checks: dict[str, str] = {}
    self._skipped: set[int] = set()

  def _take(self, indices: np.ndarray, columns: tuple[str, ...]) -> Taken:
    """The rows `indices` (global, in that order) of `columns`."""
    raise NotImplementedError

  def _chunks(self) -> Iterable[tuple[int, int]]:
    """(start, stop) row ranges that cover the table, each cheap to read whole (a row group, a block)."""
    raise NotImplementedError

  @property
  def bytes_read(self) -> int | None:
    """Bytes fetched from the shards so far; None where the format's reader does not say."""
    count = getattr(self, "_count", None)
    return None if count is None else count.value

  def __len__(self) -> int:
    return self._len

  def parts(self):
    return [self]

  def check(self, checks):
    """Keeps the rules for every later `read` (the columns were checked at open); returns no passage counts:
    they would need every row."""
    self._checks = dict(checks)
    return {}

  def _where(self, row: int) -> tuple[str, int]:
    """(shard path, row number within that shard from 0) of a global row, for messages."""
    k = int(np.searchsorted(self._shard_starts, row, side="right") - 1)
    return self.files[k][0], row - int(self._shard_starts[k])

  def _in_range(self, indices: np.ndarray) -> None:
    if len(indices) and (indices.min() < 0 or indices.max() >= self._len):
      raise IndexError(f"{self.name}: rows {indices.min()}..{indices.max()} outside 0..{self._len - 1}")

  def _bad_rows(self, taken: Taken) -> dict[int, str]:
    """{position: "column 'c': problem"} of the rows read that break a rule (`check`) or did not decode."""
    bad = dict(taken.problems)
    for column, check in self._checks.items():
      if column not in taken.values:
        continue
      if taken.table is not None:
        found = arrow_check(taken.table.column(column), check)
        if found is not None and found[0] is None:
          continue  # the kernels found nothing wrong: the usual case, no Python loop
      for position, value in enumerate(taken.values[column]):
        problem = None if position in bad else value_problem(value, check)
        if problem:
          bad[position] = f"column {column!r}: {problem}"
    return bad

  def _read_checked(self, indices: np.ndarray, columns: tuple[str, ...]):
    self._in_range(indices)
    taken = self._take(indices, columns)
    return taken.values, self._bad_rows(taken)

  def read(self, indices, columns):
    indices, columns = np.asarray(list(indices) if isinstance(indices, range) else indices, np.int64), tuple(columns)
    values, bad = self._read_checked(indices, columns)
    for position in sorted(bad):
      row = int(indices[position])
      path, in_file = self._where(row)
      if self.bad_rows == "error":
        raise StarbucksError(f"{path}: row {in_file + 1}, {bad[position]} (met while training; the checkpoints "
                             f"already saved are kept; data.bad_rows='skip' reads the next good row instead)")
      replacement = self._next_good(row, columns)
      for c in columns:
        values[c][position] = replacement[c]
      if row not in self._skipped:
        self._skipped.add(row)
        log.warning("%s: row %d, %s: skipped (data.bad_rows='skip'), row %d of %s read in its place", path,
                    in_file + 1, bad[position], replacement["_row"] + 1, self.name)
    return values

  def _next_good(self, row: int, columns: tuple[str, ...]) -> dict:
    for k in range(1, min(MAX_SKIPPED_IN_A_ROW, self._len)):
      candidate = (row + k) % self._len
      values, bad = self._read_checked(np.asarray([candidate]), columns)
      if not bad:
        return {**{c: values[c][0] for c in columns}, "_row": candidate}
    raise StarbucksError(f"{self.name}: no good row among the {MAX_SKIPPED_IN_A_ROW} after row {row + 1}")

  def check_every_row(self, checks):
    """Validates every row, a chunk at a time (Arrow kernels where the format gives Arrow tables); returns
    {passages column: passage count per row} like `Table.check`."""
    self._checks = dict(checks)
    columns = tuple(checks)
    lengths = {c: [] for c, k in checks.items() if k in (PASSAGES, OPTIONAL_PASSAGES)}
    for start, stop in self._chunks():
      if start >= self._len:
        break
      stop = min(stop, self._len)
      taken = self._take(np.arange(start, stop), columns)
      if taken.problems:
        self._raise_at(start + min(taken.problems), taken.problems[min(taken.problems)])
      for column, check in checks.items():
        found = None if taken.table is None else arrow_check(taken.table.column(column), check)
        if found is None:
          found = python_check(iter(taken.values[column]), check, stop - start)
        if found[0] is not None:
          self._raise_at(start + found[0][0], f"column {column!r}: {found[0][1]}")
        if column in lengths:
          lengths[column].append(found[1])
    return {c: np.concatenate(v) if v else np.zeros(0, np.int64) for c, v in lengths.items()}

  def _raise_at(self, row: int, problem: str):
    path, in_file = self._where(row)
    raise StarbucksError(f"{path}: row {in_file + 1}, {problem}")


def read_pool() -> concurrent.futures.ThreadPoolExecutor:
  return concurrent.futures.ThreadPoolExecutor(READ_THREADS, thread_name_prefix="shards")
