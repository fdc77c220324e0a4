"""Packed steps compute what unpacked steps compute: on the same examples (real SNLI text), with dropout
off, the loss and every gradient of (three layers of) all-MiniLM-L6-v2 agree to 1e-5 (float32) and each text's pooled vectors agree, for SRL
and SMAE, in one pass, in micro-batches (grad_accum_steps) and with GradCache. Gradients are compared against the largest gradient entry of the model: some are zero in exact
arithmetic (attention key biases shift every score of a query alike) and only rounding noise remains.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from starbucks_jax.data.smae import TextData, TextDataConfig
from starbucks_jax.data.srl import DataConfig, TrainData
from starbucks_jax.hf.load import load_pretrained
from starbucks_jax.losses.smae import SmaeSpec, init_decoder_params, smae_loss
from starbucks_jax.model.mlm_head import init_mlm_head_params
from starbucks_jax.model.registry import family_of
from starbucks_jax.training import step as step_lib
from starbucks_jax.training.grad_cache import GradCacheConfig
from starbucks_jax.training.tasks.smae import SmaeStepSettings
from starbucks_jax.training.tasks.srl import SrlStepSettings, StarbucksConfig, compute_loss, make_loss_spec
from tests.helpers import REPO

SNLI = REPO / "data" / "quickstart" / "snli_triplets.jsonl"
TOLERANCE = 1e-5

pytestmark = pytest.mark.usefixtures("datasets_cache")


@pytest.fixture(scope="module")
def model(minilm_dir):
  """all-MiniLM-L6-v2's first three layers, dropout off. Real weights: a random model's gradients are
  small and noisy enough that rounding shows at 1e-5; three layers halve the compile time."""
  loaded = load_pretrained(minilm_dir)
  config = loaded.config.replace(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_hidden_layers=3)
  params = dict(loaded.params, encoder=family_of(config).keep_layers(loaded.params["encoder"], 3))
  return params, config


def loss_and_grads(loss_fn, params, batch):
  (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, batch)
  return float(loss), jax.device_get(metrics), jax.device_get(grads)


def assert_same_step(unpacked, packed):
  (loss_a, _, grads_a), (loss_b, _, grads_b) = unpacked, packed
  assert abs(loss_b - loss_a) <= TOLERANCE * abs(loss_a), (loss_a, loss_b)
  scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(grads_a))
  worst = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)))
  assert worst <= TOLERANCE * scale, (worst, scale)


def test_packed_srl_step_equals_the_unpacked_step(model, tokenizer):
  """Mean pooling and the score KL in the step; both poolings of every layer compared after it."""
  params, config = model
  data = dict(source=str(SNLI), query_max_length=32, passage_max_length=48)
  spec = make_loss_spec(StarbucksConfig(pairs=((1, 32), (2, 128), (3, 384))), config)
  settings = SrlStepSettings(model_config=config, spec=dataclasses.replace(spec, group_size=2), pooling="mean")
  loss_fn = lambda p, b: compute_loss(p, b, jax.random.key(0), settings)
  unpacked = TrainData(DataConfig(**data, same_length=False), tokenizer, global_batch_size=8, seed=0).batch(2)
  packed = TrainData(DataConfig(**data, packing=True), tokenizer, global_batch_size=8, seed=0).batch(2)
  assert packed["input_ids"].size < unpacked["query_input_ids"].size + unpacked["passage_input_ids"].size
  assert_same_step(loss_and_grads(loss_fn, params, unpacked), loss_and_grads(loss_fn, params, packed))

  # Each text's pooled vectors at every layer, from the family's forward pass.
  family = family_of(config)
  texts = packed["query_lengths"].shape[0] + packed["passage_lengths"].shape[0]
  apply = jax.jit(family.apply, static_argnames=("config", "num_texts"))
  out = apply(params, packed["input_ids"], packed["attention_mask"], config=config,
              segment_ids=packed["segment_ids"], position_ids=packed["position_ids"], num_texts=texts)
  queries = apply(params, unpacked["query_input_ids"], unpacked["query_attention_mask"], config=config)
  passages = apply(params, unpacked["passage_input_ids"], unpacked["passage_attention_mask"], config=config)
  for layer in range(config.num_hidden_layers + 1):
    for kind in ("cls", "mean"):
      expected = jnp.concatenate([queries.pooled(layer, kind), passages.pooled(layer, kind)])
      np.testing.assert_allclose(out.pooled(layer, kind), expected, rtol=1e-5, atol=1e-5)


def step_grads(settings, params, batch):
  """The training step's loss, metrics and gradients (`step.value_and_grad`: micro-batches, GradCache)."""
  fn = jax.jit(lambda p, b: step_lib.value_and_grad(settings, p, b, jax.random.key(0)))
  (loss, metrics), grads = fn(params, batch)
  return float(loss), jax.device_get(metrics), jax.device_get(grads)


@pytest.mark.parametrize("how", ["micro-batches", "grad-cache"])
def test_packed_srl_step_in_parts_equals_the_unpacked_step(model, tokenizer, how):
  """Packed rows in one group per part: 2 micro-batches (each its own in-batch negatives) against the
  unpacked micro-batches; 4 GradCache chunks against the unpacked one-pass step (the same objective)."""
  params, config = model
  data = dict(source=str(SNLI), query_max_length=32, passage_max_length=48)
  spec = dataclasses.replace(make_loss_spec(StarbucksConfig(pairs=((1, 32), (3, 384))), config), group_size=2)
  plain = SrlStepSettings(model_config=config, spec=spec, pooling="mean")
  if how == "micro-batches":
    unpacked_settings = packed_settings = dataclasses.replace(plain, grad_accum_steps=2)
    groups = 2
  else:
    unpacked_settings, groups = plain, 4
    packed_settings = dataclasses.replace(plain, grad_cache=GradCacheConfig(query_chunk=2))
  unpacked = TrainData(DataConfig(**data, same_length=False), tokenizer, global_batch_size=8, seed=0).batch(1)
  packed = TrainData(DataConfig(**data, packing=True), tokenizer, global_batch_size=8, seed=0,
                     pack_groups=groups).batch(1)
  assert_same_step(step_grads(unpacked_settings, params, unpacked), step_grads(packed_settings, params, packed))


def test_packed_smae_micro_batches_equal_the_unpacked_ones(model, tokenizer):
  params, config = model
  params = dict(params, mlm_head=init_mlm_head_params(config, jax.random.key(1)))
  params["mae_decoder"] = init_decoder_params(params["encoder"], config)
  spec = SmaeSpec(pairs=((1, 32), (3, 384)), num_model_layers=3, hidden_size=384,
                  encoder_mask_rate=0.2, decoder_mask_rate=0.4)
  settings = SmaeStepSettings(model_config=config, spec=spec, grad_accum_steps=2)
  data = dict(source=str(SNLI), text_column="anchor", max_length=48)
  unpacked = TextData(TextDataConfig(**data), tokenizer, global_batch_size=8, seed=0).batch(1)
  packed = TextData(TextDataConfig(**data, packing=True), tokenizer, global_batch_size=8, seed=0,
                    pack_groups=2).batch(1)
  assert_same_step(step_grads(settings, params, unpacked), step_grads(settings, params, packed))


def test_packed_smae_step_equals_the_unpacked_step(model, tokenizer):
  params, config = model
  params = dict(params, mlm_head=init_mlm_head_params(config, jax.random.key(1)))
  params["mae_decoder"] = init_decoder_params(params["encoder"], config)
  spec = SmaeSpec(pairs=((1, 32), (2, 128), (3, 384)), num_model_layers=3, hidden_size=384,
                  encoder_mask_rate=0.2, decoder_mask_rate=0.4)
  loss_fn = lambda p, b: smae_loss(p, b, spec=spec, model_config=config)
  data = dict(source=str(SNLI), text_column="anchor", max_length=48)
  unpacked = TextData(TextDataConfig(**data), tokenizer, global_batch_size=8, seed=0).batch(1)
  packed = TextData(TextDataConfig(**data, packing=True), tokenizer, global_batch_size=8, seed=0).batch(1)
  assert packed["input_ids"].shape[0] < unpacked["input_ids"].shape[0]
  a, b = loss_and_grads(loss_fn, params, unpacked), loss_and_grads(loss_fn, params, packed)
  assert int(a[1]["dropped_labels"]) == int(b[1]["dropped_labels"]) == 0
  for name in a[1]:  # every pair's MLM and MAE term, not only their mean
    assert abs(float(a[1][name]) - float(b[1][name])) <= TOLERANCE * max(1.0, abs(float(a[1][name]))), name
  assert_same_step(a, b)
