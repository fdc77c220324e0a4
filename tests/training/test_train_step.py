"""The training step and optimizer: accumulation, skipped non-finite steps, frozen parts, schedules."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from starbucks_jax.losses.srl_spec import SrlLossSpec
from starbucks_jax.model import bert
from starbucks_jax.model.bert import BertConfig
from starbucks_jax.training import optim, step as train_step
from starbucks_jax.training.tasks.srl import SrlStepSettings, compute_loss

CONFIG = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=24, max_position_embeddings=32, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0)


def batch(queries=8, group=2, length=10, labels=False, seed=0):
  rng = np.random.default_rng(seed)

  def side(rows):
    mask = (np.arange(length)[None] < rng.integers(3, length + 1, (rows, 1))).astype(np.int32)
    return (rng.integers(5, 100, (rows, length)) * mask).astype(np.int32), mask

  out = {}
  out["query_input_ids"], out["query_attention_mask"] = side(queries)
  out["passage_input_ids"], out["passage_attention_mask"] = side(queries * group)
  if labels:
    out["labels"] = rng.uniform(0, 5, queries).astype(np.float32)
  return out


def settings(accum=1, objective="mnrl", group=2):
  spec = SrlLossSpec(mode="starbucks", num_model_layers=2, hidden_size=16, pairs=((1, 4), (2, 16)),
                     group_size=group, objective=objective)
  return SrlStepSettings(model_config=CONFIG, spec=spec, grad_accum_steps=accum)


def optimizer(lr=1e-2, **changes):
  return optim.make_optimizer(optim.OptimizerConfig(lr=lr, warmup_steps=0, **changes), total_steps=10)[0]


def test_gradient_accumulation_averages_strided_micro_batches():
  params = bert.init_params(CONFIG, jax.random.key(0))
  b = batch()
  tx = optimizer()
  _, metrics = train_step.train_step(train_step.init_state(params, tx, 0), b, tx, settings(accum=2))
  # Micro-batch k holds queries k, k+2, ... and their passages (a strided split, see losses/batch.micro_batches).
  expected = []
  for k in range(2):
    q = np.arange(k, 8, 2)
    p = (q[:, None] * 2 + np.arange(2)).reshape(-1)
    micro = {"query_input_ids": b["query_input_ids"][q], "query_attention_mask": b["query_attention_mask"][q],
             "passage_input_ids": b["passage_input_ids"][p], "passage_attention_mask": b["passage_attention_mask"][p]}
    expected.append(float(compute_loss(params, micro, jax.random.key(1), settings())[0]))
  assert float(metrics["loss"]) == pytest.approx(np.mean(expected), rel=1e-5)
  # And it differs from the one-batch loss (negatives come from within a micro-batch).
  full = float(compute_loss(params, b, jax.random.key(1), settings())[0])
  assert abs(full - np.mean(expected)) > 1e-3


def test_non_finite_step_is_skipped_and_counted():
  params = bert.init_params(CONFIG, jax.random.key(0))
  # Token 7's embedding is NaN: a batch that uses it has a NaN loss, one that avoids it does not.
  embedding = params["encoder"]["embeddings"]["word_embeddings"]["embedding"]
  params["encoder"]["embeddings"]["word_embeddings"]["embedding"] = embedding.at[7].set(jnp.nan)
  tx = optimizer()
  state = train_step.init_state(params, tx, 0)
  good = {k: np.where(v == 7, 8, v) if k.endswith("input_ids") else v for k, v in batch().items()}
  bad = dict(good, query_input_ids=good["query_input_ids"].copy())
  bad["query_input_ids"][0, 1] = 7
  step = jax.jit(lambda s, b: train_step.train_step(s, b, tx, settings()))
  after_bad, metrics = step(state, bad)
  assert not np.isfinite(float(metrics["loss"]))
  assert int(after_bad.skipped_steps) == 1 and int(after_bad.step) == 1
  for a, b in zip(jax.tree.leaves((state.params, state.opt_state)),
                  jax.tree.leaves((after_bad.params, after_bad.opt_state))):
    np.testing.assert_array_equal(a, b)  # NaNs compare equal here
  after_good, metrics = step(after_bad, good)
  assert np.isfinite(float(metrics["loss"])) and int(after_good.skipped_steps) == 1
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)), after_bad.params["encoder"]["layer_0"],
                                         after_good.params["encoder"]["layer_0"]))
  assert all(changed)


def test_pooler_is_frozen_and_biases_get_no_weight_decay():
  params = bert.init_params(CONFIG, jax.random.key(0))
  tx = optimizer(lr=0.1, weight_decay=0.5)
  state, _ = train_step.train_step(train_step.init_state(params, tx, 0), batch(), tx, settings())
  np.testing.assert_array_equal(state.params["pooler"]["kernel"], params["pooler"]["kernel"])
  assert np.any(state.params["encoder"]["layer_0"]["intermediate"]["kernel"]
                != params["encoder"]["layer_0"]["intermediate"]["kernel"])
  mask = optim.decay_mask(params)
  assert mask["encoder"]["layer_0"]["intermediate"]["kernel"] is True
  assert mask["encoder"]["layer_0"]["intermediate"]["bias"] is False
  assert mask["encoder"]["layer_0"]["output_layer_norm"]["scale"] is False
  assert mask["encoder"]["embeddings"]["word_embeddings"]["embedding"] is True


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_warms_up_then_decays_to_zero(kind):
  c = optim.OptimizerConfig(lr=1e-3, schedule=kind, warmup_ratio=0.1, warmup_steps=-1)
  schedule = optim.make_schedule(c, total_steps=100)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(5e-4)
  assert float(schedule(10)) == pytest.approx(1e-3)
  assert float(schedule(55)) == pytest.approx(5e-4, rel=1e-3 if kind == "linear" else 0.02)
  assert float(schedule(100)) == pytest.approx(0.0, abs=1e-9)


def test_gradients_are_clipped_before_adam():
  params = {"encoder": {"w": {"kernel": jnp.zeros((3,))}}}
  grads = {"encoder": {"w": {"kernel": jnp.asarray([300.0, 400.0, 0.0])}}}
  for clip, expected_norm in ((1.0, 1.0), (0.0, 500.0)):  # 0 turns clipping off
    tx = optimizer(lr=1.0, clip_grad_norm=clip, b1=0.9)
    _, state = tx.update(grads, tx.init(params), params)
    mu = optax.tree.get(state, "mu")  # Adam's first moment after one step: (1 - b1) x the clipped gradient
    assert float(optax.tree.norm(mu)) == pytest.approx(0.1 * expected_norm, rel=1e-5)


def test_remat_saves_memory_in_the_compiled_step():
  """XLA's temporaries of the whole step, with dropout: "dots" and "full" keep less than "none" (on the CPU,
  remat saved nothing before its recomputation was tied to the cotangent: model/remat.py)."""
  config = CONFIG.replace(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, num_hidden_layers=2)
  params = bert.init_params(config, jax.random.key(0))
  tx, _ = optim.make_optimizer(optim.OptimizerConfig(), total_steps=10)
  state = train_step.init_state(params, tx, seed=0)
  b = batch(queries=16, length=16)
  temp = {}
  for remat in ("none", "dots", "full"):
    s = dataclasses.replace(settings(), model_config=config, remat=remat)
    compiled = jax.jit(lambda st, bt: train_step.train_step(st, bt, tx, s),
                       compiler_options=train_step.compiler_options(remat)).lower(state, b).compile()
    temp[remat] = compiled.memory_analysis().temp_size_in_bytes
  assert temp["full"] < temp["dots"] < temp["none"], temp


def test_remat_and_bfloat16_options():
  params = bert.init_params(CONFIG, jax.random.key(0))
  b = batch()
  loss_and_grads = lambda s: jax.jit(jax.value_and_grad(
      lambda p: compute_loss(p, b, jax.random.key(1), s)[0]))(params)
  base = dataclasses.replace(settings(), remat="none")
  loss, grads = loss_and_grads(base)
  for remat in ("dots", "full", True):  # True: "full", as when the option was a boolean
    remat_loss, remat_grads = loss_and_grads(dataclasses.replace(base, remat=remat))
    assert float(remat_loss) == pytest.approx(float(loss), rel=1e-6)
    for a, r in zip(jax.tree.leaves(grads), jax.tree.leaves(remat_grads)):
      # Recomputed activations may sum in another order: compare against each tensor's scale.
      assert np.abs(np.asarray(r) - np.asarray(a)).max() <= 1e-4 * np.abs(np.asarray(a)).max() + 1e-8
  bf16_loss, bf16_grads = loss_and_grads(dataclasses.replace(base, dtype="bfloat16"))
  assert float(bf16_loss) == pytest.approx(float(loss), rel=3e-2)  # bfloat16 keeps ~3 significant digits
  assert float(bf16_loss) != float(loss)  # and it did compute in bfloat16
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(bf16_grads))  # parameters stay float32


def test_dropout_rate_zero_turns_dropout_off():
  params = bert.init_params(CONFIG, jax.random.key(0))
  b = batch()
  loss = lambda s, seed: float(compute_loss(params, b, jax.random.key(seed), s)[0])
  off = settings()
  on = dataclasses.replace(off, model_config=CONFIG.replace(hidden_dropout_prob=0.1))
  assert loss(off, 1) == loss(off, 2)  # deterministic without dropout
  assert loss(on, 1) != loss(on, 2)    # dropout masks follow the step's rng
