"""The splash kernel (model/splash.py), run in Pallas' interpret mode on the CPU, computes what XLA's dense
attention computes: BERT on padded rows (every layer's states at the text's tokens), packed rows with
their gradients through remat, ModernBERT's sliding-window layers; lengths off its 128-token blocks fall
back to XLA; under a 2-device mesh each device runs the kernel on its own examples; a bad
STARBUCKS_ATTENTION is one clear error.

Each comparison jits a fresh function per setting: the variable is read while tracing."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from starbucks_jax.data.packing import pack
from starbucks_jax.errors import StarbucksError
from starbucks_jax.model import splash
from starbucks_jax.model.bert import BertConfig
from starbucks_jax.model.modernbert_config import LOCAL, ModernBertConfig
from starbucks_jax.model.registry import family_of
from tests.helpers import REPO

TOLERANCE = 1e-5
VOCAB = 64


def randomized(config, seed=0):
  """Parameters of the family's shapes, noise of 0.3 everywhere (LayerNorm too): BERT's initialisation (0.02)
  leaves attention nearly uniform, where a wrong mask would hardly show. Numpy's noise, so that no tiny
  program per shape is compiled."""
  shapes = jax.eval_shape(lambda: family_of(config).init_params(config, jax.random.key(0)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(0.3 * rng.standard_normal(x.shape), x.dtype), shapes)


def bert_config(layers=2):
  """Tiny, and with dropout off: attention dropout is the kernel's one exclusion besides the length."""
  return BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                    intermediate_size=48, max_position_embeddings=128, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0)


def padded_rows(length, text_lengths, seed=0):
  ids = np.random.default_rng(seed).integers(1, VOCAB, size=(len(text_lengths), length)).astype(np.int32)
  mask = (np.arange(length)[None, :] < np.asarray(text_lengths)[:, None]).astype(np.int32)
  return jnp.asarray(ids * mask), jnp.asarray(mask)


@pytest.fixture
def kernel_calls(monkeypatch):
  """The windows of the kernel's calls while tracing: proof that a comparison ran the kernel at all."""
  calls = []
  traced = splash.segment_attention

  def counted(*args, **kwargs):
    calls.append(kwargs.get("window"))
    return traced(*args, **kwargs)

  monkeypatch.setattr(splash, "segment_attention", counted)
  return calls


def run(monkeypatch, mode, fn, *args):
  """fn(*args) jitted under `mode`; through a new function each time, since JAX reuses the trace of a
  function it has traced before, whatever the environment says now."""
  monkeypatch.setenv(splash.ENV, mode)
  return jax.jit(lambda *a: fn(*a))(*args)


def assert_text_states_match(a, b, mask):
  """Every layer's states at text tokens (padding's own states differ by design: splash.py) within TOLERANCE."""
  text = np.asarray(mask, bool)
  worst = max(float(np.max(np.abs(np.asarray(x)[text] - np.asarray(y)[text])))
              for x, y in zip(a.hidden_states, b.hidden_states))
  assert worst <= TOLERANCE, worst
  return worst


def test_bert_padded_rows_match_xla(monkeypatch, kernel_calls):
  """Two layers: padding's states differ after the first, and the second must not read them."""
  config = bert_config()
  params = randomized(config)
  ids, mask = padded_rows(128, [128, 77, 5])
  forward = lambda p, i, m: family_of(config).apply(p, i, m, config=config)
  splashed = run(monkeypatch, "splash-interpret", forward, params, ids, mask)
  assert kernel_calls == [None] * config.num_hidden_layers
  dense = run(monkeypatch, "xla", forward, params, ids, mask)
  assert len(kernel_calls) == config.num_hidden_layers
  print("bert padded: max |splash - xla| on text tokens", assert_text_states_match(splashed, dense, mask))
  for layer in range(config.num_hidden_layers + 1):
    for kind in ("cls", "mean"):
      np.testing.assert_allclose(splashed.pooled(layer, kind), dense.pooled(layer, kind), atol=TOLERANCE, rtol=0)


def packed_rows(length, text_lengths, seed=1):
  rng = np.random.default_rng(seed)
  texts = [rng.integers(1, VOCAB, size=n).tolist() for n in text_lengths]
  rows = pack({"input_ids": texts}, {"input_ids": 0}, list(range(len(texts))), length=length, rows=1)
  return {name: jnp.asarray(rows[name]) for name in ("input_ids", "attention_mask", "segment_ids", "position_ids")}


def test_packed_rows_and_their_gradients_match_xla(monkeypatch, kernel_calls):
  """Pooled vectors per text, and the gradient of a scalar of them, through remat's custom vjp (one layer:
  the kernel's backward pass is the slow part in interpret mode)."""
  config = bert_config(layers=1)
  params = randomized(config, seed=2)
  text_lengths = [60, 41, 30, 90, 17, 3]  # two rows of 128 with padding at the end of each
  rows = packed_rows(128, text_lengths)
  assert rows["input_ids"].shape == (2, 128)
  weights = jax.random.normal(jax.random.key(3), (len(text_lengths), config.hidden_size))

  def pooled(p, rows):
    out = family_of(config).apply(p, rows["input_ids"], rows["attention_mask"], config=config, remat="dots",
                                  segment_ids=rows["segment_ids"], position_ids=rows["position_ids"],
                                  num_texts=len(text_lengths))
    return jnp.stack([out.pooled(1, kind) for kind in ("cls", "mean")])

  scalar = lambda p, rows: jnp.sum(pooled(p, rows) * weights)
  both = lambda p, rows: (pooled(p, rows), jax.grad(scalar)(p, rows))
  vectors, grads = run(monkeypatch, "splash-interpret", both, params, rows)
  assert kernel_calls
  dense_vectors, dense_grads = run(monkeypatch, "xla", both, params, rows)
  np.testing.assert_allclose(vectors, dense_vectors, atol=TOLERANCE, rtol=0)
  scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(dense_grads))
  worst = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(dense_grads)))
  print("packed: max |splash - xla| pooled", float(np.max(np.abs(vectors - dense_vectors))),
        "gradients", worst, "of the largest", scale)
  assert worst <= TOLERANCE * scale, (worst, scale)


def test_modernbert_sliding_windows_match_xla(monkeypatch, kernel_calls):
  """A local layer, with a window of 8 tokens on each side, on padded rows of 128 and on packed rows (its
  global layers attend as BERT's do)."""
  config = ModernBertConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=256, local_attention=16,
                            layer_types=(LOCAL,), pad_token_id=0, bos_token_id=1, eos_token_id=2,
                            cls_token_id=1, sep_token_id=2)
  params = randomized(config, seed=4)
  ids, mask = padded_rows(128, [128, 50])
  rows = packed_rows(128, [70, 33, 20])
  apply = family_of(config).apply
  forward = lambda p, ids, mask, rows: (
      apply(p, ids, mask, config=config),
      apply(p, rows["input_ids"], rows["attention_mask"], config=config, segment_ids=rows["segment_ids"],
            position_ids=rows["position_ids"], num_texts=3))
  splashed, splashed_packed = run(monkeypatch, "splash-interpret", forward, params, ids, mask, rows)
  assert kernel_calls == [8, 8]
  dense, dense_packed = run(monkeypatch, "xla", forward, params, ids, mask, rows)
  print("modernbert padded: max |splash - xla| on text tokens", assert_text_states_match(splashed, dense, mask))
  print("modernbert packed: max |splash - xla| on text tokens",
        assert_text_states_match(splashed_packed, dense_packed, rows["attention_mask"]))


def test_lengths_off_the_blocks_fall_back_to_xla(monkeypatch, kernel_calls):
  config = bert_config()
  params = randomized(config)
  ids, mask = padded_rows(96, [96, 40])
  forward = lambda p, i, m: family_of(config).apply(p, i, m, config=config).hidden_states
  fallen_back = run(monkeypatch, "splash-interpret", forward, params, ids, mask)
  dense = run(monkeypatch, "xla", forward, params, ids, mask)
  assert not kernel_calls
  for a, b in zip(fallen_back, dense):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("value, message", [("flash", "is not one of auto, xla, splash, splash-interpret"),
                                            ("splash", "compiles the kernel for a TPU")])
def test_a_bad_setting_is_one_clear_error(monkeypatch, value, message):
  if value == "splash" and jax.default_backend() == "tpu":
    pytest.skip("splash is the TPU's own setting")
  config = bert_config()
  ids, mask = padded_rows(128, [128])
  monkeypatch.setenv(splash.ENV, value)
  with pytest.raises(StarbucksError, match=message):
    jax.jit(lambda p, i, m: family_of(config).apply(p, i, m, config=config))(randomized(config), ids, mask)


# Two fake CPU devices need a process of their own: XLA reads the flag once, at start.
MESH_PROBE = """
import json, os
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
import jax, jax.numpy as jnp, numpy as np
from starbucks_jax.model import splash
from starbucks_jax.runtime import sharding

mesh = sharding.make_mesh(sharding.MeshConfig())
rng = np.random.default_rng(0)
q, k, v = (jnp.asarray(rng.standard_normal((4, 128, 2, 8)), jnp.float32) for _ in range(3))
ids = jnp.asarray(np.repeat(rng.integers(0, 3, (4, 16)), 8, axis=1), jnp.int32)

modes = []  # what the kernel choice says under the mesh, for the batch of 4 and for 3 (not a multiple of 2)

def loss(q, k, v, ids, kernel):
  with sharding.activation_layout(mesh):
    modes[:] = [splash.kernel_mode(4, 128, dropout=False), splash.kernel_mode(3, 128, dropout=False)]
    if kernel:
      out = splash.segment_attention(q, k, v, ids, window=20, interpret=True)
    else:
      near = jnp.abs(jnp.arange(128)[:, None] - jnp.arange(128)[None, :]) <= 20
      out = jax.nn.dot_product_attention(q, k, v, mask=(ids[:, None, :, None] == ids[:, None, None, :]) & near)
  return jnp.sum(jnp.sin(out)), out

put = lambda x: jax.device_put(x, sharding.batch_sharding(mesh))
results = [jax.jit(jax.value_and_grad(lambda *a: loss(*a, kernel), argnums=(0, 1, 2), has_aux=True))(
               *map(put, (q, k, v, ids))) for kernel in (True, False)]
(_, out), grads = results[0]
(_, dense), dense_grads = results[1]
print(json.dumps({"devices": len(mesh.devices.flat), "modes": modes, "out": float(jnp.max(jnp.abs(out - dense))),
                  "grads": max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(grads, dense_grads)),
                  "sharding": str(out.sharding.spec)}))
"""


def test_under_a_mesh_each_device_runs_the_kernel_on_its_own_examples():
  """shard_map over the example axis the activation rules split (XLA cannot partition a Mosaic kernel), with a
  window; a batch the devices do not divide is XLA's."""
  out = subprocess.run([sys.executable, "-c", MESH_PROBE], capture_output=True, text=True, timeout=300, cwd=REPO,
                       env=dict(os.environ, STARBUCKS_ATTENTION="splash-interpret"))
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  print("2-device mesh: max |splash - xla|", result)
  assert result["devices"] == 2 and result["modes"] == [True, None], result
  assert result["out"] <= TOLERANCE and result["grads"] <= TOLERANCE, result
  assert "data" in result["sharding"], result
