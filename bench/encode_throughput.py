"""Prints CPU encoding throughput of our Encoder beside sentence-transformers on the same texts and machine.

    python bench/encode_throughput.py [--texts 2000] [--batch-size 64] [--max-length 128] [--repeats 3]

Model: the packaged all-MiniLM-L6-v2 at its full size (6 layers, 384 dims, mean pooling), float32.
Texts: STS-B train sentences from ../shared/data. Figures are medians over --repeats timed runs, after
one warm-up run that compiles every bucket shape. Achieved GFLOP/s uses XLA's own FLOP count of each
compiled batch shape.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from starbucks_jax.hf.load import default_model_dir  # noqa: E402
from starbucks_jax.inference import encoder as encoder_lib  # noqa: E402
from starbucks_jax.inference.encoder import Encoder  # noqa: E402


def load_texts(n):
  path = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb" / "train.jsonl"
  if not path.is_file():
    raise SystemExit(f"error: {path} is missing; this benchmark reads STS-B train from ../shared/data")
  rows = [json.loads(line) for line in path.read_text().splitlines()]
  texts = [r["sentence1"] for r in rows] + [r["sentence2"] for r in rows]
  return texts[:n]


def xla_flops(enc, texts, batch_size, max_length):
  """Sum of XLA's FLOP counts over the batches encode() runs for these texts."""
  ids = enc.tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
  lengths = sorted((len(x) for x in ids), reverse=True)
  total, cache = 0.0, {}
  for start in range(0, len(lengths), batch_size):
    length = encoder_lib.padded_length(lengths[start], max_length)
    if length not in cache:
      shape = np.zeros((batch_size, length), np.int32)
      lowered = encoder_lib.pooled_layers.lower(enc.params, shape, shape, config=enc.config,
                                                 num_layers=enc.config.num_hidden_layers,
                                                 layers=(enc.config.num_hidden_layers,), pooling="mean",
                                                 dtype=enc.dtype)
      cache[length] = lowered.compile().cost_analysis()["flops"]
    total += cache[length]
  return total, sum(lengths)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--texts", type=int, default=2000)
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--max-length", type=int, default=128)
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args()
  texts = load_texts(args.texts)
  folder = default_model_dir()

  enc = Encoder.from_pretrained(folder, max_length=args.max_length)
  ours = harness.time_steps(lambda: enc.encode(texts, batch_size=args.batch_size, pooling="mean",
                                               show_progress=False), args.repeats).median
  flops, tokens = xla_flops(enc, texts, args.batch_size, args.max_length)

  import torch
  from sentence_transformers import SentenceTransformer
  st = SentenceTransformer(folder, device="cpu")
  st.max_seq_length = args.max_length
  theirs = harness.time_steps(lambda: st.encode(texts, batch_size=args.batch_size, normalize_embeddings=False),
                              args.repeats).median
  peak, _ = harness.peak_gflops(None, "float32")

  print(harness.machine())
  print(f"{len(texts)} texts, {tokens} real tokens, batch {args.batch_size}, max length {args.max_length}, "
        f"float32, CPU threads: torch {torch.get_num_threads()}")
  print(f"{'':>24} {'texts/s':>9} {'tokens/s':>10} {'seconds':>8}")
  print(f"{'starbucks_jax Encoder':>24} {len(texts) / ours:>9.0f} {tokens / ours:>10.0f} {ours:>8.2f}")
  print(f"{'sentence-transformers':>24} {len(texts) / theirs:>9.0f} {tokens / theirs:>10.0f} {theirs:>8.2f}")
  print(f"starbucks_jax: {flops / ours / 1e9:.0f} GFLOP/s achieved (XLA count, padding included), "
        f"{100 * flops / ours / 1e9 / peak:.0f}% of the {peak:.0f} GFLOP/s measured matmul rate; "
        f"speed-up over sentence-transformers {theirs / ours:.2f}x")


if __name__ == "__main__":
  main()
