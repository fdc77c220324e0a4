"""The training step: a pure function of (state, batch, rng), jitted once with the state donated.

What the step computes comes from its settings, a static argument that the task provides
(`tasks/srl.py` SrlStepSettings, `tasks/smae.py` SmaeStepSettings): `loss(params, batch, rng)` gives
(loss, metrics) from the model's forward pass, `grad_accum_steps` the micro-batches a step is split into
(`losses/batch.micro_batches`), and `grad_cache` (None, or GradCache's chunks
for SRL: `grad_cache.py`) whether the batch's loss and gradients are computed a chunk at a time. A step whose loss or gradients are not finite
leaves parameters and optimizer state untouched and is counted in `skipped_steps`, as the paper's
trainers do. With LoRA (`lora.py`) the state's params are the adapters and `frozen` the base: the task's
loss sees the base with the adapters merged in, and only the adapters get gradients.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from starbucks_jax.losses import batch as batch_layout
from starbucks_jax.model.lora import merge
from starbucks_jax.model.remat import remat_policy
from starbucks_jax.training import grad_cache


@flax.struct.dataclass
class TrainState:
  step: jax.Array           # int32: steps taken, including skipped ones
  params: Any
  opt_state: Any
  rng: jax.Array            # the run's root key; step s uses fold_in(rng, s)
  skipped_steps: jax.Array  # int32: steps whose loss or gradients were not finite
  frozen: Any = None        # LoRA: the base model, read by every step and never changed (not checkpointed)
  lora_scale: float | None = flax.struct.field(pytree_node=False, default=None)  # LoRA: alpha / rank


class _OnFrozenBase:
  """A task's step settings whose trainable parameters are LoRA adapters: the task's loss and encoder get
  the frozen base with the adapters merged in, so micro-batches and GradCache's chunks work unchanged (each
  merges afresh: a few small products). Everything else is the task's."""

  def __init__(self, settings, base, scale: float):
    self._settings, self._base, self._scale = settings, base, scale

  def _model(self, adapters):
    return merge(self._base, adapters, self._scale)

  def loss(self, adapters, batch: dict, rng: jax.Array):
    return self._settings.loss(self._model(adapters), batch, rng)

  def encode(self, adapters, *args, **kwargs):
    # GradCache encodes in chunk loops, with the adapters tied to each chunk (`grad_cache._in_loop`). Tied to
    # them, the base is new in every iteration too, so XLA cannot lift the base's per-layer gathers and casts
    # out of the loops and hold the whole base at once (BENCHMARKS.md, "Qwen3 at real sizes").
    base, adapters = jax.lax.optimization_barrier((self._base, adapters))
    return self._settings.encode(merge(base, adapters, self._scale), *args, **kwargs)

  def __getattr__(self, name):
    return getattr(self._settings, name)


def compiler_options(remat: bool | str = False) -> dict | None:
  """XLA options for compiling the step (`jax.jit(..., compiler_options=...)`, as `loop.jit_step` does);
  `remat` is the step settings' (`model/remat.py`).

  On the CPU without remat, the memory-minimising scheduler: XLA:CPU's default (concurrency-optimised)
  schedule computes broadcasts and parameter copies first and keeps them through the step (the zeros of
  the word embeddings' gradient, every LayerNorm scale broadcast to [rows, length, hidden]); the MiniLM
  SRL step's temporaries shrink with it. With remat, the default schedule: the memory-minimising one
  puts off every layer's weight-gradient products to the end of the backward pass, which keeps every
  layer's recomputed activations live (BENCHMARKS.md, "Step memory", has both measurements).
  """
  if jax.default_backend() == "cpu" and remat_policy(remat) == "none":
    return {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
  return None


def init_state(params, tx: optax.GradientTransformation, seed: int) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=jax.random.key(seed), skipped_steps=jnp.zeros((), jnp.int32))


def value_and_grad(settings, params, batch: dict, rng: jax.Array):
  """((loss, metrics), gradients) of one batch: in one pass, a chunk at a time (GradCache), or as the mean
  over `grad_accum_steps` micro-batches."""
  grad_fn = jax.value_and_grad(settings.loss, has_aux=True)
  if settings.grad_cache is not None:
    return grad_cache.value_and_grad(settings, params, batch, rng)
  if settings.grad_accum_steps == 1:
    return grad_fn(params, batch, rng)
  count = settings.grad_accum_steps
  micro_batches = batch_layout.micro_batches(batch, count)

  def accumulate(carry, micro):
    index, micro_batch = micro
    (loss, metrics), grads = grad_fn(params, micro_batch, jax.random.fold_in(rng, index))
    return jax.tree.map(jnp.add, carry, (loss, metrics, grads)), None

  zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
      lambda: grad_fn(params, jax.tree.map(lambda x: x[0], micro_batches), rng)))
  (loss, metrics), grads = zeros
  (loss, metrics, grads), _ = jax.lax.scan(accumulate, (loss, metrics, grads), (jnp.arange(count), micro_batches))
  loss, metrics, grads = jax.tree.map(lambda x: x / count, (loss, metrics, grads))
  return (loss, metrics), grads


def train_step(state: TrainState, batch: dict, tx: optax.GradientTransformation, settings):
  """One optimizer step; returns (new state, metrics). `settings`: the task's step settings (see above)."""
  rng = jax.random.fold_in(state.rng, state.step)
  if state.frozen is not None:  # LoRA: params are the adapters
    settings = _OnFrozenBase(settings, state.frozen, state.lora_scale)
  (loss, metrics), grads = value_and_grad(settings, state.params, batch, rng)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

  def update(params, opt_state, grads):
    updates, new_opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_opt_state

  # A cond, not jnp.where(finite, new, old) over the trees: with the where, XLA copied every Adam
  # moment before the step (the new parameters read the old moments, which the donated outputs
  # overwrite), live through the whole step (BENCHMARKS.md, "Step memory").
  new_params, new_opt_state = jax.lax.cond(finite, update, lambda params, opt_state, grads: (params, opt_state),
                                           state.params, state.opt_state, grads)
  new_state = state.replace(
      step=state.step + 1,
      params=new_params,
      opt_state=new_opt_state,
      skipped_steps=state.skipped_steps + jnp.where(finite, 0, 1).astype(jnp.int32))
  metrics = {"loss": loss, "grad_norm": grad_norm, **metrics}
  return new_state, metrics
