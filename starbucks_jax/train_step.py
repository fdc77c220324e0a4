"""The training step: a pure function of (state, batch, rng), jitted once with the state donated.

What the step computes comes from its settings, a static argument: `StepSettings` for SRL fine-tuning
(one forward pass per side, queries and passages, stops at the highest layer the loss uses and yields
every layer's pooled vector; `srl_loss` turns those into the (layer, dim) pair losses) or
`SmaeStepSettings` for SMAE pre-training (`smae_loss`). Either gives `loss(params, batch, rng)` and
`rows(batch)`. A step whose loss or gradients are not finite leaves parameters and optimizer state
untouched and is counted in `skipped_steps`, as the paper's trainers do.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from starbucks_jax import bert
from starbucks_jax.bert_config import BertConfig
from starbucks_jax.smae_loss import SmaeSpec, smae_loss
from starbucks_jax.srl_loss import SrlLossSpec, srl_loss

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@flax.struct.dataclass
class TrainState:
  step: jax.Array           # int32: steps taken, including skipped ones
  params: Any
  opt_state: Any
  rng: jax.Array            # the run's root key; step s uses fold_in(rng, s)
  skipped_steps: jax.Array  # int32: steps whose loss or gradients were not finite


@dataclasses.dataclass(frozen=True)
class StepSettings:
  """Everything static about the step (hashable, so it can be a static jit argument)."""
  model_config: BertConfig
  spec: SrlLossSpec
  pooling: str = "mean"
  dtype: str = "float32"
  remat: bool = False
  grad_accum_steps: int = 1

  @property
  def uses_dropout(self) -> bool:
    return _uses_dropout(self.model_config)

  def loss(self, params, batch: dict, rng: jax.Array):
    return compute_loss(params, batch, rng, self)

  def rows(self, batch: dict) -> int:
    """Examples (queries) in the batch; passage arrays hold a whole number of rows per query."""
    return batch["query_input_ids"].shape[0]


@dataclasses.dataclass(frozen=True)
class SmaeStepSettings:
  """The static part of an SMAE pre-training step."""
  model_config: BertConfig
  spec: SmaeSpec
  dtype: str = "float32"
  remat: bool = False
  grad_accum_steps: int = 1

  def loss(self, params, batch: dict, rng: jax.Array):
    dropout = _uses_dropout(self.model_config)
    return smae_loss(params, batch, spec=self.spec, model_config=self.model_config, dtype=DTYPES[self.dtype],
                     deterministic=not dropout, dropout_rng=rng if dropout else None, remat=self.remat)

  def rows(self, batch: dict) -> int:
    return batch["input_ids"].shape[0]


def _uses_dropout(model_config: BertConfig) -> bool:
  return model_config.hidden_dropout_prob > 0 or model_config.attention_probs_dropout_prob > 0


def init_state(params, tx: optax.GradientTransformation, seed: int) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=jax.random.key(seed), skipped_steps=jnp.zeros((), jnp.int32))


def compute_loss(params, batch: dict, rng: jax.Array, settings: StepSettings):
  """(loss, metrics) for one batch; `metrics` holds each pair's loss.

  When queries and passages are padded to the same length they go through the encoder together, in
  one forward pass (one traced encoder: half the compile time); otherwise each side gets its own.
  """
  spec, dtype = settings.spec, DTYPES[settings.dtype]
  dropout_rng, loss_rng = jax.random.split(rng)

  def pooled(input_ids, attention_mask, dropout_rng):
    out = bert.apply(params, input_ids, attention_mask, config=settings.model_config,
                     num_layers=spec.forward_layers(), dtype=dtype, deterministic=not settings.uses_dropout,
                     dropout_rng=dropout_rng, remat=settings.remat)
    return {n: out.pooled(n, settings.pooling) for n in spec.pooled_layers()}

  queries = batch["query_input_ids"].shape[0]
  if batch["query_input_ids"].shape[1] == batch["passage_input_ids"].shape[1]:
    both = pooled(jnp.concatenate([batch["query_input_ids"], batch["passage_input_ids"]]),
                  jnp.concatenate([batch["query_attention_mask"], batch["passage_attention_mask"]]), dropout_rng)
    query = {n: v[:queries] for n, v in both.items()}
    passage = {n: v[queries:] for n, v in both.items()}
  else:
    query_rng, passage_rng = jax.random.split(dropout_rng)
    query = pooled(batch["query_input_ids"], batch["query_attention_mask"], query_rng)
    passage = pooled(batch["passage_input_ids"], batch["passage_attention_mask"], passage_rng)
  return srl_loss(query, passage, batch.get("labels"), spec, loss_rng)


def _micro_batches(batch: dict, count: int, queries: int) -> dict:
  """[rows, ...] -> [count, rows / count, ...], keeping each query's passages with it.

  Micro-batch k takes rows k, k + count, k + 2 count, ...: a strided split keeps every device's share
  of each micro-batch on that device, where a contiguous split would move data between devices.
  `queries` is the number of examples; an array of G x queries rows holds G rows per example.
  """

  def split(x):
    group = x.shape[0] // queries  # passages per query (1 for query-side arrays and labels)
    x = x.reshape((queries // count, count, group) + x.shape[1:])
    x = jnp.swapaxes(x, 0, 1)
    return x.reshape((count, (queries // count) * group) + x.shape[3:])

  return {k: split(v) for k, v in batch.items()}


def train_step(state: TrainState, batch: dict, tx: optax.GradientTransformation, settings):
  """One optimizer step; returns (new state, metrics). `settings`: StepSettings or SmaeStepSettings."""
  rng = jax.random.fold_in(state.rng, state.step)
  grad_fn = jax.value_and_grad(settings.loss, has_aux=True)

  if settings.grad_accum_steps == 1:
    (loss, metrics), grads = grad_fn(state.params, batch, rng)
  else:
    count = settings.grad_accum_steps
    micro_batches = _micro_batches(batch, count, settings.rows(batch))

    def accumulate(carry, micro):
      index, micro_batch = micro
      (loss, metrics), grads = grad_fn(state.params, micro_batch, jax.random.fold_in(rng, index))
      return jax.tree.map(jnp.add, carry, (loss, metrics, grads)), None

    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
        lambda: grad_fn(state.params, jax.tree.map(lambda x: x[0], micro_batches), rng)))
    (loss, metrics), grads = zeros
    (loss, metrics, grads), _ = jax.lax.scan(accumulate, (loss, metrics, grads),
                                             (jnp.arange(count), micro_batches))
    loss, metrics, grads = jax.tree.map(lambda x: x / count, (loss, metrics, grads))

  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)
  keep_if_finite = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = state.replace(
      step=state.step + 1,
      params=keep_if_finite(new_params, state.params),
      opt_state=keep_if_finite(new_opt_state, state.opt_state),
      skipped_steps=state.skipped_steps + jnp.where(finite, 0, 1).astype(jnp.int32))
  metrics = {"loss": loss, "grad_norm": grad_norm, **metrics}
  return new_state, metrics
