"""Train a 2D Matryoshka (Starbucks) embedding model: SRL fine-tuning or SMAE pre-training.

    python -m starbucks_jax.train --config configs/quickstart.py --workdir runs/quickstart \
        [--config.optimizer.lr=1e-4 ...]
    python -m starbucks_jax.train --config configs/smae_quickstart.py --workdir runs/smae
    python -m starbucks_jax.train --config configs/quickstart.py --workdir runs/smae_srl \
        --config.init_from=runs/smae

The config's `task` ("srl" or "smae") picks the loss and the kind of data (`train_setup.py`); the loop
below is the same for both.

The same command runs on one CPU, on many devices and on many hosts: started by a launcher
(`launch/`), each process joins the others (`distributed.py`), loads only its rows of every batch and
puts them on a mesh of `mesh.data` x `mesh.fsdp` devices (`sharding.py`). Process 0 alone logs,
evaluates and exports.

Re-running the command with the same --workdir resumes from the newest readable checkpoint: batches
depend only on (seed, step) and the RNG is in the checkpoint, so the resumed run computes exactly what
an uninterrupted one would. On SIGTERM (preemption) the run saves a checkpoint at the step it is on and
exits with status 0. At the end the model is exported to `workdir/export` as a Hugging Face /
sentence-transformers folder.

    python -m starbucks_jax.train --config configs/srl_allnli_bert_base.py --dry_run [--cpu_devices 8 \
        --config.mesh.fsdp=8]

compiles the step for the configured mesh without running it and prints the memory each device needs.

Everything a user can get wrong (the config, the pairs, the data files) is checked before anything
compiles, and checkpoints already in the workdir are never overwritten by a different run's.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
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


@dataclasses.dataclass(frozen=True)
class RunOptions:
  """The command line beside the config."""
  dry_run: bool = False          # compile the step for the mesh and report memory; train nothing
  cpu_devices: int | None = None  # simulate this many CPU devices (must be set before JAX starts)


def parse_flags(argv) -> tuple:
  """(config, workdir, RunOptions) from `--config FILE[:ARG] --workdir DIR [--config.key=value ...]
  [--dry_run] [--cpu_devices N]`."""
  from absl import flags
  from ml_collections import config_flags
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "an ml_collections config file", flag_values=flag_values)
  flags.DEFINE_string("workdir", None, "where checkpoints, metrics and the export go", flag_values=flag_values)
  flags.DEFINE_bool("dry_run", False, "compile the training step for the configured mesh, print parameter "
                    "and activation memory per device, and stop (nothing is written)", flag_values=flag_values)
  flags.DEFINE_integer("cpu_devices", None, "run on this many simulated CPU devices, e.g. to --dry_run a pod's "
                       "mesh on a workstation", flag_values=flag_values)
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
  options = RunOptions(dry_run=flag_values.dry_run, cpu_devices=flag_values.cpu_devices)
  if options.cpu_devices is not None and options.cpu_devices < 1:
    raise StarbucksError(f"--cpu_devices must be at least 1, got {options.cpu_devices}")
  if not flag_values.workdir and not options.dry_run:
    raise StarbucksError("--workdir is required")
  return config, Path(flag_values.workdir) if flag_values.workdir else None, options


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
  # Where to log, checkpoint or export may change between restarts, and so may the mesh (a run preempted
  # on one pod may resume on another; Orbax re-lays the checkpoint out); what is trained may not.
  volatile = {"checkpoint", "log_every_steps", "tensorboard", "progress_bar", "export", "eval", "mesh"}
  changed = sorted(k for k in set(previous) | set(current)
                   if k not in volatile and previous.get(k) != current.get(k))
  if changed and (workdir / "checkpoints").is_dir() and any((workdir / "checkpoints").iterdir()):
    raise StarbucksError(f"{workdir} holds checkpoints of a run with a different config (differs in: "
                         f"{', '.join(changed)}); use a new --workdir")


def main(argv=None) -> dict:
  config, workdir, options = parse_flags(sys.argv[1:] if argv is None else argv)
  if options.cpu_devices:
    use_cpu_devices(options.cpu_devices)
  if options.dry_run:
    from starbucks_jax.dry_run import dry_run
    return dry_run(config)
  return train(config, workdir)


def use_cpu_devices(count: int) -> None:
  """Makes JAX see `count` CPU devices; XLA reads the flag when its backends start, so they must not have."""
  if "jax" in sys.modules:
    from jax._src import xla_bridge
    if xla_bridge.backends_are_initialized():
      raise StarbucksError("--cpu_devices cannot take effect: JAX's devices were already set up in this process")
  os.environ["JAX_PLATFORMS"] = "cpu"
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
  os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={count}"])


@dataclasses.dataclass
class PreparedRun:
  """The pieces of a run that follow from config and data, before any state exists or anything compiles."""
  setup: object
  mesh: object
  tx: object
  schedule: object
  params: dict            # the starting parameters, on the host
  state_shardings: object
  step_fn: object         # jitted (state, batch) -> (state, metrics), state donated


def build(config) -> PreparedRun:
  """Joins the other processes, checks the data, and sets up mesh, optimizer, weights and the (not yet
  compiled) step. `config` has passed `validate_config`."""
  from starbucks_jax import distributed
  distributed.initialize()
  from starbucks_jax.train_setup import prepare
  setup = prepare(config)

  import jax
  from starbucks_jax import optim, sharding, train_step
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_divisible(config.batch_size, mesh, config.grad_accum_steps)
  sharding.check_process_rows(mesh, config.batch_size)
  if setup.model_config.hidden_size % mesh.shape[sharding.FSDP_AXIS]:
    log.warning("hidden size %d is not divisible by mesh.fsdp=%d: parameters stay replicated",
                setup.model_config.hidden_size, mesh.shape[sharding.FSDP_AXIS])
  tx, schedule = optim.make_optimizer(config.optimizer, setup.total_steps, trainable=setup.trainable)
  params = setup.load_params()
  abstract_state = jax.eval_shape(functools.partial(train_step.init_state, tx=tx, seed=config.seed), params)
  state_shardings = sharding.tree_shardings(abstract_state, mesh)

  def step(state, batch):
    with sharding.activation_layout(mesh):  # traced under the mesh: activations split by example
      return train_step.train_step(state, batch, tx=tx, settings=setup.settings)

  step_fn = jax.jit(step, donate_argnums=(0,), in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                    out_shardings=(state_shardings, sharding.replicated(mesh)))
  return PreparedRun(setup, mesh, tx, schedule, params, state_shardings, step_fn)


def train(config, workdir: Path) -> dict:
  """Runs (or resumes) training; returns a summary: final step, last metrics, export path, preempted."""
  # --- Checks that need no compilation: config, workdir, model config, pairs, data files. ---
  validate_config(config)
  check_workdir(workdir, config)
  run = build(config)
  setup, mesh, total_steps = run.setup, run.mesh, run.setup.total_steps

  import jax
  from starbucks_jax import checkpoints, sharding, train_step
  from starbucks_jax.preemption import PreemptionWatch
  from starbucks_jax.train_eval import TrainingEvaluator
  evaluator = TrainingEvaluator(config.eval, setup.model_config, setup.tokenizer, pooling=config.model.pooling,
                                default_pairs=setup.log_pairs)

  # --- The workdir: what export needs, the config, the checkpoint manager. ---
  is_main = jax.process_index() == 0
  workdir.mkdir(parents=True, exist_ok=True)
  if is_main:
    checkpoints.write_model_dir(workdir, setup.model_config, setup.model_dir, setup.model_settings)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
  run_checkpoints = checkpoints.RunCheckpoints(workdir, every_steps=config.checkpoint.every_steps,
                                               keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)

  # --- State: the starting weights, or the newest readable checkpoint. ---
  state = jax.jit(functools.partial(train_step.init_state, tx=run.tx, seed=config.seed),
                  out_shardings=run.state_shardings)(run.params)
  run.params = None  # the state holds them now
  state, start_step = run_checkpoints.restore_newest(state)
  if start_step:
    log.info("resuming from the checkpoint at step %d in %s", start_step, workdir / "checkpoints")

  from starbucks_jax.metrics_log import MetricsLog
  metrics_log = MetricsLog(workdir, resume_step=start_step, enabled=is_main, tensorboard=config.tensorboard)
  log.info("training %s: %d steps of %d examples, pairs %s, mesh %s over %d device(s) in %d process(es)",
           setup.description, total_steps, config.batch_size, setup.log_pairs, dict(mesh.shape), mesh.devices.size,
           jax.process_count())

  from tqdm.auto import tqdm
  progress = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                  disable=not (is_main and config.progress_bar), dynamic_ncols=True)
  preemption = PreemptionWatch()
  last_metrics: dict = {}
  # Batches are made on a background thread one step ahead (tokenising overlaps the device step).
  prefetch = concurrent.futures.ThreadPoolExecutor(max_workers=1)
  pending = prefetch.submit(setup.data.batch, start_step) if start_step < total_steps else None
  window_start, window_steps = time.perf_counter(), 0
  # Fault injection for the survival tests: SIGKILL this process once step N is done; sleep S seconds
  # after every step, so that a test's signal lands mid-run.
  fault_kill_step = int(os.environ.get("STARBUCKS_FAULT_KILL_AT_STEP", "0"))
  fault_step_sleep = float(os.environ.get("STARBUCKS_FAULT_STEP_SLEEP", "0"))
  done, preempted = start_step, False
  for step in range(start_step, total_steps):
    local_batch = pending.result()
    pending = prefetch.submit(setup.data.batch, step + 1) if step + 1 < total_steps else None
    state, metrics = run.step_fn(state, sharding.put_batch(local_batch, mesh))
    window_steps += 1
    done = step + 1
    row = {}
    if done % config.log_every_steps == 0 or done == total_steps:
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      elapsed = time.perf_counter() - window_start
      last_metrics = {"loss": metrics.pop("loss"), "lr": float(run.schedule(step)),
                      "examples_per_sec": window_steps * config.batch_size / elapsed,
                      "skipped_steps": int(jax.device_get(state.skipped_steps)), **metrics}
      row.update(last_metrics)
      progress.set_postfix(loss=f"{last_metrics['loss']:.4f}", ex_s=f"{last_metrics['examples_per_sec']:.1f}")
    if evaluator.due(done, total_steps):
      host_params = sharding.gather_to_host(state.params, mesh)  # every process takes part
      if is_main:
        scores = evaluator(host_params)
        row.update(scores)
        log.info("evaluation at step %d: %s", done, ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
    if row:
      metrics_log.write(done, row)
      window_start, window_steps = time.perf_counter(), 0
    preempted = done < total_steps and preemption.requested(done)
    run_checkpoints.save(state, done, force=done == total_steps or preempted)
    progress.update(1)
    if done == fault_kill_step:
      run_checkpoints.wait()
      os.kill(os.getpid(), signal.SIGKILL)
    if fault_step_sleep:
      time.sleep(fault_step_sleep)
    if preempted:
      break
  progress.close()
  preemption.close()
  prefetch.shutdown(wait=False, cancel_futures=True)
  run_checkpoints.wait()
  metrics_log.close()
  if preempted:
    log.warning("preempted: saved the checkpoint at step %d of %d; run the same command to resume", done,
                total_steps)
    return {"step": done, "metrics": last_metrics, "export": None, "preempted": True}
  if start_step < total_steps and int(jax.device_get(state.skipped_steps)):
    log.warning("%d of %d steps were skipped because their loss or gradients were not finite",
                int(jax.device_get(state.skipped_steps)), total_steps)

  export_dir = None
  if config.export.enabled:
    host_params = sharding.gather_to_host(state.params, mesh)  # every process takes part
    if is_main:
      from starbucks_jax.export import export_params
      export_dir = export_params(workdir, host_params, workdir / "export", step=total_steps, overwrite=True)
  return {"step": total_steps, "metrics": last_metrics, "export": export_dir, "preempted": False}


if __name__ == "__main__":
  run_cli(main)
