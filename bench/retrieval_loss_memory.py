"""Peak memory and time of the SRL retrieval loss alone (forward + backward to the pooled vectors).

    python bench/retrieval_loss_memory.py [--queries 128] [--group 8] [--hidden 768] [--repeats 3]

Ours: `srl_loss` with the MS MARCO config's spec (the six BERT-base pairs, dot product / temperature 1,
score KL weight 1), one [queries x docs] matrix product per pair. Theirs: the official retrieval
formulation (bench/torch_peers.py `einsum_retrieval_loss`), one [pairs x queries x docs x hidden]
einsum of elementwise products, each pair summing its first d coordinates. Inputs are the six pairs'
pooled vectors, random, [pairs, queries, hidden] and [pairs, queries x group, hidden]. Peak memory is
measured in a child process per variant (see bench/harness.py); the two losses' values are printed
side by side as a check that they compute the same thing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import harness  # noqa: E402
from starbucks_jax.losses.srl import srl_loss  # noqa: E402
from starbucks_jax.losses.srl_spec import SrlLossSpec  # noqa: E402
from starbucks_jax.pairs import BERT_BASE_PAIRS  # noqa: E402

VARIANTS = ("jax", "torch-einsum")


def inputs(args):
  rng = np.random.default_rng(0)
  pairs = len(BERT_BASE_PAIRS)
  q = rng.standard_normal((pairs, args.queries, args.hidden), np.float32) * 0.05
  p = rng.standard_normal((pairs, args.queries * args.group, args.hidden), np.float32) * 0.05
  return q, p


def build(variant: str, args):
  """(run forward + backward once and return the loss, compile seconds or None)."""
  q, p = inputs(args)
  if variant == "jax":
    spec = SrlLossSpec(mode="starbucks", num_model_layers=12, hidden_size=args.hidden, pairs=BERT_BASE_PAIRS,
                       similarity="dot", temperature=1.0, group_size=args.group)
    layers = [n for n, _ in BERT_BASE_PAIRS]

    def loss(q, p):
      query = {n: q[k] for k, n in enumerate(layers)}
      passage = {n: p[k] for k, n in enumerate(layers)}
      return srl_loss(query, passage, None, spec, jax.random.key(0))[0]

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    q, p = jnp.asarray(q), jnp.asarray(p)
    compiled = grad.lower(q, p).compile()
    return lambda: float(jax.block_until_ready(compiled(q, p))[0]), None
  import torch
  import torch_peers
  dims = [d for _, d in BERT_BASE_PAIRS]
  q, p = torch.tensor(q, requires_grad=True), torch.tensor(p, requires_grad=True)

  def run():
    q.grad = p.grad = None
    value = torch_peers.einsum_retrieval_loss(q, p, dims)
    value.backward()
    return float(value.detach())
  return run, None


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--queries", type=int, default=128)
  p.add_argument("--group", type=int, default=8)
  p.add_argument("--hidden", type=int, default=768)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--json", default=None)
  harness.add_memory_flags(p)
  args = p.parse_args()
  if args.memory_of:
    harness.print_peak_memory(build(args.memory_of, args)[0])
    return
  print(harness.machine())
  shape = f"{args.queries} queries x {args.group} docs, hidden {args.hidden}, pairs {BERT_BASE_PAIRS}"
  print(f"SRL retrieval loss, forward + backward to the pooled vectors: {shape}")
  print(f"{'variant':<14} {'loss':>12} {'seconds':>9} {'peak MiB':>9}")
  rows = []
  for variant in VARIANTS:
    run, compile_s = build(variant, args)
    value = run()
    timing = harness.time_steps(run, args.repeats, compile_s)
    peak = None if args.no_memory else harness.peak_memory_in_subprocess(variant)
    rows.append(harness.Row("retrieval_loss", variant, shape, "float32", timing, args.queries,
                            args.queries * (1 + args.group), 0.0, 1.0, peak, None, harness.command_line()))
    peak_text = "-" if peak is None else f"{peak / 2 ** 20:.0f}"
    print(f"{variant:<14} {value:>12.6f} {timing.median:>9.3f} {peak_text:>9}", flush=True)
  if all(r.peak_bytes for r in rows):
    print(f"peak memory: ours is {rows[0].peak_bytes / rows[1].peak_bytes:.4f} of the einsum version's")
  harness.save_rows(rows, args.json)


if __name__ == "__main__":
  main()
