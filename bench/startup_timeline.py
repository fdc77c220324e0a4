"""`python -m starbucks_jax.train ARGS` with a timeline of its start-up on stderr, for `data_startup.py
startup --timeline`: one line "TL <s since launch> <thread> <event> [<s it took>]" per event.

    BENCH_T0=$(date +%s.%N) python bench/startup_timeline.py --config configs/quickstart.py --workdir /tmp/w

Events: the imports; `tasks.prepare` (tokenizer, every source opened and checked: "TrainData opened" each);
`build` (prepare, the weights read); the first state; each `TrainData.batch` (on the loop's prefetch thread);
how long the loop waits for a batch; each call of each step function (`jit_step`'s, told apart by a number),
blocked until its result is ready, so a call that compiles shows the compile; the checkpoint's save and wait.
Blocking on each step moves the waiting, not the work: a step's time is the same, the next batch is still
made during it. Launch time: $BENCH_T0 (the launcher's time.time()), else this script's start.
"""

import functools
import os
import runpy
import sys
import threading
import time

T0 = float(os.environ.get("BENCH_T0") or time.time())


def mark(event: str, seconds: float | None = None) -> None:
  took = f" {seconds:.2f}s" if seconds is not None else ""
  print(f"TL {time.time() - T0:7.2f} [{threading.current_thread().name[:10]}] {event}{took}", file=sys.stderr,
        flush=True)


def timed(owner, name: str, event: str) -> None:
  """Replaces owner.name by a wrapper that marks each call with its duration."""
  fn = getattr(owner, name)

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    started = time.time()
    out = fn(*args, **kwargs)
    mark(event, time.time() - started)
    return out

  setattr(owner, name, wrapper)


def timed_steps(loop) -> None:
  """Each step function `loop.build` makes marks each call, blocked until its result is ready."""
  import jax
  jit_step, made = loop.jit_step, []

  def traced_jit_step(*args, **kwargs):
    fn, number, calls = jit_step(*args, **kwargs), len(made) + 1, [0]
    made.append(fn)

    def step(state, batch):
      started = time.time()
      out = jax.block_until_ready(fn(state, batch))
      calls[0] += 1
      mark(f"step function {number}, call {calls[0]}", time.time() - started)
      return out

    return step

  loop.jit_step = traced_jit_step


def main() -> None:
  mark("python up")
  import jax  # noqa: F401  pylint: disable=unused-import
  mark("jax imported")
  from starbucks_jax.data import srl
  from starbucks_jax.runtime import checkpoints
  from starbucks_jax.training import loop
  mark("package imported")
  timed(loop.tasks, "prepare", "tasks.prepare (tokenizer, data opened and checked)")
  timed(loop, "build", "build (prepare, weights read)")
  timed(loop, "_initial_state", "first state")
  timed(loop, "_next_batch", "loop waited for its batch")
  timed(srl.TrainData, "__init__", "TrainData opened")
  timed(srl.TrainData, "batch", "TrainData.batch")
  timed(checkpoints.RunCheckpoints, "save", "checkpoint save")
  timed(checkpoints.RunCheckpoints, "wait", "checkpoint wait")
  timed_steps(loop)
  sys.argv = ["starbucks_jax.train", *sys.argv[1:]]
  try:
    runpy.run_module("starbucks_jax.train", run_name="__main__")
  finally:
    mark("train returned")


if __name__ == "__main__":
  main()
