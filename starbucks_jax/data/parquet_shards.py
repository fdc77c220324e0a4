"""Parquet shards read lazily, on a disk or in a bucket: footers at start, then only the row groups of the rows read.

    table = ParquetShards("gs://bucket/allnli/*.parquet")   # a glob, a folder ("gs://bucket/allnli/") or one file
    len(table)                                               # from the footers: no data read yet
    table.read([17, 4242], ["anchor", "positive"])           # the row groups of rows 17 and 4242, two columns

Opening reads each shard's footer (two ranged requests: its length, then the metadata; shards in parallel),
so the number of rows and the columns are known without reading any data. A read maps global row numbers
to (shard, row group), reads just those row groups' needed columns (in parallel, through a small cache of
decoded row groups) and returns the rows; a host reads only the row groups its own rows fall in. Parquet
cannot read a single row: every row of a batch read costs its row group, so shards meant for random
access want small row groups (about 1k-10k rows; `pyarrow.parquet.write_table(..., row_group_size=...)`).
Checks, bad rows and the full pass: `shards.LazyShards`.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from starbucks_jax import storage
from starbucks_jax.data.shards import ByteCount, LazyShards, PieceCache, Taken, read_pool, shard_files
from starbucks_jax.errors import StarbucksError

log = logging.getLogger(__name__)

LARGE_ROW_GROUP = 100_000        # rows per group above which opening warns: each row read costs its group


class _RangeFile(io.RawIOBase):
  """A read-only file whose every read is one ranged request (`storage.read_range`), counted."""

  def __init__(self, path: str, size: int, count: ByteCount):
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


def _footer(path: str, size: int, count: ByteCount) -> pq.FileMetaData:
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


class ParquetShards(LazyShards):
  """The rows of Parquet shards, read lazily (module docstring); a `sources.Table`."""

  def __init__(self, pattern: str, *, limit: int | None = None, bad_rows: str = "error"):
    files = shard_files(pattern, (".parquet",), "Parquet")
    self._count, self._pool, self._cache = ByteCount(), read_pool(), PieceCache()
    self._metadata = list(self._pool.map(lambda f: _footer(f[0], f[1], self._count), files))
    columns = self._shared_columns(pattern, files)
    self._opened(pattern, files, [m.num_rows for m in self._metadata], columns, limit, bad_rows)
    groups = [(k, g, m.row_group(g).num_rows) for k, m in enumerate(self._metadata) for g in range(m.num_row_groups)]
    self._group_shard = np.asarray([k for k, _, _ in groups], np.int64)
    self._group_index = np.asarray([g for _, g, _ in groups], np.int64)
    self._group_starts = np.cumsum([0] + [n for _, _, n in groups])
    biggest = max((n for _, _, n in groups), default=0)
    if biggest > LARGE_ROW_GROUP:
      log.warning("%s: row groups of up to %d rows; each row read costs its whole row group, so random "
                  "access wants shards written with row groups of about 1k-10k rows", pattern, biggest)
    log.info("%s: %d rows in %d shard(s), %d row group(s); %d bytes read to open (footers) of %d", pattern,
             self._len, len(files), len(groups), self.bytes_read, self.total_bytes)

  def _shared_columns(self, pattern: str, files) -> tuple[str, ...]:
    first = self._metadata[0].schema.to_arrow_schema().names
    for (path, _), metadata in zip(files[1:], self._metadata[1:]):
      names = metadata.schema.to_arrow_schema().names
      if set(names) != set(first):
        raise StarbucksError(f"{path}: its columns {sorted(names)} differ from those of {files[0][0]} "
                             f"({sorted(first)}); every shard of {pattern} must have the same columns")
    return tuple(first)

  def _chunks(self):
    return zip(self._group_starts[:-1].tolist(), self._group_starts[1:].tolist())

  def _row_group(self, group: int, columns: tuple[str, ...]) -> pa.Table:
    return self._cache.get((group, columns), lambda: self._fetch_row_group(group, columns), lambda t: t.nbytes)

  def _fetch_row_group(self, group: int, columns: tuple[str, ...]) -> pa.Table:
    k = int(self._group_shard[group])
    path, size = self.files[k]
    try:
      file = pq.ParquetFile(_RangeFile(path, size, self._count), metadata=self._metadata[k])
      return file.read_row_group(int(self._group_index[group]), columns=list(columns))
    except Exception as e:  # noqa: BLE001 - Arrow and the store raise many kinds: all mean "unreadable"
      raise StarbucksError(f"{path}: cannot read row group {int(self._group_index[group])}: {type(e).__name__}: "
                           f"{' '.join(str(e).split())[:300]}") from None

  def _take(self, indices, columns):
    groups = np.searchsorted(self._group_starts, indices, side="right") - 1
    unique = np.unique(groups)
    tables = list(self._pool.map(lambda g: self._row_group(int(g), columns), unique))
    pieces, order = [], []
    for g, table in zip(unique, tables):
      positions = np.flatnonzero(groups == g)
      pieces.append(table.take(pa.array(indices[positions] - self._group_starts[g])))
      order.append(positions)
    if not pieces:
      taken = pa.table({c: pa.array([], pa.string()) for c in columns})
    else:
      taken = pa.concat_tables(pieces)
      taken = taken.take(pa.array(np.argsort(np.concatenate(order), kind="stable")))
    return Taken({c: taken.column(c).to_pylist() for c in columns}, taken)
