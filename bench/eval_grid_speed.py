"""Full-grid evaluation time: our one encoding pass for every layer against re-encoding once per layer.

    python bench/eval_grid_speed.py [--model PATH] [--beir] [--repeats 3]

Grid: every layer 1..L with the evaluator's default dims (all-MiniLM-L6-v2: 6 x 6 = 36 pairs).
Data: STS-B test (1379 pairs, 2746 distinct sentences) from ../shared/data, and with --beir also the MS
MARCO DL19 slice (43 queries, 5000 passages of up to 256 tokens; slow on a CPU). "one pass" is `evaluate_encoder` as `python -m starbucks_jax.evaluate` runs it: each text
is encoded once, up to the highest layer, and every layer's pooled vector is kept. "per layer" does what
the paper's evaluation scripts do: for each layer n, encode everything again with the model cut to n
layers, then score that layer's dims. Both produce the same scores (checked); figures are medians of
--repeats runs after a warm-up that compiles every shape.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from starbucks_jax import pairs as pairs_lib  # noqa: E402
from starbucks_jax.evaluation.datasets import load_beir, load_sts  # noqa: E402
from starbucks_jax.evaluation.evaluator import EvalOptions  # noqa: E402
from starbucks_jax.evaluation.run import evaluate_encoder  # noqa: E402
from starbucks_jax.hf.load import default_model_dir  # noqa: E402
from starbucks_jax.inference.encoder import Encoder  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
QUIET = EvalOptions(show_progress=False)


def one_pass(encoder, sts_sets, beir_sets, pairs):
  return evaluate_encoder(encoder, {"sts": sts_sets, "beir": beir_sets}, pairs=pairs, options=QUIET)


def per_layer(encoder, sts_sets, beir_sets, pairs):
  merged = {"sts": {s.name: {} for s in sts_sets}, "beir": {b.name: {} for b in beir_sets}}
  for layer in sorted({n for n, _ in pairs}):
    layer_pairs = [p for p in pairs if p[0] == layer]
    results = evaluate_encoder(encoder, {"sts": sts_sets, "beir": beir_sets}, pairs=layer_pairs, options=QUIET)
    for kind in merged:
      for name, scores in results[kind].items():
        merged[kind][name].update(scores)
  return merged


def timed(fn, repeats):
  result = fn()  # warm-up: compiles every bucket shape
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return result, times


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default=None)
  p.add_argument("--beir", action="store_true", help="also the DL19 slice (5000 passages)")
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args()
  if not (DATA / "stsb" / "test.jsonl").is_file():
    raise SystemExit(f"error: {DATA / 'stsb' / 'test.jsonl'} is missing; this benchmark reads ../shared/data")
  encoder = Encoder.from_pretrained(args.model or default_model_dir())
  sts_sets = [load_sts(DATA / "stsb" / "test.jsonl", name="stsb-test")]
  beir_sets = [] if not args.beir else [load_beir(DATA / "beir" / "msmarco-dl19-slice", name="dl19-slice")]
  pairs = pairs_lib.grid_pairs(encoder.config)
  print(harness.machine())
  print(f"{len(pairs)} pairs (layers 1..{encoder.config.num_hidden_layers} x dims {pairs_lib.default_dims(encoder.config)}); "
        f"data: {', '.join(s.name for s in sts_sets + beir_sets)}")
  ours, ours_times = timed(lambda: one_pass(encoder, sts_sets, beir_sets, pairs), args.repeats)
  theirs, their_times = timed(lambda: per_layer(encoder, sts_sets, beir_sets, pairs), args.repeats)
  worst = max(abs(ours[kind][name][pair][metric] - theirs[kind][name][pair][metric])
              for kind in ours for name in ours[kind] for pair in ours[kind][name] for metric in ours[kind][name][pair])
  a, b = statistics.median(ours_times), statistics.median(their_times)
  print(f"{'one pass':<10} {a:8.2f} s  ({min(ours_times):.2f}-{max(ours_times):.2f})")
  print(f"{'per layer':<10} {b:8.2f} s  ({min(their_times):.2f}-{max(their_times):.2f})")
  print(f"one pass is {b / a:.2f}x as fast; largest difference between their scores {worst:.2e}")


if __name__ == "__main__":
  main()
