"""Hash dropout: the rate, the scale, reproducibility, independence between elements and between keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from starbucks_jax.model import bert
from starbucks_jax.model.bert import BertConfig
from starbucks_jax.model.dropout import dropout, hash_bits, threshold


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_rate_and_expectation(rate):
  x = jnp.ones((512, 64, 32), jnp.float32)  # 1M elements
  y = np.asarray(dropout(x, rate, jax.random.key(3)))
  dropped = (y == 0).mean()
  sigma = np.sqrt(rate * (1 - rate) / y.size)
  assert abs(dropped - rate) < 5 * sigma
  assert abs(y.mean() - 1.0) < 5 * sigma / (1 - rate)  # kept values scaled by 1/keep: mean stays 1
  np.testing.assert_allclose(np.unique(y[y != 0]), [2 ** 32 / (2 ** 32 - threshold(rate))], rtol=1e-6)


def test_same_key_same_mask_other_key_other_mask():
  key = jax.random.key(0)
  a = hash_bits(key, (64, 128))
  np.testing.assert_array_equal(a, hash_bits(key, (64, 128)))
  b = hash_bits(jax.random.key(1), (64, 128))
  assert (np.asarray(a) == np.asarray(b)).mean() < 0.01


def test_bits_look_independent():
  bits = np.asarray(hash_bits(jax.random.key(7), (256, 1024)))
  # Every bit position is set about half the time.
  ones = np.stack([(bits >> k) & 1 for k in range(32)]).mean(axis=(1, 2))
  assert np.all(np.abs(ones - 0.5) < 0.01), ones
  # Neighbouring elements (along a row and across rows) are uncorrelated.
  keep = (bits >= threshold(0.1)).astype(np.float64)
  for a, b in ((keep[:, 1:], keep[:, :-1]), (keep[1:], keep[:-1])):
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.01
  # Each position (column) is dropped at the same rate across rows: no fixed pattern.
  per_column = 1 - keep.mean(axis=0)
  assert per_column.std() < 3 * np.sqrt(0.1 * 0.9 / keep.shape[0])


def test_gradient_is_the_mask_times_the_scale():
  x = jnp.linspace(-1, 1, 4096).reshape(64, 64)
  key = jax.random.key(5)
  grad = jax.grad(lambda v: dropout(v, 0.1, key).sum())(x)
  y = dropout(x, 0.1, key)
  scale = 2 ** 32 / (2 ** 32 - threshold(0.1))
  np.testing.assert_allclose(np.asarray(grad), np.where(np.asarray(y) != 0, scale, 0), rtol=1e-6)


def test_encoder_dropout_is_reproducible_and_off_when_deterministic():
  config = BertConfig(vocab_size=500, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64)
  params = bert.init_params(config, jax.random.key(0))
  ids = jnp.arange(48, dtype=jnp.int32).reshape(3, 16) + 5
  run = lambda key: bert.apply(params, ids, config=config, deterministic=False, dropout_rng=key).hidden_states[-1]
  np.testing.assert_array_equal(run(jax.random.key(1)), run(jax.random.key(1)))
  assert not np.allclose(run(jax.random.key(1)), run(jax.random.key(2)))
  quiet = bert.apply(params, ids, config=config).hidden_states[-1]
  assert not np.allclose(run(jax.random.key(1)), quiet)


def test_bfloat16_keeps_the_expectation():
  """Kept values are scaled in float32: a bfloat16 scale (1.109 for 1/0.9) would lose 0.16% of the sum."""
  x = jax.random.uniform(jax.random.key(0), (2048, 2048), jnp.float32, 1.0, 2.0).astype(jnp.bfloat16)
  y = dropout(x, 0.1, jax.random.key(4))
  assert y.dtype == jnp.bfloat16
  ratio = np.asarray(y, np.float64).sum() / np.asarray(x, np.float64).sum()
  assert abs(ratio - 1) < 6e-4, ratio  # the dropout noise alone: about 1.7e-4
