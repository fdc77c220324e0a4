"""The optimizer: AdamW with warmup then linear or cosine decay, gradient clipping, and no weight decay
on biases and LayerNorm parameters (as BERT fine-tuning recipes and sentence-transformers do).

    tx, schedule = make_optimizer(config.optimizer, total_steps)   # config.optimizer: an OptimizerConfig
"""

from __future__ import annotations

import dataclasses
import math

import jax
import optax

from starbucks_jax.errors import StarbucksError

SCHEDULES = ("linear", "cosine", "constant")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """AdamW and its learning-rate schedule (`config.optimizer`).

  Attributes:
    lr: the peak learning rate.
    schedule: "linear" | "cosine" | "constant", after warmup.
    warmup_ratio: warmup steps as a share of the run; `warmup_steps` >= 0 overrides it.
    weight_decay: AdamW's decoupled decay, not applied to biases and LayerNorm.
    clip_grad_norm: the global gradient norm is clipped to this; 0 turns clipping off.
    b1, b2, eps: Adam's.
  """
  lr: float = 5e-5
  schedule: str = "linear"
  warmup_ratio: float = 0.1
  warmup_steps: int = -1
  weight_decay: float = 0.01
  clip_grad_norm: float = 1.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8

  def __post_init__(self):
    if not (self.lr > 0 and math.isfinite(self.lr)):
      raise StarbucksError(f"optimizer.lr must be a positive finite number, got {self.lr}")
    if self.schedule not in SCHEDULES:
      raise StarbucksError(f"optimizer.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
    if not 0 <= self.warmup_ratio <= 1:
      raise StarbucksError(f"optimizer.warmup_ratio must be in [0, 1], got {self.warmup_ratio}")
    if self.weight_decay < 0:
      raise StarbucksError(f"optimizer.weight_decay must be >= 0, got {self.weight_decay}")


def warmup_steps(optimizer_config: OptimizerConfig, total_steps: int) -> int:
  """`warmup_steps` when set (>= 0), else ceil(warmup_ratio x total_steps)."""
  if optimizer_config.warmup_steps >= 0:
    return int(optimizer_config.warmup_steps)
  return int(math.ceil(optimizer_config.warmup_ratio * total_steps))


def make_schedule(optimizer_config: OptimizerConfig, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `lr`, then the decay named by `schedule` down to 0 at `total_steps`."""
  lr, kind = optimizer_config.lr, optimizer_config.schedule
  warmup = min(warmup_steps(optimizer_config, total_steps), total_steps)
  decay_steps = max(total_steps - warmup, 1)
  if kind == "linear":
    decay = optax.linear_schedule(lr, 0.0, decay_steps)
  elif kind == "cosine":
    decay = optax.cosine_decay_schedule(lr, decay_steps)
  else:
    decay = optax.constant_schedule(lr)
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def decay_mask(params) -> dict:
  """True for parameters that get weight decay: kernels and embeddings, not biases or LayerNorm scales."""
  def wants_decay(path, _):
    names = [getattr(k, "key", str(k)) for k in path]
    return names[-1] not in ("bias", "scale")
  return jax.tree_util.tree_map_with_path(wants_decay, params)


def trainable_labels(params, trainable: tuple[str, ...]) -> dict:
  """"train" for the top-level parts named in `trainable`, "frozen" for the rest (e.g. the unused pooler)."""
  return {key: jax.tree.map(lambda _: "train" if key in trainable else "frozen", value)
          for key, value in params.items()}


def make_optimizer(optimizer_config: OptimizerConfig, total_steps: int, trainable: tuple[str, ...] = ("encoder",)
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW for the parts of the model tree named in `trainable`; the other parts never change (and so
  get no weight decay), but stay in the checkpoint and the export."""
  c = optimizer_config
  schedule = make_schedule(c, total_steps)
  steps = []
  if c.clip_grad_norm and c.clip_grad_norm > 0:
    steps.append(optax.clip_by_global_norm(c.clip_grad_norm))
  steps.append(optax.adamw(schedule, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay, mask=decay_mask))
  return optax.multi_transform({"train": optax.chain(*steps), "frozen": optax.set_to_zero()},
                               lambda params: trainable_labels(params, trainable)), schedule
