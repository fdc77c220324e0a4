"""The hand count of model FLOPs (starbucks_jax/training/flops.py) against XLA's own count of the same computation.

XLA counts every op, so its figure sits a little above ours (LayerNorm, softmax, GELU); a missing or
doubled matmul term would put it far outside the band.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from starbucks_jax.data.masking import num_to_predict
from starbucks_jax.losses.smae import SmaeSpec, init_decoder_params, smae_loss
from starbucks_jax.losses.srl import srl_loss
from starbucks_jax.losses.srl_spec import SrlLossSpec
from starbucks_jax.model import bert
from starbucks_jax.model.bert import BertConfig
from starbucks_jax.model.mlm_head import init_mlm_head_params
from starbucks_jax.training import flops

CONFIG = BertConfig(vocab_size=4000, hidden_size=128, num_hidden_layers=3, num_attention_heads=4,
                    intermediate_size=512, max_position_embeddings=256)


def xla_count(fn, *args) -> float:
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def assert_close_above(xla: float, ours: float, band: float = 0.12):
  assert ours <= xla <= ours * (1 + band), f"XLA counts {xla:.4g}, we count {ours:.4g} ({xla / ours:.3f}x)"


@pytest.fixture(scope="module")
def params():
  p = bert.init_params(CONFIG, jax.random.key(0))
  p["mlm_head"] = init_mlm_head_params(CONFIG, jax.random.key(1))
  p["mae_decoder"] = init_decoder_params(p["encoder"], CONFIG)
  return p


@pytest.mark.parametrize("rows,length,layers", [(2, 256, 3), (8, 32, 2)])
def test_encoder_forward(params, rows, length, layers):
  ids = jnp.ones((rows, length), jnp.int32)
  xla = xla_count(lambda p, i: bert.apply(p, i, config=CONFIG, num_layers=layers).hidden_states[-1], params, ids)
  assert_close_above(xla, flops.encoder_flops(CONFIG, rows, length, layers))


def test_srl_loss_forward_and_training_factor(params):
  queries, group, length = 4, 2, 64
  pairs = ((1, 32), (2, 64), (3, 128))
  spec = SrlLossSpec(mode="starbucks", num_model_layers=3, hidden_size=128, pairs=pairs, group_size=group)

  def loss(p, ids):
    out = bert.apply(p, ids, config=CONFIG, num_layers=3)
    pooled = {n: out.mean[n] for n in (1, 2, 3)}
    return srl_loss({n: v[:queries] for n, v in pooled.items()}, {n: v[queries:] for n, v in pooled.items()},
                    None, spec, jax.random.key(0))[0]

  ids = jnp.ones((queries * (1 + group), length), jnp.int32)
  ours = flops.srl_step_flops(CONFIG, pairs=pairs, queries=queries, group_size=group, query_length=length,
                              passage_length=length)
  assert_close_above(xla_count(loss, params, ids), ours / flops.TRAIN_FACTOR, band=0.15)
  # Forward + backward: XLA's count of the gradient is about 3x the forward's (ours by definition).
  assert_close_above(xla_count(jax.grad(loss), params, ids), ours, band=0.2)


def test_smae_loss_forward(params):
  rows, length = 4, 64
  pairs = ((1, 32), (3, 128))
  spec = SmaeSpec(pairs=pairs, num_model_layers=3, hidden_size=128, encoder_mask_rate=0.2, decoder_mask_rate=0.4)
  rng = np.random.default_rng(0)
  ids = rng.integers(1000, 3000, (rows, length)).astype(np.int32)
  labels = np.where(rng.random((rows, length)) < 0.15, ids, -100).astype(np.int32)
  batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": labels, "decoder_input_ids": ids,
           "decoder_labels": labels}
  # Gathered: the heads run at each row's fixed number of slots, which is what the hand count is given.
  encoder_slots = rows * num_to_predict(0.2, length)
  decoder_slots = rows * num_to_predict(0.4, length)
  ours = flops.smae_step_flops(CONFIG, pairs=pairs, rows=rows, length=length, encoder_predicted=encoder_slots,
                               decoder_predicted=decoder_slots) / flops.TRAIN_FACTOR
  xla = xla_count(lambda p, b: smae_loss(p, b, spec=spec, model_config=CONFIG)[0], params, batch)
  assert_close_above(xla, ours, band=0.15)
