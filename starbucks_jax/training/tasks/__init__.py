"""The training tasks, by `config.task`: `srl` (fine-tuning) and `smae` (pre-training).

    config = read_config(config_dict)   # the whole ConfigDict checked once, as a typed TrainConfig
    setup = prepare(config)              # data, step settings, the starting weights (read on demand)

A new task registers here with one line (`TASKS`); `base.py` says what a task provides.
"""

from __future__ import annotations

import dataclasses

from starbucks_jax import config_blocks
from starbucks_jax.errors import StarbucksError
from starbucks_jax.training.config import TrainConfig
from starbucks_jax.training.tasks import smae, srl
from starbucks_jax.training.tasks.base import RunSetup, Task, model_source

TASKS: dict[str, Task] = {task.name: task for task in (
    srl.TASK,
    smae.TASK,
)}


def get_task(name) -> Task:
  if name not in TASKS:
    raise StarbucksError(f"task must be one of {', '.join(TASKS)}, got {name!r}")
  return TASKS[name]


def default_config(task_name: str):
  """The ConfigDict a config file of this task starts from: every setting at its default."""
  task = get_task(task_name)
  defaults = TrainConfig(task=task.name, **task.defaults)
  cd = config_blocks.to_config_dict(defaults)
  cd.data = config_blocks.to_config_dict(task.data_config)
  cd[task.loss_key] = config_blocks.to_config_dict(task.loss_config)
  return cd


def read_config(config_dict) -> TrainConfig:
  """The ConfigDict of a run, checked once: unknown keys, wrong types and bad values are errors that name
  the setting, raised before anything is loaded."""
  values = config_dict.to_dict() if hasattr(config_dict, "to_dict") else dict(config_dict)
  task = get_task(values.get("task", "srl"))
  data = values.pop("data", {})
  loss = values.pop(task.loss_key, {})
  config = config_blocks.from_config_dict(TrainConfig, values, "")
  data = config_blocks.from_config_dict(task.data_config, data, "data")
  return dataclasses.replace(config, data=data,
                             loss=config_blocks.from_config_dict(task.loss_config, loss, task.loss_key),
                             eval=config.eval.with_data_prompts(data))  # evaluated on the texts it trains on


def prepare(config: TrainConfig) -> RunSetup:
  """What the training loop needs for this run: checks the model's size and the data; reads no weights."""
  task = get_task(config.task)
  source = model_source(config)
  model_config = source.config()
  overrides = config.model.dropout_overrides()
  if overrides:
    model_config = model_config.replace(**overrides)
  return task.prepare(config, source, model_config)
