"""Train a 2D Matryoshka (Starbucks) embedding model.

    python -m starbucks_jax.train --config configs/quickstart.py --workdir runs/quickstart \
        [--config.optimizer.lr=1e-4 ...]

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


def resolve_model(name: str) -> Path:
  from starbucks_jax import pretrained
  return pretrained.resolve_model_dir(pretrained.default_model_dir() if name == "minilm" else name)


def make_loss_spec(config, model_config):
  """The loss spec for `config.starbucks`; each mode gets only the fields it reads."""
  from starbucks_jax.matryoshka2d_loss import st_2dmse_layers
  from starbucks_jax.srl_loss import SrlLossSpec
  s = config.starbucks
  ints = lambda values: tuple(int(v) for v in values)
  pairs = tuple(ints(pair) for pair in s.pairs)
  fields = dict(mode=s.mode, objective=s.objective, similarity=s.similarity, scale=float(s.scale),
                temperature=float(s.temperature), normalize=bool(s.normalize),
                pair_weights=None if s.pair_weights is None else tuple(float(w) for w in s.pair_weights),
                num_model_layers=model_config.num_hidden_layers, hidden_size=model_config.hidden_size)
  if s.mode in ("starbucks", "grid"):
    fields.update(kl=s.kl, kl_weight=float(s.kl_weight), kl_temperature=float(s.kl_temperature),
                  embedding_kl_scale=float(s.embedding_kl_scale))
  if s.mode in ("starbucks", "separate", "2dmse"):
    fields["pairs"] = pairs
  if s.mode == "grid":
    fields.update(layers=ints(s.layers), dims=ints(s.dims))
  if s.mode == "2dmse":
    fields.update(layers=ints(s.layers) or st_2dmse_layers(model_config.num_hidden_layers),
                  dims=ints(s.dims) or tuple(sorted({d for _, d in pairs})))
  return SrlLossSpec(**fields)  # validates


def apply_dropout_overrides(model_config, model_settings):
  changes = {}
  if model_settings.hidden_dropout is not None:
    changes["hidden_dropout_prob"] = float(model_settings.hidden_dropout)
  if model_settings.attention_dropout is not None:
    changes["attention_probs_dropout_prob"] = float(model_settings.attention_dropout)
  for key, rate in changes.items():
    if not 0 <= rate < 1:
      raise StarbucksError(f"dropout rate {key}={rate} must be in [0, 1)")
  return model_config.replace(**changes) if changes else model_config


def validate_config(config) -> None:
  from starbucks_jax import pooling, train_step
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
  from starbucks_jax import optim
  optim.validate(config.optimizer)
  from starbucks_jax import pretrained
  from starbucks_jax.encoder import load_tokenizer
  model_dir = resolve_model(config.model.name)
  model_config = apply_dropout_overrides(pretrained.load_config(model_dir), config.model)
  spec = make_loss_spec(config, model_config)
  if spec.mode == "separate":  # the model is cut to the pair's layer count and trained as that
    model_config = model_config.replace(num_hidden_layers=spec.pairs[0][0])
  check_workdir(workdir, config)

  import jax
  from starbucks_jax import data as data_lib
  tokenizer = load_tokenizer(model_dir)
  data_config = data_lib.DataConfig.from_config_dict(config.data)
  train_data = data_lib.TrainData(data_config, tokenizer, global_batch_size=config.batch_size, seed=config.seed,
                                  process_index=jax.process_index(), process_count=jax.process_count())
  if (spec.objective == "cosent") != (train_data.kind == "scored"):
    raise StarbucksError(f"objective {spec.objective!r} does not fit {train_data.kind} data "
                         "(cosent needs scored pairs, mnrl needs pairs, triplets or retrieval groups)")
  import dataclasses
  spec = dataclasses.replace(spec, group_size=train_data.group_size)  # validates again

  from starbucks_jax.train_eval import TrainingEvaluator
  evaluator = TrainingEvaluator(config.eval, model_config, tokenizer, pooling=config.model.pooling,
                                default_pairs=spec.log_pairs())

  from starbucks_jax import checkpoints, sharding, train_step
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_divisible(config.batch_size, mesh, config.grad_accum_steps)
  total_steps = config.num_steps or max(1, int(round(config.num_epochs * train_data.steps_per_epoch)))
  tx, schedule = optim.make_optimizer(config.optimizer, total_steps)
  settings = train_step.StepSettings(model_config=model_config, spec=spec, pooling=config.model.pooling,
                                     dtype=config.model.dtype, remat=config.model.remat,
                                     grad_accum_steps=config.grad_accum_steps)

  # --- The workdir: what export needs, the config, the checkpoint manager. ---
  is_main = jax.process_index() == 0
  workdir.mkdir(parents=True, exist_ok=True)
  max_seq_length = max(data_config.query_max_length, data_config.passage_max_length)
  if is_main:
    checkpoints.write_model_dir(workdir, model_config, model_dir, {
        "pooling": config.model.pooling, "max_seq_length": max_seq_length,
        "normalize": bool(config.export.normalize), "num_layers": model_config.num_hidden_layers})
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
  run_checkpoints = checkpoints.RunCheckpoints(workdir, every_steps=config.checkpoint.every_steps,
                                               keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)

  # --- State: pretrained weights, or the newest checkpoint. ---
  params = pretrained.load_pretrained(model_dir).params
  params.pop("mlm_head", None)  # SRL does not train the MLM head
  if spec.mode == "separate":
    params["encoder"] = {k: v for k, v in params["encoder"].items()
                         if not k.startswith("layer_") or int(k.split("_")[1]) < model_config.num_hidden_layers}
  replicated = sharding.replicated(mesh)
  state = jax.jit(functools.partial(train_step.init_state, tx=tx, seed=config.seed), out_shardings=replicated)(params)
  start_step = run_checkpoints.latest_step() or 0
  if start_step:
    log.info("resuming from the checkpoint at step %d in %s", start_step, workdir / "checkpoints")
    state = run_checkpoints.restore(start_step, state)

  step_fn = jax.jit(functools.partial(train_step.train_step, tx=tx, settings=settings), donate_argnums=(0,),
                    in_shardings=(replicated, sharding.batch_sharding(mesh)), out_shardings=(replicated, replicated))

  from starbucks_jax.metrics_log import MetricsLog
  metrics_log = MetricsLog(workdir, resume_step=start_step, enabled=is_main, tensorboard=config.tensorboard)
  log.info("training %s: %d steps of %d queries (%d per epoch), pairs %s, %d device(s)", spec.mode, total_steps,
           config.batch_size, train_data.steps_per_epoch, spec.log_pairs(), mesh.devices.size)

  from tqdm.auto import tqdm
  progress = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                  disable=not (is_main and config.progress_bar), dynamic_ncols=True)
  last_metrics: dict = {}
  # Batches are made on a background thread one step ahead (tokenising overlaps the device step).
  prefetch = concurrent.futures.ThreadPoolExecutor(max_workers=1)
  pending = prefetch.submit(train_data.batch, start_step) if start_step < total_steps else None
  window_start, window_steps = time.perf_counter(), 0
  # Fault injection for the resume tests: SIGKILL this process once step N is done.
  fault_kill_step = int(os.environ.get("STARBUCKS_FAULT_KILL_AT_STEP", "0"))
  for step in range(start_step, total_steps):
    local_batch = pending.result()
    pending = prefetch.submit(train_data.batch, step + 1) if step + 1 < total_steps else None
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
