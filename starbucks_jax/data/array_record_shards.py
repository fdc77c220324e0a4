"""ArrayRecord shards of JSON rows, read lazily by the array_record library, on a disk or in a bucket.

    table = ArrayRecordShards("gs://bucket/allnli/*.array_record")   # each shard's footer: its record count
    table.read([17, 4242], ["anchor", "positive"])                     # just those two records

Each record is one row: a JSON object, UTF-8 (`ArrayRecordWriter(path, "group_size:1").write(json.dumps(row)
.encode())`; group size 1 makes one record one read). array_record reads `gs://` paths itself, with ranged
requests (its C++ GCS client: credentials as for any Google client, or the emulator named by
`STORAGE_EMULATOR_HOST`, passed on by `storage.py`), so nothing is copied to the host and its bytes are not
counted here (`bytes_read` is None). The columns are the keys of each shard's first record. A record that
is not a JSON object is a bad row when read (`data.bad_rows`). TFDS data sets prepared as ArrayRecord are
`tfds:NAME` sources (`sources.py`), with `data.tfds_data_dir` on a disk or in a bucket.
"""

from __future__ import annotations

import json
import threading

import numpy as np

from starbucks_jax import storage
from starbucks_jax.data.shards import LazyShards, Taken, read_pool, shard_files
from starbucks_jax.errors import StarbucksError

READER_OPTIONS = "readahead_buffer_size:0"  # random access: no read-ahead past the records asked for
CHUNK_ROWS = 4096


def _decode(record: bytes) -> tuple[dict | None, str | None]:
  try:
    row = json.loads(record)
  except ValueError as e:
    return None, f"record is not a JSON object ({type(e).__name__}: {str(e)[:100]})"
  return (row, None) if isinstance(row, dict) else (None, f"record is not a JSON object but {type(row).__name__}")


def _reader(path: str):
  try:
    from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise StarbucksError(f"{path}: ArrayRecord sources need the array-record package (pip install -e '.[tfds]')") \
        from None
  storage.use_emulator_settings()
  try:
    return array_record_module.ArrayRecordReader(path, READER_OPTIONS)
  except Exception as e:  # noqa: BLE001 - the reader raises RuntimeError/ValueError for what it cannot read
    raise StarbucksError(f"{path}: cannot be read as ArrayRecord: {' '.join(str(e).split())[:300]}") from None


class ArrayRecordShards(LazyShards):
  """The rows of ArrayRecord shards of JSON objects (module docstring); a `sources.Table`."""

  def __init__(self, pattern: str, *, limit: int | None = None, bad_rows: str = "error"):
    files = shard_files(pattern, (".array_record",), "ArrayRecord")
    self._pool = read_pool()
    self._readers = list(self._pool.map(lambda f: _reader(f[0]), files))
    self._locks = [threading.Lock() for _ in files]  # the loop's prefetch thread and the main one may both read
    counts = [reader.num_records() for reader in self._readers]
    columns = [self._first_keys(path, reader, n) for (path, _), reader, n in zip(files, self._readers, counts)]
    for (path, _), keys in zip(files[1:], columns[1:]):
      if keys is not None and columns[0] is not None and keys != columns[0]:
        raise StarbucksError(f"{path}: its first record's keys {keys} differ from those of {files[0][0]} "
                             f"({columns[0]}); every shard of {pattern} must have the same columns")
    self._opened(pattern, files, counts, next((c for c in columns if c is not None), []), limit, bad_rows)

  @staticmethod
  def _first_keys(path: str, reader, count: int) -> list[str] | None:
    if not count:
      return None
    row, problem = _decode(reader.read([0])[0])
    if problem:
      raise StarbucksError(f"{path}: row 1, {problem}")
    return sorted(row)

  def _chunks(self):
    return ((s, min(s + CHUNK_ROWS, self._len)) for s in range(0, self._len, CHUNK_ROWS))

  def _records(self, indices: np.ndarray) -> list[bytes]:
    shard = np.searchsorted(self._shard_starts, indices, side="right") - 1
    records: list = [None] * len(indices)
    def read(k):
      positions = np.flatnonzero(shard == k)
      with self._locks[k]:
        return positions, self._readers[k].read((indices[positions] - self._shard_starts[k]).tolist())
    for positions, found in self._pool.map(read, np.unique(shard).tolist()):
      for position, record in zip(positions, found):
        records[position] = record
    return records

  def _take(self, indices, columns):
    values, problems = {c: [] for c in columns}, {}
    for position, record in enumerate(self._records(indices)):
      row, problem = _decode(record)
      if problem:
        problems[position] = problem
      for c in columns:
        values[c].append(None if row is None else row.get(c))
    return Taken(values, None, problems)
