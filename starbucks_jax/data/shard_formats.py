"""Which sources are read lazily, and by which format: one rule for every part of a `data.source`.

    lazy_format("gs://b/allnli/*.parquet")    # parquet_shards.ParquetShards
    lazy_format("gs://b/allnli/")             # by the files the folder holds
    lazy_format("train.jsonl")                # None: read whole (no line index beside it)

- Parquet shards: a glob or a folder of .parquet files, or one .parquet file in a bucket (a local file
  alone is read whole by `datasets`, as before shards existed).
- ArrayRecord: .array_record files, one or a glob or a folder, on a disk or in a bucket.
- JSON Lines: .jsonl files that have a line index beside them (`python -m starbucks_jax.index`); without
  one they are read whole (a file in a bucket is first copied to the host, which is logged with the command
  that avoids it). Some shards indexed and others not is refused.
Anything else (CSV, JSON) is read whole, as a local file or a local copy.
"""

from __future__ import annotations

import logging
import os

from starbucks_jax import storage
from starbucks_jax.data import array_record_shards, jsonl_shards, parquet_shards
from starbucks_jax.data.shards import is_pattern, read_pool
from starbucks_jax.errors import StarbucksError

log = logging.getLogger(__name__)

LAZY = {".parquet": parquet_shards.ParquetShards, ".array_record": array_record_shards.ArrayRecordShards,
        ".jsonl": jsonl_shards.JsonLinesShards}


def _files(part: str) -> list[tuple[str, int | None]]:
  """(path, size or None) of the data files a part names; line indexes are not data."""
  if not is_pattern(part):
    return [(part, None)]
  return [(p, s) for p, s in storage.matching_files(part, "data source") if not p.endswith(jsonl_shards.INDEX_SUFFIX)]


def _extension(path: str) -> str:
  return os.path.splitext(path)[1].lower()


def _jsonl_format(part: str, files) -> type | None:
  with read_pool() as pool:  # one metadata request per shard: in parallel, as the indexes are read after
    indexed = list(pool.map(lambda f: jsonl_shards.has_index(f[0]), files))
  if all(indexed):
    return jsonl_shards.JsonLinesShards
  if any(indexed):
    missing = next(p for (p, _), i in zip(files, indexed) if not i)
    raise StarbucksError(f"{missing}: no line index, while other shards of {part} have one; write it with "
                         f"{jsonl_shards.INDEX_COMMAND} '{part}'")
  _warn_whole(part, files, f"write a line index once ({jsonl_shards.INDEX_COMMAND} '{part}') to read only the "
                           "rows each host needs")
  return None


def _warn_whole(part: str, files, remedy: str) -> None:
  if storage.is_remote(part):
    size = sum(s for _, s in files if s is not None)
    log.warning("%s: read whole: each host first downloads every byte%s; %s", part,
                f" ({size} bytes)" if size else "", remedy)


def lazy_format(part: str) -> type | None:
  """The lazy table class for one part of a source (module docstring), or None to read it whole."""
  files = _files(part)
  extensions = {_extension(p) for p, _ in files}
  lazy = extensions & set(LAZY)
  if lazy and len(extensions) > 1:
    raise StarbucksError(f"data source {part} holds files of several formats ({', '.join(sorted(extensions))}); "
                         "the shards of one source are of one format")
  if not lazy:
    if extensions & {".csv", ".json"}:
      _warn_whole(part, files, "Parquet shards, indexed JSON Lines or ArrayRecord are read lazily instead")
    return None
  extension = lazy.pop()
  if extension == ".jsonl":
    return _jsonl_format(part, files)
  if extension == ".parquet" and not is_pattern(part) and not storage.is_remote(part):
    return None
  return LAZY[extension]
