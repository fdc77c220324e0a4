"""JSON Lines shards read lazily through a line index: on a disk or in a bucket, only the blocks of the rows read.

    python -m starbucks_jax.index "gs://bucket/allnli/*.jsonl"     # once: part-0.jsonl.index.json beside each
    table = JsonLinesShards("gs://bucket/allnli/*.jsonl")          # reads the indexes: no row yet
    table.read([17, 4242], ["anchor", "positive"])                 # two ranged requests, a block each

A JSON Lines file has no random access of its own: where row N starts is known only by reading every line
before it. `write_index` reads a shard once and writes beside it, as `<shard>.index.json`, its size (and the
store's CRC32C), its rows, the keys its rows have (the columns), and where every `block_rows`-th row starts
(byte offset and line number). Opening then reads only the small indexes (a 1M-row shard's is about 200 kB
at the default 64 rows a block), and a row costs one ranged request for its block (64 lines; consecutive
blocks are fetched as one range by the full pass). An index that does not match its shard (its size or
CRC32C changed) is refused, naming the command that writes it again. Blank lines are not rows; a row's
number in messages is its line number in the file, as for JSON Lines read whole.
A line that is not a JSON object is a bad row when read (`data.bad_rows`); `write_index` counts them.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile

import numpy as np

from starbucks_jax import storage
from starbucks_jax.data.shards import ByteCount, LazyShards, PieceCache, Taken, read_pool, shard_files
from starbucks_jax.errors import StarbucksError

log = logging.getLogger(__name__)

INDEX_SUFFIX = ".index.json"
INDEX_FORMAT = "starbucks_jax JSON Lines index"
BLOCK_ROWS = 64              # rows a block: what reading one row costs, against the index's size
INDEX_COMMAND = "python -m starbucks_jax.index"
SCAN_BYTES = 16 << 20       # what writing an index reads at a time


def index_path(shard: str) -> str:
  return shard + INDEX_SUFFIX


def _decode(text: bytes) -> tuple[dict | None, str | None]:
  """(the row, None) or (None, what is wrong with the line)."""
  try:
    row = json.loads(text)
  except ValueError as e:
    return None, f"not valid JSON ({getattr(e, 'msg', e)}, column {getattr(e, 'colno', '?')})"
  return (row, None) if isinstance(row, dict) else (None, f"not a JSON object but {type(row).__name__}")


def _lines(path: str):
  """Each line of a file with its newline, read in large pieces (a bucket's file: few large requests)."""
  rest = b""
  with storage.as_path(path).open("rb") as f:
    while piece := f.read(SCAN_BYTES):
      lines = (rest + piece).split(b"\n")
      rest = lines.pop()
      yield from (line + b"\n" for line in lines)
  if rest:
    yield rest


def _scan(path: str, block_rows: int) -> dict:
  """One pass over a shard: where each block starts, the rows, their keys, the lines that are not objects."""
  offsets, lines, keys, bad = [], [], set(), []
  offset, rows = 0, 0
  for number, line in enumerate(_lines(path)):
    if line.strip():
      if rows % block_rows == 0:
        offsets.append(offset)
        lines.append(number)
      row, problem = _decode(line)
      if problem:
        bad.append(number + 1)
      else:
        keys.update(row)
      rows += 1
    offset += len(line)
  return {"rows": rows, "size": offset, "columns": sorted(keys), "block_offsets": offsets, "block_lines": lines,
          "bad_lines": len(bad), "first_bad_line": bad[0] if bad else None}


def write_index(shard: str, block_rows: int = BLOCK_ROWS) -> dict:
  """Reads `shard` once and writes its index beside it (module docstring); returns the index."""
  if block_rows < 1:
    raise StarbucksError(f"--block_rows must be at least 1, got {block_rows}")
  index = {"format": INDEX_FORMAT, "version": 1, "block_rows": block_rows, "crc32c": storage.stored_checksum(shard),
           **_scan(shard, block_rows)}
  text = json.dumps(index, separators=(",", ":"))
  target = index_path(shard)
  if storage.is_remote(target):
    storage.as_path(target).write_text(text)  # an object is written whole or not at all
  else:
    handle, staging = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(target)), prefix=".index.")
    with os.fdopen(handle, "w") as f:
      f.write(text)
    os.replace(staging, target)
  return index


def has_index(shard: str) -> bool:
  return storage.as_path(index_path(shard)).exists()


def _read_index(shard: str, size: int, count: ByteCount) -> dict:
  path = index_path(shard)
  try:
    data = storage.as_path(path).read_bytes()
  except FileNotFoundError:
    raise StarbucksError(f"{shard}: no line index ({path}); write it with {INDEX_COMMAND} '{shard}'") from None
  count.add(len(data))
  try:
    index = json.loads(data)
  except ValueError:
    index = {}
  if index.get("format") != INDEX_FORMAT:
    raise StarbucksError(f"{path}: not a line index written by {INDEX_COMMAND}")
  checksum = storage.stored_checksum(shard)
  if index["size"] != size or (checksum and index["crc32c"] and checksum != index["crc32c"]):
    raise StarbucksError(f"{shard} changed since its line index was written ({index['size']} bytes then, {size} "
                         f"now{', CRC32C differs' if index['size'] == size else ''}); write it again with "
                         f"{INDEX_COMMAND} '{shard}'")
  return index


class JsonLinesShards(LazyShards):
  """The rows of indexed JSON Lines shards, read lazily (module docstring); a `sources.Table`."""

  def __init__(self, pattern: str, *, limit: int | None = None, bad_rows: str = "error"):
    files = shard_files(pattern, (".jsonl",), "JSON Lines")
    self._count, self._pool, self._cache = ByteCount(), read_pool(), PieceCache()
    indexes = list(self._pool.map(lambda f: _read_index(f[0], f[1], self._count), files))
    for (path, _), index in zip(files[1:], indexes[1:]):
      if index["columns"] != indexes[0]["columns"]:
        raise StarbucksError(f"{path}: its keys {index['columns']} differ from those of {files[0][0]} "
                             f"({indexes[0]['columns']}); every shard of {pattern} must have the same columns")
    self._opened(pattern, files, [i["rows"] for i in indexes], indexes[0]["columns"], limit, bad_rows)
    self._blocks(files, indexes)
    log.info("%s: %d rows in %d shard(s), %d block(s); %d bytes read to open (indexes) of %d", pattern, self._len,
             len(files), len(self._block_shard), self.bytes_read, self.total_bytes)

  def _blocks(self, files, indexes) -> None:
    """The blocks of every shard, in global order: shard, byte range, first row (global), first line."""
    shard, start, end, first_row, first_line = [], [], [], [], []
    for k, ((_, size), index) in enumerate(zip(files, indexes)):
      offsets = index["block_offsets"]
      shard += [k] * len(offsets)
      start += offsets
      end += offsets[1:] + [size]
      first_row += [int(self._shard_starts[k]) + j * index["block_rows"] for j in range(len(offsets))]
      first_line += index["block_lines"]
    self._block_shard, self._block_start, self._block_end = (np.asarray(a, np.int64) for a in (shard, start, end))
    self._block_first_row = np.asarray(first_row + [int(self._shard_starts[-1])], np.int64)
    self._block_first_line = np.asarray(first_line, np.int64)

  def _chunks(self):
    # A shard's consecutive blocks up to about 4096 rows: the full pass fetches each chunk as one range.
    per_chunk = max(1, 4096 // max(1, int(np.diff(self._block_first_row).max(initial=1))))
    for k in range(len(self.files)):
      blocks = np.flatnonzero(self._block_shard == k)
      for j in range(0, len(blocks), per_chunk):
        run = blocks[j:j + per_chunk]
        yield int(self._block_first_row[run[0]]), int(self._block_first_row[run[-1] + 1])

  def _split(self, block: int, raw: bytes) -> list[tuple[int, bytes]]:
    """(line number from 0, line) of a block's rows: its non-blank lines."""
    first = int(self._block_first_line[block])
    return [(first + n, line) for n, line in enumerate(raw.split(b"\n")) if line.strip()]

  def _fetch(self, first: int, last: int) -> dict[int, list]:
    """Blocks first..last (one shard's, consecutive) as one ranged request, split into their rows."""
    path = self.files[int(self._block_shard[first])][0]
    start, end = int(self._block_start[first]), int(self._block_end[last])
    raw = storage.read_range(path, start, end)
    self._count.add(len(raw))
    return {b: self._split(b, raw[int(self._block_start[b]) - start:int(self._block_end[b]) - start])
            for b in range(first, last + 1)}

  def _block_rows(self, blocks: np.ndarray) -> dict[int, list]:
    if len(blocks) > 1 and np.all(np.diff(blocks) == 1) and len(set(self._block_shard[blocks].tolist())) == 1:
      return self._fetch(int(blocks[0]), int(blocks[-1]))  # the full pass: one range
    rows = self._pool.map(lambda b: self._cache.get(b, lambda: self._fetch(b, b)[b], _size), blocks.tolist())
    return dict(zip(blocks.tolist(), rows))

  def _take(self, indices, columns):
    blocks = np.searchsorted(self._block_first_row, indices, side="right") - 1
    lines = self._block_rows(np.unique(blocks))
    values, problems = {c: [] for c in columns}, {}
    for position, (row, block) in enumerate(zip(indices.tolist(), blocks.tolist())):
      decoded, problem = _decode(lines[block][row - int(self._block_first_row[block])][1])
      if problem:
        problems[position] = f"line {problem}"
      for c in columns:
        values[c].append(None if decoded is None else decoded.get(c))
    return Taken(values, None, problems)

  def _where(self, row):
    block = int(np.searchsorted(self._block_first_row, row, side="right") - 1)
    lines = self._block_rows(np.asarray([block]))[block]
    return self.files[int(self._block_shard[block])][0], lines[row - int(self._block_first_row[block])][0]


def _size(rows: list[tuple[int, bytes]]) -> int:
  return sum(len(line) for _, line in rows) + 64 * len(rows)
