"""The training loop, the same for every task (`tasks/`), one process or many.

    summary = train(config_dict, workdir)   # config_dict: what a config file's get_config() returns

Before anything compiles, the config is checked (`tasks.read_config`), the workdir is checked against
a different run's checkpoints and taken (its lease: one writer at a time, `runtime/lease.py`), and the
task checks the model's size and the data (`tasks.prepare`).
Then: the mesh, the optimizer, the starting weights or the newest readable checkpoint, and a loop that
steps, logs, evaluates, saves, and stops on SIGTERM with a checkpoint at the step it is on. At the end
the model is exported to `workdir/export`.

Each process joins the others (`runtime/distributed.py`), loads only its rows of every batch and puts
them on the mesh (`runtime/sharding.py`); process 0 alone writes metrics, evaluates and exports. Batches
depend only on (seed, step) and the RNG is in the checkpoint, so a resumed run computes exactly what an
uninterrupted one would.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import signal
import time

import jax
import numpy as np

from starbucks_jax.data import packing
from starbucks_jax.errors import StarbucksError
from starbucks_jax.model.registry import family_of
from starbucks_jax.runtime import checkpoints, distributed, lease, outputs, sharding, wandb_run, workdir as workdir_lib
from starbucks_jax.runtime.metrics import MetricsLog
from starbucks_jax.runtime.preemption import PreemptionWatch
from starbucks_jax.training import lora, optim, step as train_step, tasks
from starbucks_jax.training.config import TrainConfig
from starbucks_jax.training.evaluation import TrainingEvaluator
from starbucks_jax.training.export import export_params
from starbucks_jax.training.source_metrics import SourceMetrics

log = logging.getLogger("starbucks_jax.train")


@dataclasses.dataclass
class PreparedRun:
  """The pieces of a run that follow from config and data, before any state exists or anything compiles."""
  config: TrainConfig
  setup: tasks.RunSetup
  mesh: object
  tx: object
  schedule: object
  params: dict | None      # the starting parameters, on the host (None once the state holds them;
                           # shapes alone in a dry run)
  state_shardings: object
  step_fns: tuple          # jitted (state, batch) -> (state, metrics), state donated: one per source of a
                           # mixture (`data.source_of(step)` picks it), else one
  init_state: object       # params -> the first TrainState (full fine-tuning, or LoRA: `lora.py`)
  data_bytes_before_step_0: int | None = None  # what lazy sources fetched up to the first batch (else None)


def build(config: TrainConfig, *, abstract_params: bool = False) -> PreparedRun:
  """Joins the other processes, checks the model and the data, and sets up mesh, optimizer, weights and the
  (not yet compiled) step. `abstract_params` (the dry run): the weights are only shapes, none is read."""
  distributed.initialize()
  setup = tasks.prepare(config)
  lora.check_targets(config.lora, setup.model_config)  # before any weight is read
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_divisible(config.batch_size, mesh, config.grad_accum_steps)
  sharding.check_process_rows(mesh, config.batch_size)
  for settings in setup.step_settings():
    if settings.grad_cache:
      settings.grad_cache.check(config.batch_size, settings.spec.group_size, sharding.batch_devices(mesh))
  if setup.model_config.hidden_size % mesh.shape[sharding.FSDP_AXIS]:
    log.warning("hidden size %d is not divisible by mesh.fsdp=%d: parameters stay replicated",
                setup.model_config.hidden_size, mesh.shape[sharding.FSDP_AXIS])
  params = setup.load_params(abstract=abstract_params)
  trainable = lora.trainable(config, setup, params)  # the model's parts, or LoRA adapters on a frozen base
  setup.model_settings.update(trainable.record)  # what readers of a LoRA workdir merge by
  tx, schedule = optim.make_optimizer(config.optimizer, setup.total_steps, trainable=trainable.parts)
  init_state = trainable.init_state(tx, config.seed)
  abstract_state = jax.eval_shape(init_state, params)
  state_shardings = sharding.tree_shardings(abstract_state, mesh, family_of(setup.model_config).param_axes)

  jitted = {}  # sources with the same settings share a step
  for settings in setup.step_settings():
    if settings not in jitted:
      jitted[settings] = jit_step(settings, tx, mesh, state_shardings)
  step_fns = tuple(jitted[settings] for settings in setup.step_settings())
  return PreparedRun(config, setup, mesh, tx, schedule, params, state_shardings, step_fns, init_state)


def jit_step(settings, tx, mesh, state_shardings):
  """The training step for `settings`, jitted for the mesh: (state, batch) -> (state, metrics), state donated."""
  def step(state, batch):
    with sharding.activation_layout(mesh):  # traced under the mesh: activations split by example
      return train_step.train_step(state, batch, tx=tx, settings=settings)

  return jax.jit(step, donate_argnums=(0,), in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(state_shardings, sharding.replicated(mesh)),
                 compiler_options=train_step.compiler_options(settings.remat))


class _FaultInjection:
  """For the survival tests: SIGKILL this process once step STARBUCKS_FAULT_KILL_AT_STEP is done (after
  its checkpoint is on disk); sleep STARBUCKS_FAULT_STEP_SLEEP seconds after every step, so that a test's
  signal lands mid-run."""

  def __init__(self):
    self.kill_step = int(os.environ.get("STARBUCKS_FAULT_KILL_AT_STEP", "0"))
    self.step_sleep = float(os.environ.get("STARBUCKS_FAULT_STEP_SLEEP", "0"))

  def after_step(self, done: int, run_checkpoints) -> None:
    if done == self.kill_step:
      run_checkpoints.wait()
      os.kill(os.getpid(), signal.SIGKILL)
    if self.step_sleep:
      time.sleep(self.step_sleep)


def _open_workdir(run: PreparedRun, workdir, config_json: str, is_main: bool):
  """Writes what export needs and the config (process 0); returns the run's checkpoint manager."""
  config = run.config
  workdir.mkdir(parents=True, exist_ok=True)
  lora.check_base_unchanged(workdir, run.setup.model_settings)
  if is_main:
    workdir_lib.write_model_dir(workdir, run.setup.model_config, run.setup.model_dir, run.setup.model_settings)
    workdir_lib.write_run_config(workdir, config_json)
  return checkpoints.RunCheckpoints(workdir, every_steps=config.checkpoint.every_steps, keep=config.checkpoint.keep,
                                    async_save=config.checkpoint.async_save)


def _initial_state(run: PreparedRun, run_checkpoints) -> tuple[object, int]:
  """The starting weights' state, or the newest readable checkpoint's; (state, its step)."""
  state = jax.jit(run.init_state, out_shardings=run.state_shardings)(run.params)
  run.params = None  # the state holds them now
  state, start_step = run_checkpoints.restore_newest(state)
  if start_step:
    log.info("resuming from the checkpoint at step %d in %s", start_step, run_checkpoints.workdir / "checkpoints")
  return state, start_step


def train(config_dict, workdir) -> dict:
  """Runs (or resumes) training; returns a summary: final step, last metrics, export path, preempted, and
  for a finished run the pairs it trained and whether this is process 0 (`run_scores.run_summary` prints it)."""
  # --- Checks that need no compilation: config, workdir, model config, pairs, data files. ---
  config = tasks.read_config(config_dict)
  config.wandb.check()
  workdir = outputs.check_folder_output(workdir, "--workdir")
  config_json = config_dict.to_json_best_effort(indent=2)
  workdir_lib.check_run_config(workdir, config_json)
  distributed.initialize()  # the processes learn together whether they hold the workdir
  with lease.hold(workdir, config.checkpoint.lease_timeout_s):  # one writer per workdir: a second run stops here
    return _train(config, config_dict, config_json, workdir)


def _train(config: TrainConfig, config_dict, config_json: str, workdir) -> dict:
  """The run under the workdir's lease: load, compile, train, export."""
  run = build(config)
  evaluator = TrainingEvaluator(config.eval, run.setup.model_config, run.setup.tokenizer,
                                pooling=config.model.pooling, default_pairs=run.setup.log_pairs)
  is_main = jax.process_index() == 0
  run_checkpoints = _open_workdir(run, workdir, config_json, is_main)
  tracking = wandb_run.start(config.wandb, workdir, config_dict.to_dict()) if is_main else None  # before compiling
  state, start_step = _initial_state(run, run_checkpoints)
  metrics_log = MetricsLog(workdir, resume_step=start_step, enabled=is_main, tensorboard=config.tensorboard,
                           wandb_run=tracking)
  log.info("training %s: %d steps of %d examples, pairs %s, mesh %s over %d device(s) in %d process(es)",
           run.setup.description, run.setup.total_steps, config.batch_size, run.setup.log_pairs,
           dict(run.mesh.shape), run.mesh.devices.size, jax.process_count())
  try:
    state, done, last_metrics, preempted = _loop(run, state, start_step, evaluator, metrics_log, run_checkpoints,
                                                 is_main)
  finally:  # a bad row met mid-run (or any failure): the checkpoints begun are finished, the metrics flushed
    run_checkpoints.wait()
    metrics_log.close()
  data_read = {"data_bytes_before_step_0": run.data_bytes_before_step_0}
  total_steps = run.setup.total_steps
  if preempted:
    log.warning("preempted: saved the checkpoint at step %d of %d; run the same command to resume", done,
                total_steps)
    return {"step": done, "metrics": last_metrics, "export": None, "preempted": True, **data_read}
  if start_step < total_steps and int(jax.device_get(state.skipped_steps)):
    log.warning("%d of %d steps were skipped because their loss or gradients were not finite",
                int(jax.device_get(state.skipped_steps)), total_steps)
  export_dir = None
  if config.export.enabled:
    host_params = lora.host_params(state, run.mesh)  # every process takes part
    if is_main:
      export_dir = export_params(workdir, host_params, workdir / "export", step=total_steps, overwrite=True)
  return {"step": total_steps, "metrics": last_metrics, "export": export_dir, "preempted": False,
          "pairs": run.setup.log_pairs, "is_main": is_main, **data_read}


def _evaluate(evaluator: TrainingEvaluator, state, mesh, done: int, is_main: bool) -> dict[str, float]:
  """Process 0's evaluation scores at step `done`. A failing evaluation costs no training: the step's
  checkpoint is already saved, the error is logged, and the run goes on."""
  host_params = lora.host_params(state, mesh)  # every process takes part
  if not is_main:
    return {}
  try:
    scores = evaluator(host_params)
  except Exception as e:  # noqa: BLE001 - whatever went wrong, training must not be lost to it
    log.error("evaluation at step %d failed, training goes on: %s: %s", done, type(e).__name__, e)
    return {}
  log.info("evaluation at step %d: %s", done, ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
  return scores


def _agree_packed_rows(local_batch: dict, data) -> dict:
  """Packed batches of several hosts: every host pads its rows to the most any host packed this step, so
  the global arrays have one shape (hosts number their rows on their own: `data/packing.py`)."""
  from jax.experimental import multihost_utils
  rows = int(np.max(multihost_utils.process_allgather(np.int32(packing.packed_rows(local_batch)))))
  return packing.pad_to_rows(local_batch, rows, data.row_pads(), groups=data.pack_groups)


def _next_batch(pending, step: int, done: int) -> dict:
  """Batch `step` from the background thread; a bad row it met (lazy sources check rows as they are read)
  becomes one error naming the step, the checkpoints already saved untouched."""
  try:
    return pending.result()
  except StarbucksError as e:
    raise StarbucksError(f"{e}; in the batch of step {step + 1}, after step {done} of this run") from None


def _report_bytes_read(run: PreparedRun, step: int) -> None:
  """Logs what the data source fetched up to the first step's batch (lazy sources count: `data/shards.py`)."""
  tables = [getattr(part, "table", None) for part in getattr(run.setup.data, "parts", [run.setup.data])]
  counted = [t for t in tables if getattr(t, "bytes_read", None) is not None]  # a mixture's: every source's
  read = sum(t.bytes_read for t in counted) if counted else None
  run.data_bytes_before_step_0 = read
  if read is not None:
    total = sum(getattr(t, "total_bytes", None) or 0 for t in counted)
    log.info("data: %d bytes read before step %d%s", read, step, f" (of {total} in the files)" if total else "")


def _loop(run: PreparedRun, state, start_step: int, evaluator, metrics_log, run_checkpoints, is_main: bool):
  """Steps from `start_step` to the end or to a preemption; returns (state, steps done, the last logged
  metrics, whether it was preempted). Every checkpoint is on disk when it returns."""
  from tqdm.auto import tqdm
  config, setup, mesh, total_steps = run.config, run.setup, run.mesh, run.setup.total_steps
  progress = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                  disable=not (is_main and config.progress_bar), dynamic_ncols=True)
  preemption, faults = PreemptionWatch(), _FaultInjection()
  last_metrics: dict = {}
  # Batches are made on a background thread one step ahead (tokenising overlaps the device step).
  prefetch = concurrent.futures.ThreadPoolExecutor(max_workers=1)
  pending = prefetch.submit(setup.data.batch, start_step) if start_step < total_steps else None
  window_start, window_steps = time.perf_counter(), 0
  done, preempted = start_step, False
  per_source = SourceMetrics(setup.source_names, setup.data, start_step)
  for step in range(start_step, total_steps):
    local_batch = _next_batch(pending, step, done)
    if step == start_step:
      _report_bytes_read(run, step)
    pending = prefetch.submit(setup.data.batch, step + 1) if step + 1 < total_steps else None
    if jax.process_count() > 1 and packing.is_packed(local_batch):
      local_batch = _agree_packed_rows(local_batch, setup.data)
    step_fn = run.step_fns[setup.data.source_of(step) if setup.source_names else 0]
    state, metrics = step_fn(state, sharding.put_batch(local_batch, mesh))
    per_source.add(step, metrics["loss"])
    window_steps += 1
    done = step + 1
    row = {}
    if done % config.log_every_steps == 0 or done == total_steps:
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      last_metrics = {"loss": metrics.pop("loss"), "lr": float(run.schedule(step)),
                      "examples_per_sec": window_steps * config.batch_size / (time.perf_counter() - window_start),
                      "skipped_steps": int(jax.device_get(state.skipped_steps)), **metrics, **per_source.row()}
      row.update(last_metrics)
      progress.set_postfix(loss=f"{last_metrics['loss']:.4f}", ex_s=f"{last_metrics['examples_per_sec']:.1f}")
    preempted = done < total_steps and preemption.requested(done)
    run_checkpoints.save(state, done, force=done == total_steps or preempted)  # before evaluating
    if evaluator.due(done, total_steps):
      row.update(_evaluate(evaluator, state, mesh, done, is_main))
    if row:
      metrics_log.write(done, row)
      window_start, window_steps = time.perf_counter(), 0
    progress.update(1)
    faults.after_step(done, run_checkpoints)
    if preempted:
      break
  progress.close()
  preemption.close()
  prefetch.shutdown(wait=False, cancel_futures=True)
  run_checkpoints.wait()
  return state, done, last_metrics, preempted
