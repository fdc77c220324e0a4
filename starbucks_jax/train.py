"""Train a 2D Matryoshka (Starbucks) embedding model: SRL fine-tuning or SMAE pre-training.

    python -m starbucks_jax.train --config configs/quickstart.py --workdir runs/quickstart \
        [--config.optimizer.lr=1e-4 ...]
    python -m starbucks_jax.train --config configs/smae_quickstart.py --workdir runs/smae
    python -m starbucks_jax.train --config configs/quickstart.py --workdir runs/smae_srl \
        --config.init_from=runs/smae

The config's `task` ("srl" or "smae") picks the loss and the kind of data (`train_setup.py`); the loop
below is the same for both.

The same command runs on one CPU or on many devices. Re-running it with the same --workdir resumes
from the newest checkpoint: batches depend only on (seed, step) and the RNG is in the checkpoint, so
the resumed run computes exactly what an uninterrupted one would. At the end the model is exported to
`workdir/export` as a Hugging Face / sentence-transformers folder.

Everything a user can get wrong (the config, the pairs, the data files) is checked before anything
compiles, and checkpoints already in the workdir are never overwritten by a different run's.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from starbucks_jax.errors import StarbucksError, run_cli

log = logging.getLogger("starbucks_jax.train")


def parse_flags(argv) -> tuple:
  """(config, workdir) from `--config FILE[:ARG] --workdir DIR [--config.key=value ...]`."""
  from absl import flags
  from ml_collections import config_flags
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "an ml_collections config file", flag_values=flag_values)
  flags.DEFINE_string("workdir", None, "where checkpoints, metrics and the export go", flag_values=flag_values)
  argv = list(argv)
  for i, arg in enumerate(argv):  # name a missing config file plainly, before absl's longer report
    if arg == "--config" and i + 1 < len(argv):
      path = argv[i + 1]
    elif arg.startswith("--config="):
      path = arg.split("=", 1)[1]
    else:
      continue
    config_file = Path(path.split(":")[0])  # FILE[:ARG]
    if not config_file.is_file():
      raise StarbucksError(f"config file {config_file} does not exist")
  try:
    flag_values(["starbucks_jax.train"] + argv)
    config = flag_values.config
    if config is not None:
      config.to_dict()  # a config file that failed to load raises only when first used
  except (flags.Error, OSError, AttributeError, KeyError, TypeError, ValueError, SyntaxError) as e:
    raise StarbucksError(f"bad command line: {' '.join(str(e).split())}") from None
  if config is None:
    raise StarbucksError("--config is required (for example --config configs/quickstart.py)")
  if not flag_values.workdir:
    raise StarbucksError("--workdir is required")
  return config, Path(flag_values.workdir)


def validate_config(config) -> None:
  """The settings every task shares; each task's own block is checked when its run is prepared."""
  from starbucks_jax import optim, pooling, train_step
  if config.model.pooling not in pooling.POOLINGS:
    raise StarbucksError(f"model.pooling must be one of {', '.join(pooling.POOLINGS)}, got {config.model.pooling!r}")
  if config.model.dtype not in train_step.DTYPES:
    raise StarbucksError(f"model.dtype must be one of {', '.join(train_step.DTYPES)}, got {config.model.dtype!r}")
  if config.batch_size < 1:
    raise StarbucksError(f"batch_size must be at least 1, got {config.batch_size}")
  if config.grad_accum_steps < 1:
    raise StarbucksError(f"grad_accum_steps must be at least 1, got {config.grad_accum_steps}")
  if config.num_steps is None and not config.num_epochs > 0:
    raise StarbucksError(f"num_epochs must be positive, got {config.num_epochs}")
  if config.num_steps is not None and config.num_steps < 1:
    raise StarbucksError(f"num_steps must be at least 1, got {config.num_steps}")
  if config.log_every_steps < 1 or config.checkpoint.every_steps < 1 or config.checkpoint.keep < 1:
    raise StarbucksError("log_every_steps, checkpoint.every_steps and checkpoint.keep must be at least 1")
  if not config.data.source:
    raise StarbucksError("data.source is empty: give a file, hf:NAME or tfds:NAME")
  optim.validate(config.optimizer)


def check_workdir(workdir: Path, config) -> None:
  """Refuses a workdir whose checkpoints come from a run with a different config (they would be resumed)."""
  saved = workdir / "config.json"
  if not saved.is_file():
    return
  previous, current = json.loads(saved.read_text()), json.loads(config.to_json_best_effort())
  # Where to log, checkpoint or export may change between restarts; what is trained may not.
  volatile = {"checkpoint", "log_every_steps", "tensorboard", "progress_bar", "export", "eval"}
  changed = sorted(k for k in set(previous) | set(current)
                   if k not in volatile and previous.get(k) != current.get(k))
  if changed and (workdir / "checkpoints").is_dir() and any((workdir / "checkpoints").iterdir()):
    raise StarbucksError(f"{workdir} holds checkpoints of a run with a different config (differs in: "
                         f"{', '.join(changed)}); use a new --workdir")


def main(argv=None) -> dict:
  config, workdir = parse_flags(sys.argv[1:] if argv is None else argv)
  return train(config, workdir)


def train(config, workdir: Path) -> dict:
  """Runs (or resumes) training; returns a summary: final step, last metrics, export path."""
  # --- Checks that need no compilation: config, model config, pairs, data files. ---
  validate_config(config)
  check_workdir(workdir, config)
  from starbucks_jax.train_setup import prepare
  setup = prepare(config)
  model_config, total_steps = setup.model_config, setup.total_steps

  import jax
  from starbucks_jax.train_eval import TrainingEvaluator
  evaluator = TrainingEvaluator(config.eval, model_config, setup.tokenizer, pooling=config.model.pooling,
                                default_pairs=setup.log_pairs)

  from starbucks_jax import checkpoints, optim, sharding, train_step
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_divisible(config.batch_size, mesh, config.grad_accum_steps)
  tx, schedule = optim.make_optimizer(config.optimizer, total_steps, trainable=setup.trainable)

  # --- The workdir: what export needs, the config, the checkpoint manager. ---
  is_main = jax.process_index() == 0
  workdir.mkdir(parents=True, exist_ok=True)
  if is_main:
    checkpoints.write_model_dir(workdir, model_config, setup.model_dir, setup.model_settings)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
  run_checkpoints = checkpoints.RunCheckpoints(workdir, every_steps=config.checkpoint.every_steps,
                                               keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)

  # --- State: pretrained weights, or the newest checkpoint. ---
  params = setup.load_params()
  replicated = sharding.replicated(mesh)
  state = jax.jit(functools.partial(train_step.init_state, tx=tx, seed=config.seed), out_shardings=replicated)(params)
  start_step = run_checkpoints.latest_step() or 0
  if start_step:
    log.info("resuming from the checkpoint at step %d in %s", start_step, workdir / "checkpoints")
    state = run_checkpoints.restore(start_step, state)

  step_fn = jax.jit(functools.partial(train_step.train_step, tx=tx, settings=setup.settings), donate_argnums=(0,),
                    in_shardings=(replicated, sharding.batch_sharding(mesh)), out_shardings=(replicated, replicated))

  from starbucks_jax.metrics_log import MetricsLog
  metrics_log = MetricsLog(workdir, resume_step=start_step, enabled=is_main, tensorboard=config.tensorboard)
  log.info("training %s: %d steps of %d examples, pairs %s, %d device(s)", setup.description, total_steps,
           config.batch_size, setup.log_pairs, mesh.devices.size)

  from tqdm.auto import tqdm
  progress = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                  disable=not (is_main and config.progress_bar), dynamic_ncols=True)
  last_metrics: dict = {}
  # Batches are made on a background thread one step ahead (tokenising overlaps the device step).
  prefetch = concurrent.futures.ThreadPoolExecutor(max_workers=1)
  pending = prefetch.submit(setup.data.batch, start_step) if start_step < total_steps else None
  window_start, window_steps = time.perf_counter(), 0
  # Fault injection for the resume tests: SIGKILL this process once step N is done.
  fault_kill_step = int(os.environ.get("STARBUCKS_FAULT_KILL_AT_STEP", "0"))
  for step in range(start_step, total_steps):
    local_batch = pending.result()
    pending = prefetch.submit(setup.data.batch, step + 1) if step + 1 < total_steps else None
    state, metrics = step_fn(state, sharding.put_batch(local_batch, mesh))
    window_steps += 1
    done = step + 1
    row = {}
    if done % config.log_every_steps == 0 or done == total_steps:
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      elapsed = time.perf_counter() - window_start
      last_metrics = {"loss": metrics.pop("loss"), "lr": float(schedule(step)),
                      "examples_per_sec": window_steps * config.batch_size / elapsed,
                      "skipped_steps": int(jax.device_get(state.skipped_steps)), **metrics}
      row.update(last_metrics)
      progress.set_postfix(loss=f"{last_metrics['loss']:.4f}", ex_s=f"{last_metrics['examples_per_sec']:.1f}")
    if is_main and evaluator.due(done, total_steps):
      scores = evaluator(state.params)
      row.update(scores)
      log.info("evaluation at step %d: %s", done, ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
    if row:
      metrics_log.write(done, row)
      window_start, window_steps = time.perf_counter(), 0
    run_checkpoints.save(state, done, force=done == total_steps)
    progress.update(1)
    if done == fault_kill_step:
      run_checkpoints.wait()
      os.kill(os.getpid(), signal.SIGKILL)
  progress.close()
  prefetch.shutdown()
  run_checkpoints.wait()
  metrics_log.close()
  if start_step < total_steps and int(jax.device_get(state.skipped_steps)):
    log.warning("%d of %d steps were skipped because their loss or gradients were not finite",
                int(jax.device_get(state.skipped_steps)), total_steps)

  export_dir = None
  if config.export.enabled and is_main:
    from starbucks_jax.export import export_workdir
    export_dir = export_workdir(workdir, workdir / "export", overwrite=True)
  return {"step": total_steps, "metrics": last_metrics, "export": export_dir}


if __name__ == "__main__":
  run_cli(main)
