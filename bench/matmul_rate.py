"""The machine's large-matmul rate in JAX and PyTorch, float32 and bfloat16: the peaks MFU is taken against.

    python bench/matmul_rate.py [--sizes 2048,4096] [--repeats 5]

Rows: JAX float32; JAX bfloat16 with a bfloat16 result (XLA:CPU's generic path); JAX bfloat16 accumulated
into a float32 result (what `starbucks_jax/model/dense.py` uses on the CPU); PyTorch float32; PyTorch bfloat16.
On a CPU with AVX512-BF16 the bfloat16 rows that reach the BF16 instructions run at about twice float32.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402


def jax_variants(size: int):
  f32, bf16 = jnp.ones((size, size), jnp.float32), jnp.ones((size, size), jnp.bfloat16)
  plain = jax.jit(lambda x, y: x @ y)
  accumulate = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
  return {"jax float32": lambda: jax.block_until_ready(plain(f32, f32)),
          "jax bfloat16 -> bfloat16": lambda: jax.block_until_ready(plain(bf16, bf16)),
          "jax bfloat16 -> float32": lambda: jax.block_until_ready(accumulate(bf16, bf16))}


def torch_variants(size: int):
  import torch
  f32, bf16 = torch.ones(size, size), torch.ones(size, size, dtype=torch.bfloat16)
  return {"torch float32": lambda: f32 @ f32, "torch bfloat16": lambda: bf16 @ bf16}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--sizes", default="2048,4096")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--no-torch", action="store_true")
  args = p.parse_args()
  print(harness.machine())
  sizes = [int(s) for s in args.sizes.split(",")]
  print(f"{'matmul':28s}" + "".join(f"{f'{s}^3 GFLOP/s':>18s}" for s in sizes))
  rates = {}
  for size in sizes:
    variants = {**jax_variants(size), **({} if args.no_torch else torch_variants(size))}
    for name, run in variants.items():
      rates.setdefault(name, []).append(2 * size ** 3 / harness.time_steps(run, args.repeats).median / 1e9)
  for name, row in rates.items():
    print(f"{name:28s}" + "".join(f"{r:18.0f}" for r in row))


if __name__ == "__main__":
  main()
