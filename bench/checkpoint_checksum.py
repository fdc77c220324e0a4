"""Prints what the checkpoint checksums cost: a BERT-base checkpoint with its Adam state, saved by Orbax,
then its files' CRC-32 recorded (as the training loop does, on a background thread) and verified (as
every restore, export and evaluation does first), beside Orbax's own save and restore times.

    python bench/checkpoint_checksum.py [--repeats 3] [--dir /tmp/ckpt_bench]
"""

import argparse
import functools
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from starbucks_jax.model import bert
from starbucks_jax.runtime import checkpoints
from starbucks_jax.training import optim, step as train_step


def timed(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    started = time.perf_counter()
    fn()
    times.append(time.perf_counter() - started)
  return statistics.median(times)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--dir", default=None, help="where to write the checkpoint (default: a temporary folder)")
  args = p.parse_args()
  root = Path(args.dir or tempfile.mkdtemp(prefix="ckpt_bench_"))
  config = bert.BertConfig()  # BERT-base: 12 layers, hidden 768, vocabulary 30522
  params = bert.init_params(config, jax.random.key(0))
  tx, _ = optim.make_optimizer(optim.OptimizerConfig(), total_steps=1000)
  state = train_step.init_state(params, tx, seed=0)
  # Adam's moments as after some training (at initialisation they are zeros, which Orbax compresses away).
  noise = lambda x: (np.random.default_rng(x.size).standard_normal(x.shape).astype(x.dtype) * 1e-3
                     if np.issubdtype(x.dtype, np.floating) and x.size > 1 else x)
  state = state.replace(opt_state=jax.tree.map(noise, state.opt_state))
  manager = checkpoints.RunCheckpoints(root, every_steps=1, keep=1, async_save=False)

  def save():
    shutil.rmtree(root / checkpoints.CHECKPOINT_DIR / "1", ignore_errors=True)
    manager.manager.reload()
    manager.save(state, 1, force=True)
    manager.manager.wait_until_finished()

  save_seconds = timed(save, args.repeats)
  manager._unrecorded = []  # this script records and checks by hand, to time them alone
  files = [f for f in checkpoints.step_dir(root, 1).rglob("*") if f.is_file()]
  size = sum(f.stat().st_size for f in files)
  record_seconds = timed(functools.partial(checkpoints.record_files, root, 1), args.repeats)
  check_seconds = timed(functools.partial(checkpoints.check_files, root, 1), args.repeats)
  params_only = timed(functools.partial(checkpoints.check_files, root, 1, items=("params",)), args.repeats)
  restore_seconds = timed(lambda: jax.block_until_ready(manager.restore(1, state).params), args.repeats)
  params_restore = timed(lambda: checkpoints.restore_params(root, 1), args.repeats)
  count = sum(np.size(x) for x in jax.tree.leaves(params))
  print(f"BERT-base: {count / 1e6:.1f}M parameters; checkpoint with Adam state: {len(files)} files, "
        f"{size / 2**20:.0f} MiB (median of {args.repeats})")
  print("| step | seconds |\n|---|---:|")
  print(f"| Orbax save (synchronous) | {save_seconds:.2f} |")
  print(f"| record sizes and CRC-32 of every file (background thread in training) | {record_seconds:.2f} |")
  print(f"| verify every file (a resume checks them first) | {check_seconds:.2f} |")
  print(f"| Orbax restore of the whole state | {restore_seconds:.2f} |")
  print(f"| verify the params files only (export, evaluate) | {params_only:.2f} |")
  print(f"| restore_params (verify params + Orbax restore to host) | {params_restore:.2f} |")
  if not args.dir:
    shutil.rmtree(root)


if __name__ == "__main__":
  main()
