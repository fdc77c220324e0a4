"""Orbax checkpoints of a training run, and the model description that makes them exportable.

A workdir holds:
  checkpoints/<step>/{params,opt_state,train_meta}  Orbax, written asynchronously, the newest K kept
  model/            the model's Hugging Face config.json, tokenizer files and `starbucks.json`
                    (pooling, max_seq_length, normalize, num_layers), written once at the start
  config.json       the training config, for the record

`model/` plus any checkpoint's `params` is everything an export needs: no data, no config file.
Each checkpoint item is committed atomically by Orbax, so a half-written step is never restored.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from starbucks_jax.bert_config import BertConfig
from starbucks_jax.errors import StarbucksError
from starbucks_jax.hf_export import TOKENIZER_FILES

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
MODEL_DIR = "model"
SETTINGS_FILE = "starbucks.json"


class RunCheckpoints:
  """The checkpoints of one run: save every `every_steps` steps (and when forced), keep the newest
  `keep`, restore any of them. Saves run in the background; `wait()` blocks until they are on disk."""

  def __init__(self, workdir: str | Path, *, every_steps: int, keep: int, async_save: bool = True):
    self.every_steps = max(every_steps, 1)
    # Orbax may save at every step; `save` decides (Orbax alone would also save the very first step).
    options = ocp.CheckpointManagerOptions(save_interval_steps=1, max_to_keep=keep,
                                           enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(Path(workdir).absolute() / CHECKPOINT_DIR, options=options,
                                         item_names=("params", "opt_state", "train_meta"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, state, step: int, *, force: bool = False) -> bool:
    """Starts saving `state` (a TrainState at `step`) if that step is due; returns whether it did.

    The caller passes the step it counts on the host, so a step that saves nothing neither waits for
    the device (reading `state.step` would) nor lists the checkpoint folder.
    """
    if not (force or step % self.every_steps == 0) or step in self.manager.all_steps():
      return False
    meta = {"step": step, "skipped_steps": int(state.skipped_steps),
            "rng": np.asarray(jax.random.key_data(state.rng)).tolist()}
    return self.manager.save(step, force=True, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state.params), opt_state=ocp.args.StandardSave(state.opt_state),
        train_meta=ocp.args.JsonSave(meta)))

  def restore(self, step: int, template):
    """The TrainState saved at `step`, laid out like `template` (shapes, dtypes and shardings)."""
    abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract(template.params)),
        opt_state=ocp.args.StandardRestore(abstract(template.opt_state)),
        train_meta=ocp.args.JsonRestore()))
    meta = restored["train_meta"]
    if meta["step"] != step:
      raise StarbucksError(f"checkpoint {step} says it is step {meta['step']}; the workdir is damaged")
    rng = jax.random.wrap_key_data(np.asarray(meta["rng"], np.uint32))
    return template.replace(step=np.int32(step), params=restored["params"], opt_state=restored["opt_state"],
                            rng=rng, skipped_steps=np.int32(meta["skipped_steps"]))

  def wait(self) -> None:
    self.manager.wait_until_finished()


def write_model_dir(workdir: str | Path, config: BertConfig, tokenizer_dir: str | Path, settings: dict) -> None:
  """Writes `workdir/model`: what an export needs besides the parameters."""
  model_dir = Path(workdir) / MODEL_DIR
  model_dir.mkdir(parents=True, exist_ok=True)
  (model_dir / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n")
  for name in TOKENIZER_FILES:
    if (Path(tokenizer_dir) / name).is_file():
      shutil.copyfile(Path(tokenizer_dir) / name, model_dir / name)
  (model_dir / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")


def read_model_dir(workdir: str | Path) -> tuple[BertConfig, dict, Path]:
  model_dir = Path(workdir) / MODEL_DIR
  if not (model_dir / "config.json").is_file():
    raise StarbucksError(f"{workdir} is not a training workdir: {model_dir / 'config.json'} is missing")
  config = BertConfig.from_hf_dict(json.loads((model_dir / "config.json").read_text()))
  settings_file = model_dir / SETTINGS_FILE
  settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
  return config, settings, model_dir


def saved_steps(workdir: str | Path) -> list[int]:
  directory = Path(workdir) / CHECKPOINT_DIR
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def restore_params(workdir: str | Path, step: int | None = None):
  """The parameters saved at `step` (default: the newest checkpoint), as numpy arrays on the host."""
  steps = saved_steps(workdir)
  if not steps:
    raise StarbucksError(f"{workdir} has no checkpoints under {Path(workdir) / CHECKPOINT_DIR}")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise StarbucksError(f"{workdir} has no checkpoint at step {step}; saved steps: "
                         f"{', '.join(map(str, steps))}")
  path = Path(workdir).absolute() / CHECKPOINT_DIR / str(step) / "params"
  tree = ocp.StandardCheckpointHandler().metadata(path)  # shapes and dtypes of the saved tree
  # Restore onto the host CPU, whatever mesh the run used.
  cpu = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu), tree)
  params = ocp.StandardCheckpointer().restore(path, target)
  return jax.tree.map(np.asarray, params), step
