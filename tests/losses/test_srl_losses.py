"""Loss families and SRL schedules against plain numpy loops, and 2dmse against sentence-transformers."""

import itertools
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from starbucks_jax.errors import StarbucksError
from starbucks_jax.losses import contrastive as losses, mse2d
from starbucks_jax.losses.srl import srl_loss
from starbucks_jax.losses.srl_spec import SrlLossSpec

NUM_LAYERS, HIDDEN, BATCH = 4, 16, 4
KEY = jax.random.PRNGKey(0)

# Compiled once per spec (a static argument, as in training): much faster here than op-by-op dispatch.
jit_srl_loss = jax.jit(srl_loss, static_argnums=(3,))
jit_sample_2dmse = jax.jit(mse2d.sample_2dmse, static_argnums=(0,))
_loss_and_grads = jax.jit(jax.value_and_grad(srl_loss, argnums=(0, 1), has_aux=True), static_argnums=(3,))


def loss_and_checked_grads(query, passage, labels, spec, rng, check_grads=True):
  """srl_loss's (total, metrics), after checking its gradients are finite and not all zero."""
  if not check_grads:
    return jit_srl_loss(query, passage, labels, spec, rng)
  (total, metrics), grads = _loss_and_grads(query, passage, labels, spec, rng)
  leaves = [np.asarray(g[layer]) for g in grads for layer in spec.pooled_layers()]
  assert all(np.all(np.isfinite(leaf)) for leaf in leaves)
  assert any(np.abs(leaf).max() > 0 for leaf in leaves)
  return total, metrics


# --- numpy references: written as loops, straight from the definitions ---------------------------


def np_normalize(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def np_scores(q, d, similarity, scale=20.0, temperature=1.0):
  out = np.zeros((len(q), len(d)))
  for i in range(len(q)):
    for j in range(len(d)):
      if similarity == "cosine":
        out[i, j] = scale * np.dot(q[i], d[j]) / (np.linalg.norm(q[i]) * np.linalg.norm(d[j]))
      else:
        out[i, j] = np.dot(q[i], d[j]) / temperature
  return out


def np_log_softmax(row):
  row = np.asarray(row, np.float64)
  return row - row.max() - np.log(np.sum(np.exp(row - row.max())))


def np_mnrl(scores, group_size):
  return np.mean([-np_log_softmax(scores[i])[i * group_size] for i in range(len(scores))])


def np_cosent(scores, labels):
  terms = [scores[j] - scores[i] for i in range(len(scores)) for j in range(len(scores)) if labels[i] > labels[j]]
  return np.log1p(np.sum(np.exp(terms))) if terms else 0.0


def np_kl(student, teacher):
  """Mean over rows of KL(softmax(teacher) || softmax(student))."""
  total = 0.0
  for s, t in zip(student, teacher):
    log_p, log_q = np_log_softmax(t), np_log_softmax(s)
    total += np.sum(np.exp(log_p) * (log_p - log_q))
  return total / len(student)


def np_pair_loss(q, p, labels, spec, normalize):
  if normalize:
    q, p = np_normalize(q), np_normalize(p)
  scores = np_scores(q, p, spec.similarity, spec.scale, spec.temperature)
  if spec.objective == "mnrl":
    return np_mnrl(scores, spec.group_size), scores
  return np_cosent(np.diag(scores), labels), scores


def np_schedule(query, passage, labels, spec):
  """starbucks / grid / separate, as the module docstring defines them."""
  if spec.mode == "grid":
    pairs = [(n, d) for n in spec.layers for d in spec.dims]
  else:
    pairs = list(spec.pairs)
  weights = spec.pair_weights or [1.0] * len(pairs)
  normalize = spec.normalize and spec.similarity == "dot"
  losses_, scores = {}, {}
  for n, d in pairs:
    losses_[n, d], scores[n, d] = np_pair_loss(query[n][:, :d], passage[n][:, :d], labels, spec, normalize)
  total = sum(w * losses_[p] for w, p in zip(weights, pairs))
  full = pairs[-1]
  kls = {}
  if spec.mode != "separate" and spec.kl != "none":
    for n, d in pairs[:-1]:
      if spec.kl == "scores":
        t = spec.kl_temperature
        kls[n, d] = np_kl(scores[n, d] / t, scores[full] / t)
      else:
        student = np.concatenate([query[n], passage[n]])[:, :d]
        teacher = np.concatenate([query[full[0]], passage[full[0]]])[:, :d]
        kls[n, d] = np_kl(student, teacher)
    factor = spec.kl_weight * (spec.embedding_kl_scale if spec.kl == "embeddings" else 1.0)
    total += factor * sum(kls.values())
  return total, losses_, kls


def np_mse2d(query, passage, labels, spec, prior_layers, last_dims, prior_dims):
  """sentence-transformers' Matryoshka2dLoss for given draws (layers and dims as values, not indices)."""
  weight_of = dict(zip(spec.dims, spec.pair_weights or [1.0] * len(spec.dims)))
  last = spec.num_model_layers

  def matryoshka(n, dims):
    return sum(weight_of[d] * np_pair_loss(query[n][:, :d], passage[n][:, :d], labels, spec, True)[0] for d in dims)

  total = spec.last_layer_weight * matryoshka(last, last_dims)
  total += spec.prior_layers_weight * np.mean([matryoshka(n, ds) for n, ds in zip(prior_layers, prior_dims)])
  t = spec.st_kl_temperature
  if t > 0:
    teacher = np.concatenate([query[last], passage[last]]) / t
    for n in prior_layers:
      total += t * spec.kl_div_weight * np_kl(np.concatenate([query[n], passage[n]]) / t, teacher)
  return total


# --- fixed random embeddings ---------------------------------------------------------------------


def pooled(group_size, seed=0, batch=BATCH):
  """{layer: [B, H]} queries and {layer: [B*G, H]} passages for layers 0..NUM_LAYERS, float32."""
  rng = np.random.default_rng(seed)
  query = {n: rng.normal(size=(batch, HIDDEN)).astype(np.float32) for n in range(NUM_LAYERS + 1)}
  passage = {n: rng.normal(size=(batch * group_size, HIDDEN)).astype(np.float32) for n in range(NUM_LAYERS + 1)}
  return query, passage


def as_jax(pooled_dict):
  return {n: jnp.asarray(v) for n, v in pooled_dict.items()}


def spec_of(**kwargs):
  return SrlLossSpec(num_model_layers=NUM_LAYERS, hidden_size=HIDDEN, **kwargs)


LABELS = np.array([0.1, 0.9, 0.5, 0.5], np.float32)  # with a tie, which CoSENT must not count


# --- the loss families ---------------------------------------------------------------------------


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_similarity_scores(similarity):
  q, p = pooled(2)
  got = losses.similarity_scores(q[1], p[1], similarity=similarity, scale=7.0, temperature=0.5)
  assert got.dtype == jnp.float32 and got.shape == (BATCH, 2 * BATCH)
  np.testing.assert_allclose(got, np_scores(q[1], p[1], similarity, 7.0, 0.5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("group_size", [1, 2])
def test_mnrl_loss(group_size):
  q, p = pooled(group_size)
  scores = np_scores(q[2], p[2], "cosine").astype(np.float32)
  np.testing.assert_allclose(losses.mnrl_loss(jnp.asarray(scores), group_size), np_mnrl(scores, group_size),
                             rtol=1e-5)
  with pytest.raises(StarbucksError, match="group_size 3"):
    losses.mnrl_loss(jnp.asarray(scores), 3)


def test_cosent_loss_matches_numpy_and_is_stable():
  scores = np.array([3.0, -1.0, 2.0, 0.5], np.float32)
  np.testing.assert_allclose(losses.cosent_loss(jnp.asarray(scores), jnp.asarray(LABELS)),
                             np_cosent(scores, LABELS), rtol=1e-6)
  # All labels equal: no ordered pair, log(1 + 0) = 0.
  assert float(losses.cosent_loss(jnp.asarray(scores), jnp.ones(4))) == 0.0
  # Huge scores must neither overflow nor give NaN gradients (logsumexp, masked pairs at -inf).
  big = jnp.asarray(scores * 1e4)
  value, grad = jax.value_and_grad(losses.cosent_loss)(big, jnp.asarray(LABELS))
  assert np.isfinite(value) and np.all(np.isfinite(grad))
  np.testing.assert_allclose(value, 1e4 * 4.0, rtol=1e-6)  # dominated by s_0 - s_1 (label_1 > label_0)


def test_score_kl_matches_numpy_and_detaches_teacher():
  rng = np.random.default_rng(1)
  student, teacher = rng.normal(size=(2, 5, 8)).astype(np.float32) * 3
  np.testing.assert_allclose(losses.score_kl(jnp.asarray(student), jnp.asarray(teacher), 2.0),
                             np_kl(student / 2.0, teacher / 2.0), rtol=1e-5)
  grad_student, grad_teacher = jax.grad(losses.score_kl, argnums=(0, 1))(jnp.asarray(student), jnp.asarray(teacher))
  assert np.all(np.asarray(grad_teacher) == 0.0)
  assert np.abs(np.asarray(grad_student)).max() > 1e-3


def test_embedding_kl_matches_numpy_and_trains_teacher():
  rng = np.random.default_rng(2)
  student, teacher = rng.normal(size=(2, 6, 8)).astype(np.float32)
  np.testing.assert_allclose(losses.embedding_kl(jnp.asarray(student), jnp.asarray(teacher)),
                             np_kl(student, teacher), rtol=1e-5)
  grad_teacher = jax.grad(losses.embedding_kl, argnums=1)(jnp.asarray(student), jnp.asarray(teacher))
  assert np.abs(np.asarray(grad_teacher)).max() > 1e-3


# --- the schedules -------------------------------------------------------------------------------

STARBUCKS_PAIRS = ((1, 4), (2, 8), (4, 16))

SCHEDULES = {
    "starbucks_scores_kl": dict(pairs=STARBUCKS_PAIRS, group_size=2, kl_weight=0.7, kl_temperature=2.0),
    "starbucks_embedding_kl": dict(pairs=STARBUCKS_PAIRS, kl="embeddings", kl_weight=2.0),
    "starbucks_dot_weighted": dict(pairs=STARBUCKS_PAIRS, similarity="dot", temperature=0.5, normalize=True,
                                   pair_weights=(0.5, 1.0, 2.0), group_size=2),
    "starbucks_dot_unnormalized_no_kl": dict(pairs=STARBUCKS_PAIRS, similarity="dot", kl="none"),
    "starbucks_cosent": dict(pairs=STARBUCKS_PAIRS, objective="cosent", scale=10.0),
    "starbucks_cosent_embedding_kl": dict(pairs=STARBUCKS_PAIRS, objective="cosent", kl="embeddings"),
    "grid": dict(mode="grid", layers=(2, 4), dims=(8, 16), group_size=2, pair_weights=(1, 2, 3, 4)),
    "grid_embedding_kl": dict(mode="grid", layers=(1, 3), dims=(4, 8, 12), kl="embeddings"),
    "separate": dict(mode="separate", pairs=((3, 8),), group_size=2),
    "separate_cosent": dict(mode="separate", pairs=((2, 12),), objective="cosent"),
}

GRADIENTS_CHECKED = {"starbucks_scores_kl", "starbucks_cosent_embedding_kl", "grid", "separate_cosent"}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_matches_numpy(name):
  spec = spec_of(**SCHEDULES[name])
  query, passage = pooled(spec.group_size, seed=3)
  labels = LABELS if spec.objective == "cosent" else None
  total, metrics = loss_and_checked_grads(as_jax(query), as_jax(passage),
                                         None if labels is None else jnp.asarray(labels), spec, KEY,
                                         check_grads=name in GRADIENTS_CHECKED)
  want_total, want_losses, want_kls = np_schedule(query, passage, labels, spec)
  np.testing.assert_allclose(total, want_total, rtol=1e-5)
  assert set(metrics) == {f"loss/n{n}_d{d}" for n, d in want_losses} | {f"kl/n{n}_d{d}" for n, d in want_kls}
  for (n, d), value in want_losses.items():
    np.testing.assert_allclose(metrics[f"loss/n{n}_d{d}"], value, rtol=1e-5)
  for (n, d), value in want_kls.items():
    np.testing.assert_allclose(metrics[f"kl/n{n}_d{d}"], value, rtol=1e-4, atol=1e-7)


def test_score_kl_schedule_does_not_train_the_full_pair_through_kl():
  """With only KL terms left (all pair weights 0), the full pair's layer gets no gradient."""
  spec = spec_of(pairs=STARBUCKS_PAIRS, pair_weights=(0.0, 0.0, 0.0))
  query, passage = pooled(1)
  grads = jax.jit(jax.grad(lambda q: srl_loss(q, as_jax(passage), None, spec, KEY)[0]))(as_jax(query))
  assert np.all(np.asarray(grads[4]) == 0.0) and np.abs(np.asarray(grads[1])).max() > 0
  spec = spec_of(pairs=STARBUCKS_PAIRS, pair_weights=(0.0, 0.0, 0.0), kl="embeddings")
  grads = jax.jit(jax.grad(lambda q: srl_loss(q, as_jax(passage), None, spec, KEY)[0]))(as_jax(query))
  assert np.abs(np.asarray(grads[4])).max() > 0  # the STS variant's teacher is not detached


# --- 2dmse ---------------------------------------------------------------------------------------

MSE2D = {
    "defaults": dict(mode="2dmse", layers=mse2d.st_2dmse_layers(NUM_LAYERS), dims=(4, 8, 16), group_size=2,
                     pairs=((2, 8), (4, 16))),
    "many_per_step": dict(mode="2dmse", layers=(1, 2, 3), dims=(4, 8, 12, 16), n_layers_per_step=2,
                          n_dims_per_step=-1, pair_weights=(1, 2, 3, 4), last_layer_weight=2.0,
                          prior_layers_weight=0.5, kl_div_weight=3.0, st_kl_temperature=0.5),
    "cosent_dot_no_kl": dict(mode="2dmse", layers=(0, 2), dims=(8, 16), objective="cosent", similarity="dot",
                             normalize=True, temperature=0.1, n_dims_per_step=2, st_kl_temperature=0.0),
}


@pytest.mark.parametrize("name", sorted(MSE2D))
def test_2dmse_matches_numpy_given_the_draws(name):
  spec = spec_of(**MSE2D[name])
  query, passage = pooled(spec.group_size, seed=4)
  labels = LABELS if spec.objective == "cosent" else None
  jlabels = None if labels is None else jnp.asarray(labels)
  compiled = []
  for seed in range(2):
    rng = jax.random.PRNGKey(seed)
    sample = jit_sample_2dmse(spec, rng)
    prior_layers = [spec.layers[i] for i in np.asarray(sample.prior_layer_index)]
    last_dims = [spec.dims[i] for i in np.asarray(sample.last_dim_index)]
    prior_dims = [[spec.dims[i] for i in row] for row in np.asarray(sample.prior_dim_index)]
    want = np_mse2d(query, passage, labels, spec, prior_layers, last_dims, prior_dims)
    total, metrics = loss_and_checked_grads(as_jax(query), as_jax(passage), jlabels, spec, rng,
                                           check_grads=name != "many_per_step")
    compiled.append((_loss_and_grads._cache_size(), jit_srl_loss._cache_size()))
    np.testing.assert_allclose(total, want, rtol=1e-5)
    assert metrics["2dmse/prior_layer"] == prior_layers[0] and metrics["2dmse/last_dim"] == last_dims[0]
    for n, d in spec.pairs:  # monitor pairs: normalised cut, as 2dmse trains them
      want_pair = np_pair_loss(query[n][:, :d], passage[n][:, :d], labels, spec, True)[0]
      np.testing.assert_allclose(metrics[f"loss/n{n}_d{d}"], want_pair, rtol=1e-5)
  assert compiled[0] == compiled[1]  # another rng, other draws, no recompilation


def test_2dmse_draw_counts_and_reach():
  spec = spec_of(**MSE2D["defaults"])
  draws = jax.jit(jax.vmap(lambda key: mse2d.sample_2dmse(spec, key)))(jax.random.split(KEY, 300))
  layers = np.asarray(draws.prior_layer_index)
  assert layers.shape == (300, 1) and draws.prior_dim_index.shape == (300, 1, 1)
  assert set(layers.ravel()) == set(range(len(spec.layers)))  # layer 0 (the embedding output) too
  assert set(np.asarray(draws.last_dim_index).ravel()) == set(range(len(spec.dims)))
  assert set(np.asarray(draws.prior_dim_index).ravel()) == set(range(len(spec.dims)))
  # Uniform over 4 candidates: every count near 75 (a loose bound; a bias would show).
  assert np.bincount(layers.ravel(), minlength=4).min() > 40
  many = spec_of(**MSE2D["many_per_step"])
  for seed in range(5):
    draw = jit_sample_2dmse(many, jax.random.PRNGKey(seed))
    assert draw.prior_layer_index.shape == (2,) and draw.prior_layer_index[0] < draw.prior_layer_index[1]
    np.testing.assert_array_equal(draw.last_dim_index, np.arange(4))  # n_dims_per_step=-1: every dim
    np.testing.assert_array_equal(draw.prior_dim_index, np.tile(np.arange(4), (2, 1)))


def test_2dmse_kl_detaches_the_last_layer():
  spec = spec_of(mode="2dmse", layers=(1, 2, 3), dims=(8, 16), last_layer_weight=0.0, prior_layers_weight=0.0)
  query, passage = pooled(1)
  grads = jax.jit(jax.grad(lambda q: srl_loss(q, as_jax(passage), None, spec, KEY)[0]))(as_jax(query))
  layer = spec.layers[int(jit_sample_2dmse(spec, KEY).prior_layer_index[0])]
  assert np.all(np.asarray(grads[NUM_LAYERS]) == 0.0)
  assert np.abs(np.asarray(grads[layer])).max() > 0


# --- the spec: what it trains, and its errors ------------------------------------------------------


def test_spec_layers_and_pairs():
  spec = spec_of(pairs=[[1, 4], [2, 8], [4, 16]])  # lists from a config file become tuples
  assert hash(spec) == hash(spec_of(pairs=STARBUCKS_PAIRS)) and spec == spec_of(pairs=STARBUCKS_PAIRS)
  assert spec.train_pairs() == spec.log_pairs() == STARBUCKS_PAIRS
  assert spec.pooled_layers() == (1, 2, 4) and spec.forward_layers() == 4
  grid = spec_of(mode="grid", layers=(1, 3), dims=(4, 8))
  assert grid.train_pairs() == ((1, 4), (1, 8), (3, 4), (3, 8)) and grid.forward_layers() == 3
  separate = spec_of(mode="separate", pairs=((2, 8),))
  assert separate.train_pairs() == ((2, 8),) and separate.pooled_layers() == (2,) and separate.forward_layers() == 2
  mse = spec_of(mode="2dmse", layers=(0, 1, 2, 3), dims=(8, 16), pairs=((2, 8),))
  assert mse.train_pairs() == tuple(itertools.product((0, 1, 2, 3, 4), (8, 16)))
  assert mse.pooled_layers() == (0, 1, 2, 3, 4) and mse.forward_layers() == 4 and mse.log_pairs() == ((2, 8),)


BAD_SPECS = [
    (dict(pairs=((1, 8), (2, 8))), "strictly increasing in both layer and dim; (2, 8)"),
    (dict(pairs=((2, 4), (1, 8))), "(1, 8) does not follow (2, 4)"),
    (dict(pairs=((5, 8),)), "layer 5 is outside 1..4"),
    (dict(pairs=((0, 8),)), "layer 0 is outside 1..4"),
    (dict(pairs=((2, 17),)), "dim 17 is outside 1..16"),
    (dict(pairs=((2, 0),)), "dim 0 is outside 1..16"),
    (dict(pairs=((2, 8, 1),)), "(layer, dim)"),
    (dict(pairs=()), "needs at least one (layer, dim) pair"),
    (dict(mode="matryoshka", pairs=((2, 8),)), "unknown mode 'matryoshka'"),
    (dict(pairs=((2, 8),), objective="infonce"), "unknown objective 'infonce'"),
    (dict(pairs=((2, 8),), similarity="l2"), "unknown similarity 'l2'"),
    (dict(pairs=((2, 8),), kl="logits"), "unknown kl 'logits'"),
    (dict(pairs=STARBUCKS_PAIRS, pair_weights=(1.0, 1.0)), "pair_weights has 2 entries, expected 3"),
    (dict(mode="grid", layers=(1, 2), dims=(4,), pair_weights=(1.0,)), "pair_weights has 1 entries, expected 2"),
    (dict(mode="2dmse", layers=(1,), dims=(4, 8), pair_weights=(1.0, 1.0, 1.0)), "expected 2 (one per dim"),
    (dict(mode="separate", pairs=((1, 4), (2, 8))), "exactly one (layer, dim) pair, got 2"),
    (dict(mode="grid", layers=(), dims=(4,)), "needs a non-empty layers"),
    (dict(mode="grid", layers=(1,), dims=()), "needs a non-empty dims"),
    (dict(mode="2dmse", layers=(), dims=(4,)), "needs a non-empty layers"),
    (dict(mode="2dmse", layers=(1,), dims=()), "needs a non-empty dims"),
    (dict(mode="grid", layers=(2, 1), dims=(4,)), "layers must be strictly increasing, got (2, 1)"),
    (dict(mode="grid", layers=(1, 5), dims=(4,)), "layer 5 is outside 1..4"),
    (dict(mode="grid", layers=(1,), dims=(4, 32)), "dim 32 is outside 1..16"),
    (dict(mode="grid", layers=(1,), dims=(4,), pairs=((1, 4),)), "does not use pairs"),
    (dict(pairs=((1, 4),), layers=(1,)), "does not use layers"),
    (dict(mode="2dmse", layers=(1, 4), dims=(4,)), "2dmse layer 4 is not a prior-layer candidate: use 0..3"),
    (dict(mode="2dmse", layers=(1,), dims=(4,), pairs=((5, 4),)), "layer 5 is outside 1..4"),
    (dict(mode="2dmse", layers=(1,), dims=(4,), similarity="dot"), "set normalize=True"),
    (dict(mode="2dmse", layers=(1,), dims=(4,), n_layers_per_step=0), "n_layers_per_step must be -1"),
    (dict(mode="2dmse", layers=(1,), dims=(4,), kl_weight=0.5), "kl_weight=0.5 only applies to the starbucks"),
    (dict(pairs=((2, 8),), n_dims_per_step=2), "n_dims_per_step=2 only applies to mode '2dmse'"),
    (dict(pairs=((2, 8),), objective="cosent", group_size=2), "group_size must be 1, got 2"),
    (dict(pairs=((2, 8),), group_size=0), "group_size must be a positive integer, got 0"),
    (dict(pairs=((2, 8),), temperature=0.0), "temperature must be > 0, got 0.0"),
]


@pytest.mark.parametrize("kwargs,message", BAD_SPECS, ids=[m[:40] for _, m in BAD_SPECS])
def test_spec_errors(kwargs, message):
  with pytest.raises(StarbucksError) as error:
    spec_of(**kwargs)
  assert message in str(error.value)


def test_input_errors():
  spec = spec_of(pairs=STARBUCKS_PAIRS, group_size=2)
  query, passage = pooled(2)
  del query[4]
  with pytest.raises(StarbucksError, match=r"query pooled vectors lack layer\(s\) \[4\]"):
    srl_loss(as_jax(query), as_jax(passage), None, spec, KEY)
  query, passage = pooled(1)
  with pytest.raises(StarbucksError, match="passage has 4 rows for 4 queries; group_size 2 needs 8"):
    srl_loss(as_jax(query), as_jax(passage), None, spec, KEY)
  cosent = spec_of(pairs=STARBUCKS_PAIRS, objective="cosent")
  with pytest.raises(StarbucksError, match=r"cosent objective needs labels of shape \(4,\)"):
    srl_loss(as_jax(query), as_jax(passage), None, cosent, KEY)
  with pytest.raises(StarbucksError, match="sample_2dmse needs a 2dmse spec"):
    mse2d.sample_2dmse(spec, KEY)


# --- against sentence-transformers' own loss modules ----------------------------------------------


def _st_modules():
  """sentence-transformers >= 6.2 (whose Matryoshka2dLoss semantics srl_loss follows), else skip."""
  st = pytest.importorskip("sentence_transformers")
  torch = pytest.importorskip("torch")
  version = tuple(int(v) for v in st.__version__.split(".")[:2] if v.isdigit())
  if version < (6, 2):
    pytest.skip(f"sentence-transformers {st.__version__}: srl_loss follows 6.2's Matryoshka2dLoss")
  from sentence_transformers.base.modules import Transformer
  from sentence_transformers.sentence_transformer import losses as st_losses
  from sentence_transformers.sentence_transformer.modules import Pooling
  return st, torch, st_losses, Transformer, Pooling


@pytest.mark.parametrize("objective", ["mnrl", "cosent"])
def test_2dmse_equals_sentence_transformers(objective, tiny_dir, sentences, monkeypatch):
  """Matryoshka2dLoss on a random 4-layer BERT vs srl_loss on the same model's per-layer pooled vectors."""
  st, torch, st_losses, Transformer, Pooling = _st_modules()
  transformer = Transformer(str(tiny_dir))
  model = st.SentenceTransformer(modules=[transformer, Pooling(32, "mean")], device="cpu").eval()
  group_size = 2 if objective == "mnrl" else 1
  columns = [sentences[i * 6:(i + 1) * 6] for i in range(1 + group_size)]
  labels = np.array([0.2, 0.9, 0.4, 0.4, 0.0, 1.0], np.float32)
  dims = (8, 16, 32)
  base = st_losses.MultipleNegativesRankingLoss(model) if objective == "mnrl" else st_losses.CoSENTLoss(model)
  st_loss = st_losses.Matryoshka2dLoss(model, base, list(dims))

  # Per-layer mean-pooled vectors of every column, from the same torch model (hidden_states 0..4).
  per_column = []
  for texts in columns:
    features = model.preprocess(texts)
    with torch.no_grad():
      hidden = transformer.auto_model(input_ids=features["input_ids"], attention_mask=features["attention_mask"],
                                      token_type_ids=features["token_type_ids"], output_hidden_states=True)
    mask = features["attention_mask"][..., None].float()
    per_column.append([((h * mask).sum(1) / mask.sum(1)).numpy() for h in hidden.hidden_states])
  query = {n: jnp.asarray(per_column[0][n]) for n in range(5)}
  # Query-major docs: row i*G is query i's positive, row i*G+1 its hard negative.
  passage = {n: jnp.asarray(np.stack([c[n] for c in per_column[1:]], axis=1).reshape(-1, 32)) for n in range(5)}

  spec = SrlLossSpec(mode="2dmse", num_model_layers=4, hidden_size=32, layers=mse2d.st_2dmse_layers(4), dims=dims,
                     objective=objective, group_size=group_size)
  loss_given_draws = jax.jit(mse2d.mse2d_loss, static_argnums=(3,))
  # (prior layer, last layer's dim, prior layer's dim), as indices: the embedding output (layer 0) included.
  for layer_index, last_dim_index, prior_dim_index in [(0, 2, 0), (3, 0, 1), (1, 1, 2)]:
    sample = mse2d.Mse2dSample(jnp.array([layer_index], jnp.int32), jnp.array([last_dim_index], jnp.int32),
                               jnp.array([[prior_dim_index]], jnp.int32))
    # ST draws with random.sample: the last layer's dim (an index into its DEScending dims), then the
    # prior layer (hidden_states 0..3), then the prior layer's dim.
    answers = [[len(dims) - 1 - last_dim_index], [spec.layers[layer_index]], [len(dims) - 1 - prior_dim_index]]
    populations = [len(dims), 4, len(dims)]

    def fake_sample(population, k):
      assert len(population) == populations.pop(0) and k == 1
      return answers.pop(0)

    monkeypatch.setattr(random, "sample", fake_sample)
    features = [model.preprocess(texts) for texts in columns]
    with torch.no_grad():
      want = float(st_loss(features, torch.tensor(labels)))
    monkeypatch.undo()
    assert not answers
    got, _ = loss_given_draws(query, passage, jnp.asarray(labels) if objective == "cosent" else None, spec, sample)
    np.testing.assert_allclose(float(got), want, rtol=2e-5)


@pytest.mark.parametrize("objective", ["mnrl", "cosent"])
def test_starbucks_embedding_kl_equals_st_losses_with_torch_kl(objective):
  """The STS variant vs ST's MNRL / CoSENT on cut, normalised columns plus 0.3 * F.kl_div (teacher attached).

  Values and gradients with respect to every pooled vector, so the attached teacher is checked too.
  """
  st, torch, st_losses, _, _ = _st_modules()
  functional = torch.nn.functional
  group_size = 2 if objective == "mnrl" else 1
  pairs = ((1, 4), (2, 8), (4, 16))
  spec = spec_of(pairs=pairs, kl="embeddings", objective=objective, group_size=group_size)
  query, passage = pooled(group_size, seed=6)
  labels = LABELS

  base = st_losses.MultipleNegativesRankingLoss(None) if objective == "mnrl" else st_losses.CoSENTLoss(None)
  t_query = {n: torch.tensor(query[n], requires_grad=True) for n in spec.pooled_layers()}
  t_passage = {n: torch.tensor(passage[n], requires_grad=True) for n in spec.pooled_layers()}

  def columns(n):  # ST's layout: [queries, positives, negatives], each [B, H]
    docs = t_passage[n].reshape(BATCH, group_size, HIDDEN)
    return [t_query[n]] + [docs[:, g] for g in range(group_size)]

  want = 0.0
  for n, d in pairs:
    cut = [functional.normalize(c[:, :d], p=2, dim=-1) for c in columns(n)]
    want = want + base.compute_loss_from_embeddings(cut, torch.tensor(labels))
  full = torch.cat(columns(pairs[-1][0]))
  for n, d in pairs[:-1]:
    student = torch.cat(columns(n))
    want = want + 0.3 * functional.kl_div(functional.log_softmax(student[:, :d], dim=-1),
                                          functional.softmax(full[:, :d], dim=-1), reduction="batchmean")
  want.backward()

  jlabels = jnp.asarray(labels) if objective == "cosent" else None
  (got, _), (grad_query, grad_passage) = jax.jit(jax.value_and_grad(
      lambda q, p: srl_loss(q, p, jlabels, spec, KEY), argnums=(0, 1), has_aux=True))(as_jax(query), as_jax(passage))
  np.testing.assert_allclose(float(got), float(want.detach()), rtol=1e-5)
  for n in spec.pooled_layers():
    np.testing.assert_allclose(grad_query[n], t_query[n].grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grad_passage[n], t_passage[n].grad.numpy(), rtol=1e-4, atol=1e-5)
