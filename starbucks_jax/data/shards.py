"""Parquet shards read lazily, on a disk or in a bucket: footers at start, then only the row groups of the rows read.

    table = ParquetShards("gs://bucket/allnli/*.parquet")   # a glob, a folder ("gs://bucket/allnli/") or one file
    len(table)                                               # from the footers: no data read yet
    table.read([17, 4242], ["anchor", "positive"])           # the row groups of rows 17 and 4242, two columns

Opening reads each shard's footer (two ranged requests: its length, then the metadata; shards in parallel),
so the number of rows and the columns are known without reading any data. `read` maps global row numbers
to (shard, row group), reads just those row groups' needed columns (in parallel, through a small cache of
decoded row groups) and returns the rows; a host reads only the row groups its own rows fall in. Parquet
cannot read a single row: every row of a batch read costs its row group, so shards meant for random
access want small row groups (about 1k-10k rows; `pyarrow.parquet.write_table(..., row_group_size=...)`).
`bytes_read` counts every byte fetched (footers included).

Checks: `check` at start sees only the metadata (the columns each shard has) and keeps the rules; every
`read` then validates the rows it returns with them (Arrow kernels, `checks.py`). A bad row raises one
StarbucksError naming the shard and its row (from 1, in that file), or with `bad_rows="skip"` is replaced
by the next good row after it (wrapping at the end), so a batch stays a function of (seed, step).
`check_every_row` is the full offline pass (`python -m starbucks_jax.check`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import io
import logging
import os
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from starbucks_jax import storage
from starbucks_jax.data.checks import OPTIONAL_PASSAGES, PASSAGES, arrow_check, python_check, value_problem
from starbucks_jax.errors import StarbucksError

log = logging.getLogger(__name__)

READ_THREADS = 16                # row groups (and footers) fetched at once
CACHE_BYTES = 256 << 20          # decoded row groups kept for later reads
LARGE_ROW_GROUP = 100_000        # rows per group above which opening warns: each row read costs its group
MAX_SKIPPED_IN_A_ROW = 1000      # bad_rows="skip": consecutive bad rows before giving up
BAD_ROWS = ("error", "skip")


class _ByteCount:
  def __init__(self):
    self.value, self._lock = 0, threading.Lock()

  def add(self, n: int) -> None:
    with self._lock:
      self.value += n


class _RangeFile(io.RawIOBase):
  """A read-only file whose every read is one ranged request (`storage.read_range`), counted."""

  def __init__(self, path: str, size: int, count: _ByteCount):
    super().__init__()
    self.path, self.size, self.count, self.position = path, size, count, 0

  def readable(self):
    return True

  def seekable(self):
    return True

  def tell(self):
    return self.position

  def seek(self, offset, whence=io.SEEK_SET):
    self.position = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence] + offset
    return self.position

  def readinto(self, buffer):
    end = min(self.position + len(buffer), self.size)
    if end <= self.position:
      return 0
    data = storage.read_range(self.path, self.position, end)
    self.count.add(len(data))
    buffer[:len(data)] = data
    self.position += len(data)
    return len(data)


def _footer(path: str, size: int, count: _ByteCount) -> pq.FileMetaData:
  """A shard's metadata, from its last 8 bytes and then the footer they give the length of."""
  if size < 12:
    raise StarbucksError(f"{path}: not a Parquet file ({size} bytes)")
  tail = storage.read_range(path, size - 8, size)
  if tail[4:] != b"PAR1":
    raise StarbucksError(f"{path}: not a Parquet file (it does not end in PAR1)")
  length = int.from_bytes(tail[:4], "little")
  if length > size - 12:
    raise StarbucksError(f"{path}: damaged Parquet footer (length {length} in a file of {size} bytes)")
  meta = storage.read_range(path, size - 8 - length, size - 8)
  count.add(len(tail) + len(meta))
  try:
    return pq.read_metadata(pa.py_buffer(b"PAR1" + meta + tail))
  except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... for a damaged footer
    raise StarbucksError(f"{path}: damaged Parquet footer: {e}") from None


def shard_files(pattern: str) -> list[tuple[str, int]]:
  """(path, size) of the Parquet shards `pattern` names: a glob, a folder ending in "/", or one file."""
  if any(c in pattern for c in storage.GLOB_CHARACTERS) or pattern.endswith("/"):
    files = [(p, s) for p, s in storage.matching_files(pattern, "data source") if p.endswith(".parquet")]
    if not files:
      raise StarbucksError(f"data source {pattern} holds no .parquet file")
    return files
  if storage.is_remote(pattern):
    return [(pattern, storage.remote_size(pattern, "data file"))]
  if not os.path.isfile(pattern):
    raise StarbucksError(f"data file {pattern} does not exist")
  return [(pattern, os.path.getsize(pattern))]


class ParquetShards:
  """The rows of Parquet shards, read lazily (module docstring); a `sources.Table`."""

  def __init__(self, pattern: str, *, limit: int | None = None, bad_rows: str = "error"):
    if bad_rows not in BAD_ROWS:
      raise StarbucksError(f"data.bad_rows must be 'error' or 'skip', got {bad_rows!r}")
    self.name, self.bad_rows = pattern, bad_rows
    self.files = shard_files(pattern)
    self.total_bytes = sum(size for _, size in self.files)
    self._count = _ByteCount()
    self._pool = concurrent.futures.ThreadPoolExecutor(READ_THREADS, thread_name_prefix="parquet")
    self._metadata = list(self._pool.map(lambda f: _footer(f[0], f[1], self._count), self.files))
    self.columns = self._shared_columns()
    rows = [(k, g, m.row_group(g).num_rows) for k, m in enumerate(self._metadata) for g in range(m.num_row_groups)]
    self._group_shard = np.asarray([k for k, _, _ in rows], np.int64)
    self._group_index = np.asarray([g for _, g, _ in rows], np.int64)
    self._group_starts = np.cumsum([0] + [n for _, _, n in rows])
    self._shard_starts = np.cumsum([0] + [m.num_rows for m in self._metadata])
    self._len = int(self._group_starts[-1]) if limit is None else min(limit, int(self._group_starts[-1]))
    self._checks: dict[str, str] = {}
    self._cache: collections.OrderedDict = collections.OrderedDict()
    self._cache_bytes, self._lock, self._skipped = 0, threading.Lock(), set()
    biggest = max((n for _, _, n in rows), default=0)
    if biggest > LARGE_ROW_GROUP:
      log.warning("%s: row groups of up to %d rows; each row read costs its whole row group, so random "
                  "access wants shards written with row groups of about 1k-10k rows", pattern, biggest)
    log.info("%s: %d rows in %d shard(s), %d row group(s); %d bytes read to open (footers) of %d", pattern,
             self._len, len(self.files), len(rows), self.bytes_read, self.total_bytes)

  def _shared_columns(self) -> tuple[str, ...]:
    first = self._metadata[0].schema.to_arrow_schema().names
    for (path, _), metadata in zip(self.files[1:], self._metadata[1:]):
      names = metadata.schema.to_arrow_schema().names
      if set(names) != set(first):
        raise StarbucksError(f"{path}: its columns {sorted(names)} differ from those of {self.files[0][0]} "
                             f"({sorted(first)}); every shard of {self.name} must have the same columns")
    return tuple(first)

  @property
  def bytes_read(self) -> int:
    """Bytes fetched from the shards so far (footers and row groups)."""
    return self._count.value

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
    """(shard path, row number within that shard from 0) of a global row."""
    k = int(np.searchsorted(self._shard_starts, row, side="right") - 1)
    return self.files[k][0], row - int(self._shard_starts[k])

  def _row_group(self, group: int, columns: tuple[str, ...]) -> pa.Table:
    key = (group, columns)
    with self._lock:
      if key in self._cache:
        self._cache.move_to_end(key)
        return self._cache[key]
    k = int(self._group_shard[group])
    path, size = self.files[k]
    try:
      file = pq.ParquetFile(_RangeFile(path, size, self._count), metadata=self._metadata[k])
      table = file.read_row_group(int(self._group_index[group]), columns=list(columns))
    except Exception as e:  # noqa: BLE001 - Arrow and the store raise many kinds: all mean "unreadable"
      raise StarbucksError(f"{path}: cannot read row group {int(self._group_index[group])}: {type(e).__name__}: "
                           f"{' '.join(str(e).split())[:300]}") from None
    with self._lock:
      self._cache[key] = table
      self._cache_bytes += table.nbytes
      while self._cache_bytes > CACHE_BYTES and len(self._cache) > 1:
        self._cache_bytes -= self._cache.popitem(last=False)[1].nbytes
    return table

  def _take(self, indices: np.ndarray, columns: tuple[str, ...]) -> pa.Table:
    """The rows `indices` (global, in that order) of `columns`, as one Arrow table."""
    if len(indices) and (indices.min() < 0 or indices.max() >= self._len):
      raise IndexError(f"{self.name}: rows {indices.min()}..{indices.max()} outside 0..{self._len - 1}")
    groups = np.searchsorted(self._group_starts, indices, side="right") - 1
    unique = np.unique(groups)
    tables = list(self._pool.map(lambda g: self._row_group(int(g), columns), unique))
    pieces, order = [], []
    for g, table in zip(unique, tables):
      positions = np.flatnonzero(groups == g)
      pieces.append(table.take(pa.array(indices[positions] - self._group_starts[g])))
      order.append(positions)
    if not pieces:
      return pa.table({c: pa.array([], pa.string()) for c in columns})
    taken = pa.concat_tables(pieces)
    return taken.take(pa.array(np.argsort(np.concatenate(order), kind="stable")))

  def _bad_rows(self, table: pa.Table, values: dict[str, list]) -> dict[int, str]:
    """{position: "column 'c': problem"} of the rows read that break a rule (`check`)."""
    bad = {}
    for column, check in self._checks.items():
      if column not in values:
        continue
      found = arrow_check(table.column(column), check)
      if found is not None and found[0] is None:
        continue  # the kernels found nothing wrong: the usual case, no Python loop
      for position, value in enumerate(values[column]):
        problem = value_problem(value, check)
        if problem and position not in bad:
          bad[position] = f"column {column!r}: {problem}"
    return bad

  def _read_checked(self, indices: np.ndarray, columns: tuple[str, ...]):
    table = self._take(indices, columns)
    values = {c: table.column(c).to_pylist() for c in columns}
    return values, self._bad_rows(table, values)

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
    """Validates every row, a row group at a time with the Arrow kernels (reading every byte of the needed
    columns once); returns {passages column: passage count per row} like `Table.check`."""
    self._checks = dict(checks)
    columns = list(checks)
    lengths = {c: [] for c, k in checks.items() if k in (PASSAGES, OPTIONAL_PASSAGES)}
    for group in range(len(self._group_index)):
      start = int(self._group_starts[group])
      if start >= self._len:
        break
      table = self._row_group(group, tuple(columns)).slice(0, self._len - start)
      for column, check in checks.items():
        found = arrow_check(table.column(column), check)
        if found is None:
          found = python_check(iter(table.column(column).to_pylist()), check, len(table))
        if found[0] is not None:
          path, in_file = self._where(start + found[0][0])
          raise StarbucksError(f"{path}: row {in_file + 1}, column {column!r}: {found[0][1]}")
        if column in lengths:
          lengths[column].append(found[1])
    return {c: np.concatenate(v) if v else np.zeros(0, np.int64) for c, v in lengths.items()}
