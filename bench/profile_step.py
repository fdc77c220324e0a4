"""Profiles our SRL or SMAE training step with jax.profiler and prints where the time goes.

    python bench/profile_step.py srl  [--shape minilm|bert-base] [--queries 32] [--group 2] [--length 32]
    python bench/profile_step.py smae [--shape minilm|bert-base] [--batch 8] [--length 128]
        [--steps 2] [--dropout 0.1] [--trace-dir DIR] [--top 25]

Runs `--steps` steps (after a warm call) inside `jax.profiler.trace`, reads the Perfetto trace it
writes, and maps each XLA op of the trace back to the JAX source it came from (the op_name metadata of
the optimised HLO). Prints: time per step by kind (matmul, random bits for dropout, the rest), and the
top ops with their JAX op names. Open the trace itself in Perfetto or TensorBoard for the timeline.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402

import srl_step  # noqa: E402
import smae_step  # noqa: E402

_OP = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?metadata=\{[^}]*op_name="([^"]*)"')


def op_names(hlo_text: str) -> dict[str, str]:
  """{HLO instruction name: the JAX op name it was lowered from} for the optimised module."""
  names = {}
  for line in hlo_text.splitlines():
    m = _OP.match(line)
    if m:
      names.setdefault(m.group(1), m.group(2))
  return names


def kind(op: str, source: str) -> str:
  if any(k in source for k in ("random_bits", "threefry", "bernoulli", "random_wrap", "random_unwrap")):
    return "random bits (dropout)"
  if "dot_general" in source or op.startswith(("ynn_fusion", "dot", "onednn", "custom-call")):
    return "matmul"
  return "elementwise, copies, other"


def profile(step, steps: int, trace_dir: str) -> dict[str, float]:
  """{XLA op name: microseconds per step} from a jax.profiler trace of `steps` calls of a harness.JaxStep."""
  step.run()
  os.makedirs(trace_dir, exist_ok=True)
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for _ in range(steps):
      step.run()
  path = max(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True),
             key=os.path.getmtime)
  with gzip.open(path) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  ops = collections.Counter()
  for e in events:
    # The executor's own spans and Python frames ($...) wrap the ops; only leaf XLA ops are counted.
    if e.get("ph") == "X" and not e["name"].startswith(("$", "ThunkExecutor", "PjitFunction", "SlinkyThreadPool",
                                                         "DevicePut", "H2D", "D2H")):
      ops[e["name"]] += e.get("dur", 0) / steps
  return dict(ops)


def report(ops: dict[str, float], hlo_text: str, step_s: float, top: int) -> None:
  sources = op_names(hlo_text)
  by_kind = collections.Counter()
  for op, us in ops.items():
    by_kind[kind(op, sources.get(op, ""))] += us
  counted = sum(ops.values()) / 1e6
  print(f"\nstep {step_s:.3f} s (untraced median); traced ops add up to {counted:.3f} s per step")
  for k, us in by_kind.most_common():
    print(f"  {us / 1e6:8.3f} s  {100 * us / 1e6 / counted:5.1f}%  {k}")
  print(f"\ntop {top} ops, seconds per step:")
  for op, us in collections.Counter(ops).most_common(top):
    source = re.sub(r"^jit\([^)]*\)/", "", sources.get(op, "?"))
    print(f"  {us / 1e6:7.3f}  {op:<28} {source[:110]}")


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("loss", choices=["srl", "smae"])
  p.add_argument("--shape", default="minilm", choices=["minilm", "bert-base"])
  p.add_argument("--queries", type=int, default=32)
  p.add_argument("--group", type=int, default=2)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--length", type=int, default=0, help="default: 32 (srl), 128 (smae)")
  p.add_argument("--dropout", type=float, default=0.1)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--steps", type=int, default=2)
  p.add_argument("--top", type=int, default=25)
  p.add_argument("--trace-dir", default=None)
  args = p.parse_args()
  args.length = args.length or (32 if args.loss == "srl" else 128)
  if args.loss == "srl":
    _, model, pairs = srl_step.load(args.shape)
    batch = srl_step.make_batch(args.queries, args.group, args.length)
    step, step_args = srl_step.jax_step(model, pairs, batch, args.group, args.dtype, dropout=args.dropout)
  else:
    folder, model, pairs = smae_step.load(args.shape)
    batch = smae_step.make_batch(folder, args.batch, args.length)
    step, step_args = smae_step.jax_step(model, pairs, batch, args.dtype, dropout=args.dropout)
  timing, compiled = srl_step.harness.time_jax(step, *step_args, repeats=3)
  trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="starbucks_profile_")
  ops = profile(compiled, args.steps, trace_dir)
  print(f"{args.loss} step, {args.shape}, dropout {args.dropout}, {args.dtype}; trace in {trace_dir}")
  report(ops, compiled.compiled.as_text(), timing.median, args.top)


if __name__ == "__main__":
  main()
