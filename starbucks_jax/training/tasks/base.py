"""What a training task is, and what it hands the training loop.

A task (`srl`: fine-tuning on queries and passages; `smae`: pre-training on raw text) owns, in one
module: its config blocks (`data` and its loss block), its data, the static settings of its step (the
forward pass and the loss), which parts of the parameter tree train, and what an export needs to know.
`prepare` gives the loop a `RunSetup`; it checks the config, the model's size and the data, and reads
no weights and compiles nothing. The weights are read when the loop calls `load_params()`; a dry run
calls `load_params(abstract=True)`: their shapes alone (`start_params`).

Both tasks start from `model.name`, or from `init_from`: a training workdir (its newest checkpoint, or
`init_from_step`; its `model/` config and tokenizer) or an exported Hugging Face folder
(`runtime/workdir.py` resolves either).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Mapping

import jax

from starbucks_jax.hf import load
from starbucks_jax.model.config import EncoderConfig
from starbucks_jax.model.registry import family_of
from starbucks_jax.runtime import workdir
from starbucks_jax.training.config import TrainConfig

log = logging.getLogger("starbucks_jax.train")


@dataclasses.dataclass
class RunSetup:
  """Everything task-specific the training loop uses."""
  model_dir: Path                  # config.json and tokenizer files of the starting model
  model_config: EncoderConfig      # with the run's dropout overrides (and cut, for `separate`)
  tokenizer: object
  data: object                     # .batch(step) -> this host's numpy arrays of global batch `step`
  total_steps: int
  settings: object                 # the step's static settings: .loss(params, batch, rng),
                                   # .grad_accum_steps (`training/step.py`)
  trainable: tuple                 # top-level parts of the parameter tree the optimizer changes
  log_pairs: tuple                 # the (layer, dim) pairs logged and evaluated by default
  model_settings: dict             # written to workdir/model/starbucks.json: what export needs
  description: str                 # one log line saying what is trained
  load_params: Callable[..., dict]  # the starting parameters, read only when called; with abstract=True
                                    # their shapes alone (jax.ShapeDtypeStruct), nothing read
  settings_by_source: tuple = ()   # a mixture (`data/mixture.py`): each source's step settings, in the
                                   # order of `source_names`; data.source_of(step) picks one
  source_names: tuple = ()         # a mixture's sources; metrics go under source/<name>/...

  def step_settings(self) -> tuple:
    """The settings of every step the run compiles: one, or one per source of a mixture."""
    return self.settings_by_source or (self.settings,)


@dataclasses.dataclass(frozen=True)
class Task:
  """One kind of training.

  Attributes:
    name: the value of `config.task`.
    data_config: the dataclass of `config.data`.
    loss_key: the config key of the task's loss block ("starbucks", "smae").
    loss_config: the dataclass of that block.
    defaults: the shared settings whose defaults this task changes, e.g. {"batch_size": 512}; a block
      is given whole ({"optimizer": OptimizerConfig(lr=1e-4, ...)}).
    prepare: (TrainConfig, workdir.ModelSource, model config with the dropout overrides) -> RunSetup.
  """
  name: str
  data_config: type
  loss_key: str
  loss_config: type
  defaults: Mapping[str, Any]
  prepare: Callable


def model_source(config: TrainConfig) -> workdir.ModelSource:
  """`init_from` (a workdir, a folder or a hub name) when set, else `model.name`."""
  if config.init_from:
    return workdir.resolve(config.init_from, step=config.init_from_step, what="init_from")
  name = config.model.name
  return workdir.resolve(load.default_model_dir() if name == "minilm" else name, what="model.name")


def start_params(source: workdir.ModelSource, model_config: EncoderConfig, *, abstract: bool = False) -> dict:
  """The starting parameters, read from `source`; or, `abstract` (`--dry_run`), only their shapes and dtypes:
  the family's random init shape-evaluated (with its MLM head where it has one, as a pre-trained checkpoint
  does), so no weight is read or allocated and a folder with only config.json and a tokenizer serves an 8B
  model. A Hugging Face folder's Dense modules after pooling (small) are read as a real run reads them; a
  workdir's shapes are its model/ config's (a Dense head in its checkpoints is not counted)."""
  if abstract:
    family = family_of(model_config)
    params = jax.eval_shape(lambda: family.init_params(model_config, jax.random.key(0),
                                                       with_mlm_head=family.mlm is not None))
    if source.workdir is None:
      params.update(jax.eval_shape(lambda: load.read_dense_head(source.model_dir, model_config.hidden_size)))
    return dict(params)
  params, step = source.load_params()
  if step is not None:
    log.info("starting from %s, checkpoint at step %d", source.workdir, step)
  return params


def uses_dropout(model_config: EncoderConfig) -> bool:
  return model_config.hidden_dropout_prob > 0 or model_config.attention_probs_dropout_prob > 0
