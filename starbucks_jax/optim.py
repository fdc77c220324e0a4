"""The optimizer: AdamW with warmup then linear or cosine decay, gradient clipping, and no weight decay
on biases and LayerNorm parameters (as BERT fine-tuning recipes and sentence-transformers do).

    tx, schedule = make_optimizer(config.optimizer, total_steps)
"""

from __future__ import annotations

import math

import jax
import optax

from starbucks_jax.errors import StarbucksError

SCHEDULES = ("linear", "cosine", "constant")


def warmup_steps(optimizer_config, total_steps: int) -> int:
  """`warmup_steps` when set (>= 0), else ceil(warmup_ratio x total_steps)."""
  steps = optimizer_config.get("warmup_steps", -1)
  if steps is not None and steps >= 0:
    return int(steps)
  return int(math.ceil(optimizer_config.get("warmup_ratio", 0.0) * total_steps))


def make_schedule(optimizer_config, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `lr`, then the decay named by `schedule` down to 0 at `total_steps`."""
  lr, kind = optimizer_config.lr, optimizer_config.get("schedule", "linear")
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


def validate(optimizer_config) -> None:
  if not optimizer_config.lr > 0:
    raise StarbucksError(f"optimizer.lr must be positive, got {optimizer_config.lr}")
  if optimizer_config.get("schedule", "linear") not in SCHEDULES:
    raise StarbucksError(f"optimizer.schedule must be one of {', '.join(SCHEDULES)}, "
                         f"got {optimizer_config.schedule!r}")
  if not 0 <= optimizer_config.get("warmup_ratio", 0.0) <= 1:
    raise StarbucksError(f"optimizer.warmup_ratio must be in [0, 1], got {optimizer_config.warmup_ratio}")
  if optimizer_config.get("weight_decay", 0.0) < 0:
    raise StarbucksError(f"optimizer.weight_decay must be >= 0, got {optimizer_config.weight_decay}")


def trainable_labels(params, trainable: tuple[str, ...]) -> dict:
  """"train" for the top-level parts named in `trainable`, "frozen" for the rest (e.g. the unused pooler)."""
  return {key: jax.tree.map(lambda _: "train" if key in trainable else "frozen", value)
          for key, value in params.items()}


def make_optimizer(optimizer_config, total_steps: int, trainable: tuple[str, ...] = ("encoder",)
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW for the parts of the model tree named in `trainable`; the other parts never change (and so
  get no weight decay), but stay in the checkpoint and the export."""
  validate(optimizer_config)
  schedule = make_schedule(optimizer_config, total_steps)
  steps = []
  clip = optimizer_config.get("clip_grad_norm", 1.0)
  if clip and clip > 0:
    steps.append(optax.clip_by_global_norm(clip))
  steps.append(optax.adamw(schedule, b1=optimizer_config.get("b1", 0.9), b2=optimizer_config.get("b2", 0.999),
                           eps=optimizer_config.get("eps", 1e-8),
                           weight_decay=optimizer_config.get("weight_decay", 0.01), mask=decay_mask))
  return optax.multi_transform({"train": optax.chain(*steps), "frozen": optax.set_to_zero()},
                               lambda params: trainable_labels(params, trainable)), schedule
