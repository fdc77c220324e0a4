"""Write the line index of JSON Lines shards, so that training reads only the rows each host needs.

    python -m starbucks_jax.index "gs://bucket/allnli/*.jsonl" [more patterns ...] [--block_rows 64]

Reads each shard once (the shards in parallel) and writes `<shard>.index.json` beside it
(`data/jsonl_shards.py` says what it holds); one line per shard: its rows, blocks, and lines that are not
JSON objects (bad rows for training, `data.bad_rows`). Run it again after a shard changes: training refuses
an index that no longer matches its shard.
"""

from __future__ import annotations

import argparse
import concurrent.futures

from starbucks_jax.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m starbucks_jax.index", description=__doc__.split("\n\n")[0])
  p.add_argument("patterns", nargs="+", help="JSON Lines shards: a file, a glob or a folder ending in '/'")
  p.add_argument("--block_rows", type=int, default=None,
                 help="rows a block: what reading one row costs (default: jsonl_shards.BLOCK_ROWS)")
  return p


def main(argv=None) -> list[dict]:
  from starbucks_jax.data import jsonl_shards
  from starbucks_jax.data.shards import shard_files
  args = build_parser().parse_args(argv)
  block_rows = jsonl_shards.BLOCK_ROWS if args.block_rows is None else args.block_rows
  files = [path for pattern in args.patterns for path, _ in shard_files(pattern, (".jsonl",), "JSON Lines")]
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    indexes = list(pool.map(lambda path: jsonl_shards.write_index(path, block_rows), files))
  for path, index in zip(files, indexes):
    bad = (f", {index['bad_lines']} line(s) not JSON objects (the first: line {index['first_bad_line']})"
           if index["bad_lines"] else "")
    print(f"{path}: {index['rows']} rows, {len(index['block_offsets'])} blocks of {block_rows}, columns "
          f"{', '.join(index['columns'])}{bad} -> {jsonl_shards.index_path(path)}")
  return indexes


def run() -> None:
  """The `starbucks-index` console script."""
  run_cli(main)
