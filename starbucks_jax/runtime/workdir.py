"""A training workdir, and a model named by path: one meaning everywhere (train's init_from, encode,
evaluate, export).

A workdir holds:
  checkpoints/<step>/  Orbax checkpoints (`checkpoints.py`)
  model/               the model's Hugging Face config.json, tokenizer files and `starbucks.json`
                       (pooling, max_seq_length, normalize, num_layers, mlm_head), written at the start
  config.json          the training config, for the record and to refuse a different run's resume
  metrics.jsonl, tensorboard/, export/

`model/` plus any checkpoint's `params` is everything an export needs: no data, no config file (a LoRA
run's `params` are its adapters, merged into the base model that `starbucks.json` names).
A workdir may be a local folder or a bucket URL (`gs://...`, through `storage.py`). One run writes it at a
time (`lease.py`); others may read it meanwhile, so its files are written whole (a temporary name, then a
rename) and a reader never sees one cut short.
`resolve(path)` turns what a user names (a Hugging Face folder, a hub name, or a workdir, at its newest
checkpoint or at `step`) into a `ModelSource`, which reads the config cheaply (to check a request before
any weights are read) and the parameters on demand.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from starbucks_jax import storage
from starbucks_jax.errors import StarbucksError
from starbucks_jax.hf import load
from starbucks_jax.model.config import EncoderConfig, read_config_json
from starbucks_jax.model.lora import merged_into_base
from starbucks_jax.model.registry import config_from_hf_dict, family_of
from starbucks_jax.runtime import checkpoints, outputs

log = logging.getLogger(__name__)

MODEL_DIR = "model"
SETTINGS_FILE = "starbucks.json"
CONFIG_FILE = "config.json"
# Settings that may change between restarts of one run: where and how often to log, checkpoint,
# evaluate or export, and the mesh (a run preempted on one pod may resume on another; Orbax re-lays
# the checkpoint out). What is trained may not change.
VOLATILE_SETTINGS = frozenset({"checkpoint", "log_every_steps", "tensorboard", "progress_bar", "export", "eval",
                               "mesh", "wandb"})


def is_workdir(path) -> bool:
  """A training workdir has model/config.json (its top-level config.json is the training config)."""
  return (storage.as_path(path) / MODEL_DIR / "config.json").is_file()


def write_model_dir(workdir, config: EncoderConfig, tokenizer_dir: str | Path, settings: dict) -> None:
  """Writes `workdir/model`: what an export needs besides the parameters."""
  model_dir = storage.as_path(workdir) / MODEL_DIR
  model_dir.mkdir(parents=True, exist_ok=True)
  architecture = family_of(config).hf_names.base_architecture
  _write(model_dir / "config.json", json.dumps(config.to_hf_dict(architecture), indent=2) + "\n")
  for name in load.TOKENIZER_FILES:
    if (Path(tokenizer_dir) / name).is_file():
      _write(model_dir / name, (Path(tokenizer_dir) / name).read_bytes())
  _write(model_dir / SETTINGS_FILE, json.dumps(settings, indent=2) + "\n")


def _write(path, content: str | bytes) -> None:
  data = content.encode() if isinstance(content, str) else content
  outputs.write_file(path, lambda f: f.write(data), "a workdir file")


def read_model_dir(workdir) -> tuple[EncoderConfig, dict, object]:
  """(model config, `starbucks.json` settings, the model/ folder) of a workdir."""
  model_dir = storage.as_path(workdir) / MODEL_DIR
  if not (model_dir / "config.json").is_file():
    raise StarbucksError(f"{workdir} is not a training workdir: {model_dir / 'config.json'} is missing")
  config = config_from_hf_dict(read_config_json(model_dir / "config.json"), source=str(model_dir / "config.json"))
  settings_file = model_dir / SETTINGS_FILE
  settings = _read_json(settings_file, "the run's model settings") if settings_file.is_file() else {}
  return config, settings, model_dir


def _read_json(path, what: str) -> dict:
  try:
    value = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise StarbucksError(f"{path} ({what}) is damaged: not valid JSON ({e})") from None
  if not isinstance(value, dict):
    raise StarbucksError(f"{path} ({what}) is damaged: it does not hold a JSON object")
  return value


def write_run_config(workdir, config_json: str) -> None:
  _write(storage.as_path(workdir) / CONFIG_FILE, config_json + "\n")


def check_run_config(workdir, config_json: str) -> None:
  """Refuses a workdir whose checkpoints come from a run with a different config (they would be resumed).

  `config_json`: the new run's config as JSON (its ConfigDict's `to_json_best_effort()`)."""
  saved = storage.as_path(workdir) / CONFIG_FILE
  if not saved.is_file():
    return
  previous, current = _read_json(saved, "the config of the run that wrote this workdir"), json.loads(config_json)
  changed = sorted(k for k in set(previous) | set(current)
                   if k not in VOLATILE_SETTINGS and previous.get(k) != current.get(k))
  if changed and checkpoints.saved_steps(workdir):
    raise StarbucksError(f"{workdir} holds checkpoints of a run with a different config (differs in: "
                         f"{', '.join(changed)}); use a new --workdir")


@dataclasses.dataclass(frozen=True)
class ServingSettings:
  """How a model is meant to embed: its pooling, its max sequence length, whether it normalises."""
  pooling: str | None = None
  max_seq_length: int | None = None
  normalize: bool = False
  mlm_head: bool = False  # a pre-training run: its export keeps the MLM head
  prompts: dict = dataclasses.field(default_factory=dict)  # sentence-transformers' {"query": ..., "document": ...}


@dataclasses.dataclass(frozen=True)
class ModelSource:
  """A model to use or start from: a Hugging Face folder, or a training workdir at one of its checkpoints."""
  model_dir: Path             # config.json and the tokenizer files (a local copy of a bucket's)
  workdir: object = None      # a local or remote (epath) path
  step: int | None = None     # with a workdir: the checkpoint to read (None: the newest)

  @property
  def name(self):
    return self.workdir or self.model_dir

  def config(self) -> EncoderConfig:
    """Only the config: cheap, to check a request before any weights are read."""
    return read_model_dir(self.workdir)[0] if self.workdir else load.load_config(self.model_dir)

  def serving(self) -> ServingSettings:
    """A workdir's run settings (`starbucks.json`), or a folder's sentence-transformers settings."""
    if self.workdir:
      settings = read_model_dir(self.workdir)[1]
      return ServingSettings(settings.get("pooling"), settings.get("max_seq_length"),
                             bool(settings.get("normalize", False)), bool(settings.get("mlm_head", False)),
                             load.read_prompts(settings.get("prompts"), str(self.workdir)))
    pooling, max_seq_length, prompts = load.read_sentence_transformers_settings(self.model_dir)
    return ServingSettings(pooling, max_seq_length, prompts=prompts)

  def load_params(self) -> tuple[dict, int | None]:
    """(host parameters, the checkpoint's step, or None for a Hugging Face folder). A LoRA run's checkpoints
    hold its adapters alone: they come merged into the base it trained on, re-read (`model/lora.py`)."""
    if self.workdir is None:
      return dict(load.load_pretrained(self.model_dir).params), None
    params, step = checkpoints.restore_params(self.workdir, self.step)
    run_lora = read_model_dir(self.workdir)[1].get("lora")
    if run_lora:
      base = resolve(run_lora["base"], step=run_lora["base_step"], what="the LoRA run's base model")
      params = merged_into_base(params, run_lora, base.load_params()[0], self.config())
    return dict(params), step


def resolve(name_or_path, *, step: int | None = None, what: str = "model") -> ModelSource:
  """The ModelSource a user names: a workdir (its newest checkpoint, or `step`), a Hugging Face folder or
  a hub name. `what` names the setting in messages ("init_from", "--model")."""
  storage.check_store(name_or_path, what)
  path = storage.as_path(name_or_path)
  if is_workdir(path):
    steps = checkpoints.saved_steps(path)
    if not steps:
      raise StarbucksError(f"{what} {path} is a training workdir without checkpoints")
    if step is not None and step not in steps:
      raise StarbucksError(f"{path} has no checkpoint at step {step}; saved steps: {', '.join(map(str, steps))}")
    return ModelSource(storage.local_copy(path / MODEL_DIR, what), path, step)
  if step is not None:
    raise StarbucksError(f"a step ({step}) applies to a training workdir, and {name_or_path} is not one "
                         "(it has no model/config.json)")
  if path.is_dir() and not (path / "config.json").is_file():
    raise StarbucksError(f"{what} {path} is neither a training workdir (model/config.json and checkpoints/) "
                         "nor a Hugging Face folder (config.json)")
  return ModelSource(load.resolve_model_dir(name_or_path))
