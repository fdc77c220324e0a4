"""Time one SRL training step (forward, backward, AdamW) at a fixed shape; prints figures, asserts nothing.

    python bench/train_step_throughput.py [--model PATH] [--queries 32] [--group 2] [--length 32] \
        [--pairs 1:16,2:32,...] [--dtype float32|bfloat16] [--no-dropout] [--peak-gflops 390]

Defaults: the packaged all-MiniLM-L6-v2, the quickstart's shape (32 queries + 64 passages of 32 tokens)
and its six pairs. FLOPs are XLA's count for the compiled step; the peak defaults to the 390 GFLOP/s a
large float32 matmul reaches on the 2-core development machine.
"""

import argparse
import statistics
import time

import jax
import numpy as np

from starbucks_jax import optim, pretrained, train_step
from starbucks_jax.srl_loss import SrlLossSpec
from starbucks_jax.train_config import base_config


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default=None, help="HF folder (default: the packaged all-MiniLM-L6-v2)")
  p.add_argument("--pairs", default="1:16,2:32,3:64,4:128,5:256,6:384",
                 help="layer:dim pairs (BERT-base: 2:32,4:64,6:128,8:256,10:512,12:768)")
  p.add_argument("--queries", type=int, default=32)
  p.add_argument("--group", type=int, default=2)
  p.add_argument("--length", type=int, default=32)
  p.add_argument("--dtype", default="float32", choices=sorted(train_step.DTYPES))
  p.add_argument("--no-dropout", action="store_true")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--peak-gflops", type=float, default=390.0)
  args = p.parse_args()

  model = pretrained.load_pretrained(args.model or pretrained.default_model_dir())
  config = model.config
  if args.no_dropout:
    config = config.replace(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  layers, hidden = config.num_hidden_layers, config.hidden_size
  pairs = tuple(tuple(int(v) for v in pair.split(":")) for pair in args.pairs.split(","))
  spec = SrlLossSpec(mode="starbucks", num_model_layers=layers, hidden_size=hidden, pairs=pairs,
                     group_size=args.group)
  settings = train_step.StepSettings(model_config=config, spec=spec, dtype=args.dtype)
  rng = np.random.default_rng(0)
  side = lambda rows: {"input_ids": rng.integers(1000, 2000, (rows, args.length)).astype(np.int32),
                       "attention_mask": np.ones((rows, args.length), np.int32)}
  q, d = side(args.queries), side(args.queries * args.group)
  batch = {"query_input_ids": q["input_ids"], "query_attention_mask": q["attention_mask"],
           "passage_input_ids": d["input_ids"], "passage_attention_mask": d["attention_mask"]}
  tx, _ = optim.make_optimizer(base_config().optimizer, total_steps=1000)
  state = train_step.init_state(model.params, tx, seed=0)

  start = time.perf_counter()
  compiled = jax.jit(lambda s, b: train_step.train_step(s, b, tx, settings)).lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  flops = (compiled.cost_analysis() or {}).get("flops", 0.0)
  jax.block_until_ready(compiled(state, batch))
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(state, batch))
    times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  examples = args.queries
  tokens = args.queries * (1 + args.group) * args.length
  print(f"model {layers} layers, hidden {hidden}; pairs {pairs}; {args.dtype}; dropout "
        f"{'off' if args.no_dropout else 'on'}; {args.queries} queries x {args.group} passages, {args.length} tokens")
  print(f"compile {compile_s:.1f} s; step median of {args.repeats}: {step_s:.3f} s; {examples / step_s:.1f} "
        f"examples/s; {tokens / step_s:.0f} tokens/s")
  print(f"{flops / 1e9:.0f} GFLOP per step (XLA); {flops / step_s / 1e9:.0f} GFLOP/s; "
        f"{100 * flops / step_s / 1e9 / args.peak_gflops:.0f}% of {args.peak_gflops:.0f} GFLOP/s")


if __name__ == "__main__":
  main()
