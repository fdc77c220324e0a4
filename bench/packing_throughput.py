"""SRL training-step throughput on real data: ours packed, ours unpacked, and the sentence-transformers peer.

    python bench/packing_throughput.py                              # SNLI and SciFact, 8 timed steps each
    python bench/packing_throughput.py --steps 2 --data snli        # a quick check
    python bench/packing_throughput.py --data scifact --scifact ../shared/data/retrieval/scifact-train.jsonl \
        --out bench/results/packing_throughput.jsonl                # append the rows as JSON lines
    python bench/packing_throughput.py --dtype bfloat16 --variants packed,unpacked

Each variant takes the full SRL training step (forward, backward, AdamW; dropout 0.1) of the packaged
all-MiniLM-L6-v2, six pairs (1,16) ... (6,384), cosine x 20 MNRL plus the score KL, on the same examples
of steps --first-step .. --first-step + --steps - 1 of `data/srl.py` TrainData (seed 0):
  packed    ours, `packing=True`: the batch's texts laid end to end in R rows of pack_length tokens
            (R: TrainData's estimate, or --pack-rows), one forward pass (bench/srl_step.py jax_step)
  unpacked  ours, today's default: one padded row per text, padded to the batch's length bucket
            (16, 32, 64, ..., max length), queries and passages to one length (same_length)
  torch     the PyTorch peer (bench/torch_peers.py): StarbucksStyleLoss around a SentenceTransformer of
            the same folder, fed the same texts (TrainData.texts) tokenized by sentence-transformers itself
            (SentenceTransformer.preprocess, as its data collator calls it: each column padded to its
            longest text, truncated at the same max lengths); columns: queries, positives, negatives
Data sets (--data): snli, the shipped SNLI triplets (batch 32, 32 + 64 texts of at most 32 tokens, as
configs/quickstart.py); scifact, the SciFact training groups in Tevatron's schema (--scifact; batch 8,
train_group_size 4 filled with other queries' positives, queries at most 64 tokens, passages 256).

Timing: our step is jitted once and retraces per batch shape; every distinct shape of the timed steps is
run once first (its compile plus one step: "warm-up s"; "shapes" counts them), the peer takes one warm-up
step (step 0's batch). Then the steps are timed round-robin, step i of every variant before step i + 1, the
order turned by one each step, so that other work on a shared machine weighs on all variants alike ("load":
the mean 1-minute load average over the timed steps; above the core count, the figures are slowed).
Tokenizing and packing happen before the timer ("prep ms": the median per step, measured apart).
Reported: the median step time; examples/s, queries over the median; real tok/s, the mean non-padding
tokens (queries + passages) per step over the median; padding, tokens computed over real tokens (rows x
length summed over the encoder inputs, 1.00x = none); and packed's examples/s over the peer's and over
unpacked's. Every variant must count the same real tokens every step (checked): same texts, same tokenizer.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402

import harness  # noqa: E402
import srl_step  # noqa: E402
from starbucks_jax.data.srl import DataConfig, TrainData  # noqa: E402
from starbucks_jax.hf.load import load_tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ("packed", "unpacked", "torch")


@dataclasses.dataclass(frozen=True)
class DataSet:
  name: str
  source: str
  batch_size: int
  group_size: int  # train_group_size (Tevatron); triplets always give 2
  query_max_length: int
  passage_max_length: int


def data_sets(args) -> list[DataSet]:
  sets = {"snli": DataSet("snli", str(REPO / "data" / "quickstart" / "snli_triplets.jsonl"), args.snli_batch,
                          2, 32, 32),
          "scifact": DataSet("scifact", str((REPO / args.scifact) if not Path(args.scifact).is_absolute()
                                            else args.scifact), args.scifact_batch, 4, 64, 256)}
  return list(sets.values()) if args.data == "both" else [sets[args.data]]


def open_data(ds: DataSet, tokenizer, packing: bool, args) -> TrainData:
  config = DataConfig(source=ds.source, kind="auto", train_group_size=ds.group_size,
                      query_max_length=ds.query_max_length, passage_max_length=ds.passage_max_length,
                      packing=packing, pack_length=args.pack_length if packing else None,
                      pack_rows=args.pack_rows if packing else None)
  return TrainData(config, tokenizer, global_batch_size=ds.batch_size, seed=0)


@dataclasses.dataclass
class Result:
  """One (data set, variant): per-step times and token counts of the timed steps."""
  data: str
  variant: str
  timing: harness.Timing
  queries: int
  real_tokens: list  # per step: non-padding tokens of queries and passages
  computed_tokens: list  # per step: rows x length over every encoder input
  prep_s: list  # per step: tokenizing (and packing) the texts
  shapes: list  # the distinct input shapes, in order of first use
  compiles: int | None = None  # jit cache entries after the timed steps (ours)
  overflows: int = 0  # packed: steps that needed more than the run's pack_rows
  pack_rows: int | None = None
  pack_length: int | None = None
  load: float = 0.0  # the mean 1-minute load average over the timed steps (other work on the machine)

  @property
  def step_s(self) -> float:
    return self.timing.median

  def as_dict(self) -> dict:
    real = statistics.mean(self.real_tokens)
    return {"data": self.data, "variant": self.variant, "queries": self.queries, "steps": len(self.timing.times),
            "step_s": self.step_s, "step_s_range": self.timing.spread, "warmup_s": self.timing.compile_s,
            "examples_per_s": self.queries / self.step_s, "real_tokens_per_step": real,
            "real_tokens_per_s": real / self.step_s,
            "padding_ratio": sum(self.computed_tokens) / sum(self.real_tokens),
            "prep_ms": 1000 * statistics.median(self.prep_s), "shapes": [list(s) for s in self.shapes],
            "compiles": self.compiles, "overflows": self.overflows, "pack_rows": self.pack_rows,
            "pack_length": self.pack_length, "load_avg": self.load}


def timed(fn):
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


class OursRunner:
  """Our SRL step over `steps`' batches, every distinct shape warmed up (compiled) on construction."""

  def __init__(self, name: str, variant: str, data: TrainData, steps: list, model, pairs, args):
    batches, prep = [], []
    for s in steps:
      batch, seconds = timed(lambda: data.batch(s))
      batches.append(batch)
      prep.append(seconds)
    packed = data.config.packing
    if packed:
      real = [int(b["query_lengths"].sum() + b["passage_lengths"].sum()) for b in batches]
      computed = [b["input_ids"].size for b in batches]
      shapes = [b["input_ids"].shape for b in batches]
      for b, n in zip(batches, real):
        assert int(b["attention_mask"].sum()) == n, "packed attention mask and text lengths disagree"
    else:
      real = [int(b["query_attention_mask"].sum() + b["passage_attention_mask"].sum()) for b in batches]
      computed = [b["query_input_ids"].size + b["passage_input_ids"].size for b in batches]
      shapes = [(b["query_input_ids"].shape, b["passage_input_ids"].shape) for b in batches]
    self.batches = [jax.device_put(b) for b in batches]
    fn, (state, _) = srl_step.jax_step(model, pairs, batches[0], data.group_size, args.dtype)
    self.state = jax.device_put(state)  # numpy leaves would make the second call a second compile
    self.step = jax.jit(fn, donate_argnums=0)
    distinct, warmup_s = [], 0.0
    for shape, i in zip(shapes, range(len(steps))):
      if shape not in distinct:
        distinct.append(shape)
        seconds = self.run(i)
        warmup_s += seconds
        print(f"    {variant}: shape {shape} warm-up (compile + one step) {seconds:.1f} s", flush=True)
    self.compiled = self.step._cache_size()
    overflows = sum(shape[0] > data.pack_rows for shape in shapes) if packed else 0
    self.result = Result(name, variant, harness.Timing(warmup_s, []), data.local_batch_size, real, computed,
                         prep, distinct, overflows=overflows, pack_rows=data.pack_rows,
                         pack_length=data.config.row_length if packed else None)

  def run(self, i: int) -> float:
    """Takes step i (the new state kept for the next); returns its seconds."""
    start = time.perf_counter()
    self.state, metrics = self.step(self.state, self.batches[i])
    jax.block_until_ready((self.state, metrics))
    return time.perf_counter() - start

  def finish(self) -> Result:
    self.result.compiles = self.step._cache_size()
    if self.result.compiles != self.compiled:
      print(f"    {self.result.variant}: WARNING: {self.result.compiles - self.compiled} compile(s) during the "
            f"timed steps")
    return self.result


def st_columns(st_model, queries: list, passages: list, group: int, ds: DataSet) -> list:
  """sentence-transformers' features, one column at a time as its data collator makes them: queries, then
  passage k of every group (k = 0 the positive), each padded to its longest text by `preprocess`."""
  columns = [st_model.preprocess(queries, max_length=ds.query_max_length)]
  for k in range(group):
    columns.append(st_model.preprocess(passages[k::group], max_length=ds.passage_max_length))
  return columns


class TorchRunner:
  """The sentence-transformers Starbucks-style step on the same texts, one warm-up step on construction."""

  def __init__(self, name: str, data: TrainData, steps: list, folder: str, pairs, ds: DataSet, args):
    import torch
    import torch_peers
    torch.manual_seed(0)
    st_model = torch_peers.sentence_transformer(folder, pooling="mean")
    st_model.train()
    loss = torch_peers.StarbucksStyleLoss(st_model, pairs)
    optimizer = torch_peers.adamw(st_model.parameters())
    group = data.group_size
    self.batches, prep, real, computed, shapes = [], [], [], [], []
    for s in steps:
      queries, passages, _ = data.texts(s)
      columns, seconds = timed(lambda: st_columns(st_model, queries, passages, group, ds))
      self.batches.append(columns)
      prep.append(seconds)
      real.append(sum(int(c["attention_mask"].sum()) for c in columns))
      computed.append(sum(c["input_ids"].numel() for c in columns))
      shape = tuple(tuple(c["input_ids"].shape) for c in columns)
      if shape not in shapes:
        shapes.append(shape)
    self.step = lambda columns: torch_peers.train_step(lambda: loss(columns, None), optimizer, args.dtype)
    warmup_s = self.run(0)
    self.result = Result(name, "torch", harness.Timing(warmup_s, []), data.local_batch_size, real, computed,
                         prep, shapes)

  def run(self, i: int) -> float:
    return timed(lambda: self.step(self.batches[i]))[1]

  def finish(self) -> Result:
    return self.result


def run_data_set(ds: DataSet, variants: list, model, folder: str, pairs, tokenizer, args) -> list:
  """Warms every variant up, then times the steps round-robin (step i of every variant, in an order turned
  by one each step), so that other work on the machine weighs on all variants alike."""
  steps = list(range(args.first_step, args.first_step + args.steps))
  opened = {v: open_data(ds, tokenizer, v == "packed", args) for v in ("packed", "unpacked")}
  for s in steps:  # both layouts (and the peer, via "unpacked") read the same texts
    (q, p, _), (q2, p2, _) = opened["packed"].texts(s), opened["unpacked"].texts(s)
    assert q == q2 and p == p2, f"step {s}: packed and unpacked data read different texts"
  data = opened["unpacked"]
  print(f"\n{ds.name}: {data.num_examples} {data.kind} examples, batch {ds.batch_size} x (1 + {data.group_size}), "
        f"max length {ds.query_max_length}/{ds.passage_max_length}, steps {steps[0]}..{steps[-1]}; packed rows "
        f"{opened['packed'].pack_rows} x {opened['packed'].config.row_length} tokens", flush=True)
  runners = [TorchRunner(ds.name, data, steps, folder, pairs, ds, args) if v == "torch"
             else OursRunner(ds.name, v, opened[v], steps, model, pairs, args) for v in variants]
  loads = []
  for i in range(len(steps)):
    for k in range(len(runners)):
      runner = runners[(i + k) % len(runners)]
      runner.result.timing.times.append(runner.run(i))
    loads.append(os.getloadavg()[0])
    print(f"  step {steps[i]}: " + ", ".join(f"{r.result.variant} {r.result.timing.times[-1]:.2f} s" for r in runners),
          flush=True)
  results = [r.finish() for r in runners]
  for r in results:
    r.load = statistics.mean(loads)
  counts = {r.variant: r.real_tokens for r in results}
  if len({tuple(c) for c in counts.values()}) > 1:
    raise SystemExit(f"{ds.name}: the variants counted different real tokens per step: {counts}")
  return results


def print_table(results: list, args) -> None:
  print(f"\nSRL step, all-MiniLM-L6-v2, six pairs, cosine x 20 MNRL + score KL, dropout 0.1, {args.dtype}, "
        f"median of {args.steps} steps")
  print(f"{'data':<8} {'variant':<9} {'step s':>7} {'range':>13} {'ex/s':>7} {'real tok/s':>10} {'real tok':>8} "
        f"{'padding':>7} {'prep ms':>7} {'shapes':>6} {'warm-up s':>9} {'load':>5}")
  for r in results:
    d = r.as_dict()
    print(f"{d['data']:<8} {d['variant']:<9} {d['step_s']:>7.3f} {d['step_s_range']:>13} {d['examples_per_s']:>7.1f} "
          f"{d['real_tokens_per_s']:>10.0f} {d['real_tokens_per_step']:>8.0f} {d['padding_ratio']:>6.2f}x "
          f"{d['prep_ms']:>7.1f} {len(d['shapes']):>6} {d['warmup_s']:>9.1f} {d['load_avg']:>5.1f}")
  for data in dict.fromkeys(r.data for r in results):
    by = {r.variant: r for r in results if r.data == data}
    if "packed" not in by:
      continue
    for other in ("torch", "unpacked"):
      if other in by:
        print(f"{data}: packed / {other} examples/s = {by[other].step_s / by['packed'].step_s:.2f}x")
    p = by["packed"]
    print(f"{data}: packed rows {p.pack_rows} x {p.pack_length}, {p.compiles} compile(s), "
          f"{p.overflows} step(s) over the row count")


def save(results: list, args) -> None:
  if not args.out:
    return
  by = {(r.data, r.variant): r for r in results}
  with open(args.out, "a") as f:
    for r in results:
      row = {"bench": "packing_throughput", **r.as_dict(), "dtype": args.dtype}
      if r.variant == "packed" and (r.data, "torch") in by:
        row["packed_over_torch_examples_per_s"] = by[(r.data, "torch")].step_s / r.step_s
      row.update(machine=harness.machine(), command=harness.command_line())
      f.write(json.dumps(row) + "\n")


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--data", default="both", choices=["snli", "scifact", "both"])
  p.add_argument("--scifact", default="../shared/data/retrieval/scifact-train.jsonl",
                 help="SciFact training groups (Tevatron schema); relative paths are from the repo root")
  p.add_argument("--steps", type=int, default=8, help="timed steps per (data set, variant)")
  p.add_argument("--first-step", type=int, default=0)
  p.add_argument("--snli-batch", type=int, default=32)
  p.add_argument("--scifact-batch", type=int, default=8)
  p.add_argument("--pack-length", type=int, default=None, help="packed: tokens per row (default: the max length)")
  p.add_argument("--pack-rows", type=int, default=None, help="packed: rows per batch (default: TrainData's estimate)")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
  p.add_argument("--out", default=None, help="append the rows to this JSON-lines file")
  args = p.parse_args()
  variants = harness.parse_variants(p, argparse.Namespace(variants=args.variants), VARIANTS)

  folder, model, pairs = srl_step.load("minilm")
  tokenizer = load_tokenizer(folder)
  print(harness.machine())
  print(f"model {folder}, pairs {pairs}")
  results = []
  for ds in data_sets(args):
    results += run_data_set(ds, variants, model, folder, pairs, tokenizer, args)
    jax.clear_caches()  # the data set's compiled steps: memory for the next one
    gc.collect()
  print_table(results, args)
  save(results, args)


if __name__ == "__main__":
  main()
