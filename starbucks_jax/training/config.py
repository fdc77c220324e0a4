"""The training config: every setting a run shares, typed, with its default and its check.

A config file (`configs/*.py`) starts from `defaults.base_config()` (SRL fine-tuning) or
`defaults.smae_base_config()` (SMAE pre-training), ml_collections ConfigDicts made from the blocks below,
and changes what its run needs; any value can be overridden on the command line as
`--config.optimizer.lr=1e-4` or `--config.starbucks.pairs="((2,32),(4,64))"`. Before anything loads,
`tasks.read_config` checks the whole ConfigDict once and turns it into a frozen `TrainConfig`, which is
all the rest of the package reads.

Where each block's settings and defaults live:
  model       ModelOptions (below)           optimizer   training/optim.py OptimizerConfig
  mesh        runtime/sharding.py MeshConfig  checkpoint  runtime/checkpoints.py CheckpointConfig
  grad_cache  training/grad_cache.py GradCacheConfig  wandb  runtime/wandb_run.py WandbConfig
  lora        training/lora.py LoraConfig
  eval        EvalConfig (below)              export      ExportConfig (below)
  data, and the loss block (`starbucks` or `smae`): the task's (training/tasks/srl.py, smae.py).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax.numpy as jnp

from starbucks_jax.data.prompts import check as check_prompt, data_prompts, untemplated
from starbucks_jax.errors import StarbucksError
from starbucks_jax.model.remat import parse_remat, remat_policy
from starbucks_jax.evaluation.evaluator import EvalOptions
from starbucks_jax.evaluation.registry import EVALUATORS
from starbucks_jax.model.pooling import POOLINGS, SIMILARITIES
from starbucks_jax.pairs import parse_pairs
from starbucks_jax.runtime.checkpoints import CheckpointConfig
from starbucks_jax.runtime.sharding import MeshConfig
from starbucks_jax.runtime.wandb_run import WandbConfig
from starbucks_jax.training.grad_cache import GradCacheConfig
from starbucks_jax.training.lora import LoraConfig
from starbucks_jax.training.optim import OptimizerConfig

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class ModelOptions:
  """The starting model and how it runs (`config.model`).

  Attributes:
    name: a Hugging Face folder or hub name; "minilm" = the packaged all-MiniLM-L6-v2.
    pooling: a kind of `model/pooling.POOLINGS` ("mean", "cls", "last").
    dtype: compute dtype, "float32" | "bfloat16" (parameters stay float32).
    remat: what each encoder layer recomputes in the backward pass (`model/remat.py`): "dots" (the
      default: keeps the dense layers' outputs, recomputes the rest; less peak memory than "none" at
      about the same step time), "none", or "full" (the least memory, the slowest); the figures:
      BENCHMARKS.md, "Step memory". True and False still mean "full" and "none".
    hidden_dropout, attention_dropout: None keeps the model config's rate; 0 turns it off.
  """
  name: str = "bert-base-uncased"
  pooling: str = "mean"
  dtype: str = "float32"
  remat: bool | str = dataclasses.field(default="dots", metadata={"parse": parse_remat})
  hidden_dropout: float | None = None
  attention_dropout: float | None = None

  def __post_init__(self):
    if self.pooling not in POOLINGS:
      raise StarbucksError(f"model.pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
    remat_policy(self.remat, "model.remat")
    if self.dtype not in DTYPES:
      raise StarbucksError(f"model.dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
    for name in ("hidden_dropout", "attention_dropout"):
      rate = getattr(self, name)
      if rate is not None and not 0 <= rate < 1:
        raise StarbucksError(f"model.{name}={rate}: a dropout rate must be in [0, 1)")

  def dropout_overrides(self) -> dict[str, float]:
    """The model config fields these options change: {"hidden_dropout_prob": 0.0, ...}."""
    changes = {}
    if self.hidden_dropout is not None:
      changes["hidden_dropout_prob"] = self.hidden_dropout
    if self.attention_dropout is not None:
      changes["attention_probs_dropout_prob"] = self.attention_dropout
    return changes


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """Evaluation during training (`config.eval`), by process 0, into metrics.jsonl as
  eval/<data set>/n{n}_d{d}/<metric>.

  Attributes:
    every_steps: 0: evaluate only at the end (when sets are given); N: also every N steps.
    sets: one entry per evaluator, in the config as `eval.sts`, `eval.beir`: the files or folders to
      evaluate on (`evaluation/registry.py`).
    pairs: (layer, dim) pairs to score; empty: the pairs the run trains.
    batch_size: texts per encoding batch.
    packing: encode texts end to end in rows (`inference/encoder.py`): the same vectors, fewer pad tokens.
    query_max_length, passage_max_length: retrieval lengths; STS texts use the larger.
    similarity: retrieval scores, "cosine" | "dot" (match starbucks.similarity).
    query_prompt, passage_prompt: put before every query / passage (STS: the query prompt on both sentences;
      `data/prompts.py`); None: the data block's, so the model is evaluated on the texts it trained on.
  """
  every_steps: int = 0
  sets: Mapping[str, tuple[str, ...]] = dataclasses.field(
      default_factory=lambda: {name: () for name in EVALUATORS}, metadata={"flatten": True})
  pairs: tuple = dataclasses.field(default=(), metadata={"parse": parse_pairs})
  batch_size: int = 64
  packing: bool = False
  query_max_length: int = 32
  passage_max_length: int = 256
  similarity: str = "cosine"
  query_prompt: str | None = None
  passage_prompt: str | None = None

  def __post_init__(self):
    for name in ("query_prompt", "passage_prompt"):
      if getattr(self, name) is not None:
        check_prompt(getattr(self, name), f"eval.{name}")
    if self.every_steps < 0:
      raise StarbucksError(f"eval.every_steps must be >= 0, got {self.every_steps}")
    if self.similarity not in SIMILARITIES:
      raise StarbucksError(f"eval.similarity must be one of {', '.join(SIMILARITIES)}, got {self.similarity!r}")
    for name in ("batch_size", "query_max_length", "passage_max_length"):
      if getattr(self, name) < 1:
        raise StarbucksError(f"eval.{name} must be at least 1, got {getattr(self, name)}")

  def options(self, pooling: str) -> EvalOptions:
    return EvalOptions(pooling=pooling, batch_size=self.batch_size, query_max_length=self.query_max_length,
                       passage_max_length=self.passage_max_length, similarity=self.similarity,
                       packing=self.packing, show_progress=False, query_prompt=self.query_prompt or "",
                       passage_prompt=self.passage_prompt or "")

  def with_data_prompts(self, data) -> "EvalConfig":
    """The block with each unset prompt taken from the training data block's (an SMAE text block has none)."""
    # A mixture's prompts that hold a source's "{name}" or "{instruction}" are no one text: none (`prompts.py`).
    query, passage = map(untemplated, data_prompts(data)) if hasattr(data, "query_prompt") else ("", "")
    return dataclasses.replace(self, query_prompt=query if self.query_prompt is None else self.query_prompt,
                               passage_prompt=passage if self.passage_prompt is None else self.passage_prompt)


@dataclasses.dataclass(frozen=True)
class ExportConfig:
  """The export at the end of a run (`config.export`).

  Attributes:
    enabled: write workdir/export at the end.
    normalize: add sentence-transformers' Normalize module.
    max_seq_length: the tokens an export (and `evaluate` / `encode` of the workdir) reads per text;
      None: the starting model's (its sentence-transformers max_seq_length, else its position limit),
      not the training crop, which only bounds what training saw.
  """
  enabled: bool = True
  normalize: bool = False
  max_seq_length: int | None = None

  def __post_init__(self):
    if self.max_seq_length is not None and self.max_seq_length < 2:
      raise StarbucksError(f"export.max_seq_length must be at least 2, got {self.max_seq_length}")

  def serving_length(self, source, model_config) -> int:
    """The export's max_seq_length for a run starting from `source` (a `workdir.ModelSource`)."""
    length = self.max_seq_length or source.serving().max_seq_length or model_config.max_text_length
    return min(length, model_config.max_text_length)


# The task's blocks: `tasks.read_config` reads them with the task's classes, under the task's keys.
_TASK_BLOCK = {"external": True}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """A whole run's settings.

  Attributes:
    task: "srl" | "smae" (`training/tasks/`): which loss and which kind of data.
    seed: fixes the data order, the masks, dropout and any fresh initialisation.
    init_from: start from a training workdir's newest checkpoint or an exported folder (an SMAE run's
      output into SRL, say) instead of model.name's weights; its config and tokenizer are used too.
    init_from_step: with a workdir in init_from: start from its checkpoint at this step instead.
    batch_size: global: examples per step over all devices and hosts.
    grad_accum_steps: micro-batches per step (contrastive negatives come from within a micro-batch).
    grad_cache: SRL: the whole batch's loss and gradients, encoded in chunks (negatives from the whole
      batch; `training/grad_cache.py`). Off by default.
    num_epochs: the run's length, unless num_steps is set.
    lora: low-rank adapters on chosen matrices, the base frozen (`training/lora.py`); off (rank 0): full
      fine-tuning.
    log_every_steps: metrics.jsonl, TensorBoard and W&B every this many steps.
    wandb: Weights & Biases logging (`runtime/wandb_run.py`); off while wandb.project is empty.
    data: the task's data block (`data/srl.py` DataConfig, `data/smae.py` TextDataConfig).
    loss: the task's loss block (config key `starbucks` or `smae`).
  """
  task: str = "srl"
  seed: int = 0
  init_from: str | None = None
  init_from_step: int | None = None
  model: ModelOptions = dataclasses.field(default_factory=ModelOptions)
  batch_size: int = 128
  grad_accum_steps: int = 1
  grad_cache: GradCacheConfig = dataclasses.field(default_factory=GradCacheConfig)
  num_epochs: float = 1.0
  num_steps: int | None = None
  optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
  lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)
  mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
  checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
  log_every_steps: int = 10
  tensorboard: bool = True
  wandb: WandbConfig = dataclasses.field(default_factory=WandbConfig)
  progress_bar: bool = True
  eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
  export: ExportConfig = dataclasses.field(default_factory=ExportConfig)
  data: Any = dataclasses.field(default=None, metadata=_TASK_BLOCK)
  loss: Any = dataclasses.field(default=None, metadata=_TASK_BLOCK)

  def __post_init__(self):
    if self.init_from_step is not None and not self.init_from:
      raise StarbucksError("init_from_step needs init_from (a training workdir)")
    if self.seed < 0:
      raise StarbucksError(f"seed must be a non-negative integer, got {self.seed}")
    if self.batch_size < 1:
      raise StarbucksError(f"batch_size must be at least 1, got {self.batch_size}")
    if self.grad_accum_steps < 1:
      raise StarbucksError(f"grad_accum_steps must be at least 1, got {self.grad_accum_steps}")
    if self.grad_cache.enabled and self.grad_accum_steps > 1:
      raise StarbucksError(f"grad_cache and grad_accum_steps={self.grad_accum_steps} do not combine: GradCache "
                           "already encodes the batch in chunks, and keeps every negative; set grad_accum_steps=1")
    if self.num_steps is None and not (self.num_epochs > 0 and math.isfinite(self.num_epochs)):
      raise StarbucksError(f"num_epochs must be positive, got {self.num_epochs}")
    if self.num_steps is not None and self.num_steps < 1:
      raise StarbucksError(f"num_steps must be at least 1, got {self.num_steps}")
    if self.log_every_steps < 1:
      raise StarbucksError(f"log_every_steps must be at least 1, got {self.log_every_steps}")

  def total_steps(self, steps_per_epoch: int | None) -> int:
    """num_steps, or num_epochs of `steps_per_epoch` (None: the data's length is unknown)."""
    if self.num_steps is not None:
      return self.num_steps
    if steps_per_epoch is None:
      raise StarbucksError("the data's length is unknown (a stream whose size the hub does not report): "
                           "set --config.num_steps")
    return max(1, int(round(self.num_epochs * steps_per_epoch)))
