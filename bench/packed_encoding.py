"""Encoding throughput with packed rows against padded buckets, on real texts of two very different lengths.

    python bench/packed_encoding.py                         # SciFact 64 at 256 and 512, STS-B test at 128
    python bench/packed_encoding.py --scifact-texts 0 --scifact-lengths 256,512 --rounds 5 \
        --out bench/results/packed_encoding.jsonl           # append the rows as JSON lines

Model: the packaged all-MiniLM-L6-v2 (6 layers, hidden 384), mean pooling, float32, every layer pooled in
one pass (as `evaluate` does for its default pairs), `Encoder.encode_layers` at --batch-size.
Texts: (a) SciFact corpus abstracts ("title text", as BEIR folders are read), the first --scifact-texts
(0: all 5183), at each of --scifact-lengths; (b) the distinct sentences of STS-B test (--stsb-texts, 0:
all 2552) at --stsb-length.
Variants: bucketed (`packing=False`: longest first, batch_size rows padded to the batch's bucket length)
and packed (`packing=True`: texts end to end in rows of one shape, `encoder.packed_passes`).

Timing: each variant's first call (compile plus one run) comes first; "compile s" is the time JAX reports
spending on tracing, lowering and compiling during it (`jax.monitoring` events). Then --rounds rounds
time both variants, the order turned each round, so that other work on a shared machine weighs on both
alike ("load": /proc/loadavg's 1-minute figure, the mean over the rounds; above the core count, every
figure is slowed). Reported: texts/s and real tokens/s over the
median run; padding, tokens computed over real tokens (rows x length summed over the forward passes,
1.00x = none); shapes, the compiled shapes of the variant's call; and the largest difference between
the two variants' vectors (any layer, any coordinate).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from starbucks_jax.hf.load import default_model_dir  # noqa: E402
from starbucks_jax.inference import encoder as encoder_lib  # noqa: E402
from starbucks_jax.inference.encoder import Encoder  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
VARIANTS = ("bucketed", "packed")
COMPILE_SECONDS = []  # every JAX tracing, lowering and compiling duration, as JAX reports them


def record_compile(event: str, seconds: float, **_) -> None:
  if event.startswith("/jax/core/compile/"):
    COMPILE_SECONDS.append(seconds)


def load_jsonl(path: Path) -> list[dict]:
  if not path.is_file():
    raise SystemExit(f"error: {path} is missing; this benchmark reads ../shared/data (see its README)")
  return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def data_sets(args) -> list[tuple[str, list[str], int]]:
  """(name, texts, max length) of every measured set."""
  abstracts = [f"{r['title']} {r['text']}".strip() for r in load_jsonl(Path(args.scifact))]
  abstracts = abstracts[:args.scifact_texts] if args.scifact_texts else abstracts
  rows = load_jsonl(Path(args.stsb))
  sentences = list(dict.fromkeys([r["sentence1"] for r in rows] + [r["sentence2"] for r in rows]))
  sentences = sentences[:args.stsb_texts] if args.stsb_texts else sentences
  sets = [(f"scifact-{length}", abstracts, length) for length in map(int, args.scifact_lengths.split(","))]
  return sets + [(f"stsb-{args.stsb_length}", sentences, args.stsb_length)]


def computed_tokens(lengths: list[int], batch_size: int, max_length: int, packing: bool) -> int:
  """Tokens the forward passes compute, padding included, as `encode_layers` lays the texts out."""
  if packing:
    length = encoder_lib.padded_length(max(lengths), max_length)
    passes, rows = encoder_lib.packed_passes(lengths, length, batch_size * max_length)
    return len(passes) * rows * length
  ordered = sorted(lengths, reverse=True)
  return sum(batch_size * encoder_lib.padded_length(ordered[start], max_length)
             for start in range(0, len(ordered), batch_size))


def load_average() -> float:
  return float(Path("/proc/loadavg").read_text().split()[0])


def measure(enc: Encoder, name: str, texts: list[str], max_length: int, args) -> list[dict]:
  """Both variants on one set: first calls, then --rounds alternating timed calls."""
  layers = tuple(range(1, enc.config.num_hidden_layers + 1))
  encode = lambda packing: enc.encode_layers(texts, layers=layers, pooling="mean", batch_size=args.batch_size,
                                             max_length=max_length, show_progress=False, packing=packing)
  lengths = [len(x) for x in enc.tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
  compile_s, shapes, vectors, times, loads = {}, {}, {}, {v: [] for v in VARIANTS}, []
  for variant in VARIANTS:
    encoder_lib.pooled_layers.clear_cache()
    COMPILE_SECONDS.clear()
    vectors[variant] = encode(variant == "packed")
    compile_s[variant] = sum(COMPILE_SECONDS)
    shapes[variant] = encoder_lib.pooled_layers._cache_size()
  for r in range(args.rounds):
    for variant in VARIANTS[r % 2:] + VARIANTS[:r % 2]:
      start = time.perf_counter()
      vectors[variant] = encode(variant == "packed")
      times[variant].append(time.perf_counter() - start)
    loads.append(load_average())
    print(f"  {name} round {r}: " + ", ".join(f"{v} {times[v][-1]:.2f} s" for v in VARIANTS), flush=True)
  difference = max(float(np.abs(vectors["packed"][n] - vectors["bucketed"][n]).max()) for n in layers)
  rows = []
  for variant in VARIANTS:
    median = statistics.median(times[variant])
    computed = computed_tokens(lengths, args.batch_size, max_length, variant == "packed")
    rows.append({"data": name, "variant": variant, "texts": len(texts), "max_length": max_length,
                 "batch_size": args.batch_size, "real_tokens": sum(lengths), "run_s": median,
                 "run_s_range": f"{min(times[variant]):.2f}-{max(times[variant]):.2f}",
                 "texts_per_s": len(texts) / median, "real_tokens_per_s": sum(lengths) / median,
                 "padding_ratio": computed / sum(lengths), "shapes": shapes[variant], "compile_s": compile_s[variant],
                 "max_abs_difference": difference, "load_avg": statistics.mean(loads), "rounds": args.rounds})
  return rows


def print_table(rows: list[dict]) -> None:
  print(f"\nall-MiniLM-L6-v2, mean pooling, layers 1-6 in one pass, float32, median of {rows[0]['rounds']} runs")
  print(f"{'data':<12} {'variant':<9} {'texts':>5} {'run s':>6} {'range':>11} {'texts/s':>8} {'real tok/s':>10} "
        f"{'padding':>7} {'shapes':>6} {'compile s':>9} {'load':>5}")
  for r in rows:
    print(f"{r['data']:<12} {r['variant']:<9} {r['texts']:>5} {r['run_s']:>6.2f} {r['run_s_range']:>11} "
          f"{r['texts_per_s']:>8.1f} {r['real_tokens_per_s']:>10.0f} {r['padding_ratio']:>6.2f}x {r['shapes']:>6} "
          f"{r['compile_s']:>9.1f} {r['load_avg']:>5.2f}")
  for data in dict.fromkeys(r["data"] for r in rows):
    by = {r["variant"]: r for r in rows if r["data"] == data}
    print(f"{data}: packed / bucketed texts/s = {by['packed']['texts_per_s'] / by['bucketed']['texts_per_s']:.2f}x, "
          f"largest vector difference {by['packed']['max_abs_difference']:.2e}")


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--scifact", default=str(SHARED / "retrieval" / "scifact-corpus.jsonl"))
  p.add_argument("--scifact-texts", type=int, default=64, help="the first N abstracts (0: all 5183); a "
                 "multiple of --batch-size keeps the bucketed path's last batch full")
  p.add_argument("--scifact-lengths", default="256,512", help="comma-separated max lengths, e.g. 256,512")
  p.add_argument("--stsb", default=str(SHARED / "stsb" / "test.jsonl"))
  p.add_argument("--stsb-texts", type=int, default=0, help="the first N distinct sentences (0: all)")
  p.add_argument("--stsb-length", type=int, default=128)
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--rounds", type=int, default=3, help="timed runs of each variant, alternating")
  p.add_argument("--out", default=None, help="append the rows to this JSON-lines file")
  args = p.parse_args()

  jax.monitoring.register_event_duration_secs_listener(record_compile)
  enc = Encoder.from_pretrained(default_model_dir(), max_length=512)
  print(harness.machine())
  print(f"load average at start: {Path('/proc/loadavg').read_text().strip()}", flush=True)
  rows = []
  for name, texts, max_length in data_sets(args):
    rows += measure(enc, name, texts, max_length, args)
  print_table(rows)
  print(f"load average at end: {Path('/proc/loadavg').read_text().strip()}")
  if args.out:
    with open(args.out, "a") as f:
      for r in rows:
        f.write(json.dumps({"bench": "packed_encoding", **r, "machine": harness.machine(),
                            "command": harness.command_line()}) + "\n")


if __name__ == "__main__":
  main()
