"""The bfloat16 dense-layer product on the CPU: right gradients, and bfloat16 operands in every dot."""

import re

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import pytest

from starbucks_jax.model import bert, dense
from starbucks_jax.model.bert import BertConfig

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="the bfloat16 dot rule is CPU-only")


def _bf16(rng, *shape):
  return jnp.asarray(rng.normal(size=shape), jnp.float32).astype(jnp.bfloat16)


def test_dot_value_and_gradients_match_float32_math_on_the_same_operands():
  rng = np.random.default_rng(0)
  x, w, probe = _bf16(rng, 3, 5, 16), _bf16(rng, 16, 8), jnp.asarray(rng.normal(size=(3, 5, 8)), jnp.float32)
  loss = lambda f: (lambda a, b: jnp.sum(f(a, b) * probe))
  ours = jax.value_and_grad(loss(dense.dot), argnums=(0, 1))(x, w)
  reference = jax.value_and_grad(loss(lambda a, b: a.astype(jnp.float32) @ b.astype(jnp.float32)),
                                 argnums=(0, 1))(x, w)
  assert dense.dot(x, w).dtype == jnp.float32
  np.testing.assert_allclose(ours[0], reference[0], rtol=1e-6)
  for got, want in zip(ours[1], reference[1]):
    assert got.dtype == jnp.bfloat16 and got.shape == want.shape
    # The cotangent is rounded to bfloat16 before the backward products: bfloat16-level agreement.
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=2e-2, atol=2e-2)


def test_matmul_picks_the_rule_by_dtype():
  x, w = jnp.ones((2, 4)), jnp.ones((4, 3))
  assert dense.matmul(x, w, jnp.float32).dtype == jnp.float32
  assert dense.matmul(x, w, jnp.bfloat16).dtype == jnp.float32  # float32 results between the layers
  assert dense.matmul(x, w, jnp.float32, out_dtype=jnp.float32).dtype == jnp.float32


def test_dense_matches_flax_dense_in_parameters_value_and_gradients():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(4, 6, 16)), jnp.float32)
  ours, theirs = dense.Dense(8), nn.Dense(8)
  params = theirs.init(jax.random.PRNGKey(0), x)
  params = jax.tree.map(lambda p: p + jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)  # bias != 0
  assert jax.tree.structure(ours.init(jax.random.PRNGKey(0), x)) == jax.tree.structure(params)
  probe = jnp.asarray(rng.normal(size=(4, 6, 8)), jnp.float32)
  loss = lambda module: (lambda p, h: jnp.sum(module.apply(p, h) * probe))
  (v1, g1), (v2, g2) = (jax.value_and_grad(loss(m), argnums=(0, 1))(params, x) for m in (ours, theirs))
  np.testing.assert_allclose(v1, v2, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_add_bias_gradient_is_the_column_sum():
  rng = np.random.default_rng(2)
  y, bias = jnp.asarray(rng.normal(size=(3, 5, 7)), jnp.float32), jnp.asarray(rng.normal(size=7), jnp.float32)
  weights = jnp.asarray(rng.normal(size=(3, 5, 7)), jnp.float32)
  dy, dbias = jax.grad(lambda a, b: jnp.sum(dense.add_bias(a, b) * weights), argnums=(0, 1))(y, bias)
  np.testing.assert_array_equal(dy, weights)
  np.testing.assert_allclose(dbias, weights.sum(axis=(0, 1)), rtol=1e-5, atol=1e-6)
  assert dense.add_bias(y.astype(jnp.bfloat16), bias).dtype == jnp.bfloat16


def _dot_operand_types(hlo_text: str) -> list:
  return re.findall(r"stablehlo\.dot_general[^\n]*?:\s*\((tensor<[^>]*>), (tensor<[^>]*>)\)", hlo_text)


def test_every_dense_product_of_a_bfloat16_layer_step_takes_bfloat16_operands():
  config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=16)
  layer = bert.EncoderLayer(config, jnp.bfloat16)
  x = jnp.ones((2, 8, 32), jnp.bfloat16)
  mask = bert.attention_mask_of(jnp.ones((2, 8), jnp.int32))
  params = layer.init(jax.random.PRNGKey(0), x, mask, True)
  grad = jax.grad(lambda p, h: jnp.sum(layer.apply(p, h, mask, True).astype(jnp.float32)), argnums=(0, 1))
  operands = _dot_operand_types(jax.jit(grad).lower(params, x).as_text())
  rank = lambda tensor_type: tensor_type.count("x")  # "tensor<2x8x32xbf16>" has rank 3
  dense = [pair for pair in operands if rank(pair[0]) <= 3]  # attention's rank-4 [b, h, q, k] products aside
  # forward, input gradient and kernel gradient of query, key, value, output, intermediate, output
  assert len(dense) == 18, operands
  assert all(a.endswith("xbf16>") and b.endswith("xbf16>") for a, b in dense), dense
