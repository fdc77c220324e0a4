"""Clean in-batch negatives (`losses/negatives.py`, `data/text_ids.py`): the mask against a loop over the
batch, with and without each query's labelled positives, and a duplicated text or another labelled positive
of the query that changes no loss: with the mask, each query's loss and KL equal those of its row with the
candidate's column deleted (numpy), for starbucks (every pair, score KL) and 2dmse, and the candidate's
gradient is exactly 0 where it is no other query's negative.
Plain against GradCache and 1 against 8 devices: `tests/training/grad_cache_probe.py`'s clean cases
(`tests/training/test_grad_cache.py`, and the 8-device test below)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from starbucks_jax.losses.negatives import false_negatives
from starbucks_jax.losses.srl import srl_loss
from starbucks_jax.losses.srl_spec import SrlLossSpec

LAYERS, HIDDEN, QUERIES, GROUP = 3, 16, 6, 2
PAIRS = ((1, 4), (2, 8), (3, 16))
KEY = jax.random.key(0)
# Text ids of a batch of 6 triplets with every kind of false negative: query 4's hard negative (passage 9)
# is query 1's positive; query 2's positive (4) has the text of query 0's (0); query 3's hard negative (7)
# is its own positive's text; queries 5 and 0 are one text, so each one's positive is the other's too.
QUERY_IDS = np.array([10, 11, 12, 13, 14, 10], np.int32)
PASSAGE_IDS = np.array([20, 30, 21, 31, 20, 32, 23, 23, 24, 21, 25, 35], np.int32)
EXPECTED = {(1, 9), (0, 4), (2, 0), (3, 7), (0, 10), (5, 0), (5, 4)}


def loop_false_negatives(query_ids, passage_ids, group, labelled=None):
  """The definition, one (query, candidate) at a time; `labelled`: each query's labelled positives' ids."""
  own = lambda k: {passage_ids[k * group]} | (set() if labelled is None else set(labelled[k]))
  positives = {i: set().union(*(own(k) for k in range(len(query_ids)) if query_ids[k] == query_ids[i]))
               for i in range(len(query_ids))}
  return {(i, j) for i in range(len(query_ids)) for j in range(len(passage_ids))
          if j != i * group and passage_ids[j] in positives[i]}


def test_false_negatives_are_the_candidates_with_a_positive_text():
  mask = np.asarray(false_negatives(jnp.asarray(QUERY_IDS), jnp.asarray(PASSAGE_IDS), GROUP))
  assert set(zip(*np.nonzero(mask))) == loop_false_negatives(QUERY_IDS, PASSAGE_IDS, GROUP) == EXPECTED
  rng = np.random.default_rng(1)
  for group in (1, 3):  # random batches with many repeats
    query_ids, passage_ids = rng.integers(0, 5, 12), rng.integers(0, 9, 12 * group)
    mask = np.asarray(false_negatives(jnp.asarray(query_ids), jnp.asarray(passage_ids), group))
    assert set(zip(*np.nonzero(mask))) == loop_false_negatives(query_ids, passage_ids, group)
  unique = np.asarray(false_negatives(jnp.arange(4), jnp.arange(8) + 100, 2))
  assert not unique.any()


# Each query's labelled positives for the batch above (width 3, padded with its last id): query 1 lists
# query 3's positive (passages 6 and 7 have its text) and query 5's hard negative (11); query 3 lists query
# 2's hard negative (5); query 2 lists a text that is not in the batch; query 5 lists query 0's hard negative
# (1), which so becomes a false negative of query 0 too (one query text).
LABELLED_IDS = np.array([[20, 20, 20], [21, 23, 35], [20, 99, 99], [23, 32, 32], [24, 24, 24], [25, 30, 30]],
                        np.int32)
EXPECTED_LABELLED = EXPECTED | {(1, 6), (1, 7), (1, 11), (3, 5), (5, 1), (0, 1)}


def test_a_querys_other_labelled_positives_are_false_negatives_wherever_they_are():
  """Another example's positive, a hard negative, the positive of a query with the same text: the mask from
  the labelled positives against the loop, and on random batches whose rows list several positives."""
  mask = np.asarray(false_negatives(jnp.asarray(QUERY_IDS), jnp.asarray(PASSAGE_IDS), GROUP, jnp.asarray(LABELLED_IDS)))
  assert set(zip(*np.nonzero(mask))) == loop_false_negatives(QUERY_IDS, PASSAGE_IDS, GROUP, LABELLED_IDS)
  assert set(zip(*np.nonzero(mask))) == EXPECTED_LABELLED
  rng = np.random.default_rng(2)
  for group, width in ((1, 1), (3, 4), (2, 7)):
    query_ids, passage_ids = rng.integers(0, 6, 12), rng.integers(0, 15, 12 * group)
    labelled = np.concatenate([passage_ids[::group, None], rng.integers(0, 15, (12, width - 1))], axis=1)
    mask = np.asarray(false_negatives(jnp.asarray(query_ids), jnp.asarray(passage_ids), group, jnp.asarray(labelled)))
    assert set(zip(*np.nonzero(mask))) == loop_false_negatives(query_ids, passage_ids, group, labelled)
  # Only the positive it trains with (pairs, triplets): the same mask as without labelled positives.
  own_only = np.asarray(false_negatives(jnp.asarray(QUERY_IDS), jnp.asarray(PASSAGE_IDS), GROUP,
                                        jnp.asarray(PASSAGE_IDS[::GROUP, None])))
  assert set(zip(*np.nonzero(own_only))) == EXPECTED


def pooled(seed=0):
  rng = np.random.default_rng(seed)
  query = {n: rng.normal(size=(QUERIES, HIDDEN)).astype(np.float32) for n in range(LAYERS + 1)}
  passage = {n: rng.normal(size=(QUERIES * GROUP, HIDDEN)).astype(np.float32) for n in range(LAYERS + 1)}
  return query, passage


def scores_np(q, p, dim, scale=20.0):
  q, p = q[:, :dim], p[:, :dim]
  q = q / np.linalg.norm(q, axis=1, keepdims=True)
  p = p / np.linalg.norm(p, axis=1, keepdims=True)
  return scale * (q.astype(np.float64) @ p.T.astype(np.float64))


def log_softmax(x):
  return x - (np.max(x) + np.log(np.sum(np.exp(x - np.max(x)))))


def row_losses(scores, kept):
  """Mean MNRL over queries, each row over its kept columns only (the duplicates deleted)."""
  return np.mean([-log_softmax(scores[i, kept[i]])[list(kept[i]).index(i * GROUP)] for i in range(QUERIES)])


def row_kl(student, teacher, kept):
  kls = []
  for i in range(QUERIES):
    t, s = log_softmax(teacher[i, kept[i]]), log_softmax(student[i, kept[i]])
    kls.append(np.sum(np.exp(t) * (t - s)))
  return np.mean(kls)


def kept_columns(mask):
  return [np.nonzero(~mask[i])[0] for i in range(QUERIES)]


def masked_loss(spec, query, passage, mask):
  as_jax = lambda d: {n: jnp.asarray(v) for n, v in d.items()}
  fn = None if mask is None else jnp.asarray(mask)
  return jax.jit(lambda q, p, m: srl_loss(q, p, None, spec, KEY, m))(as_jax(query), as_jax(passage), fn)


def test_a_duplicated_text_changes_no_starbucks_loss():
  """Every pair's MNRL and score KL equal numpy's with each query's false negatives' columns deleted."""
  spec = SrlLossSpec(mode="starbucks", kl="scores", pairs=PAIRS, num_model_layers=LAYERS, hidden_size=HIDDEN,
                     group_size=GROUP)
  query, passage = pooled()
  mask = np.asarray(false_negatives(jnp.asarray(QUERY_IDS), jnp.asarray(PASSAGE_IDS), GROUP))
  kept, every = kept_columns(mask), [np.arange(QUERIES * GROUP)] * QUERIES
  loss, metrics = masked_loss(spec, query, passage, mask)
  plain_loss, plain_metrics = masked_loss(spec, query, passage, None)
  full = scores_np(query[3], passage[3], 16)
  expected_total = 0.0
  for n, d in PAIRS:
    s = scores_np(query[n], passage[n], d)
    expected = row_losses(s, kept)
    np.testing.assert_allclose(float(metrics[f"loss/n{n}_d{d}"]), expected, rtol=1e-5)
    np.testing.assert_allclose(float(plain_metrics[f"loss/n{n}_d{d}"]), row_losses(s, every), rtol=1e-5)
    assert abs(expected - row_losses(s, every)) > 1e-3  # the duplicates mattered
    expected_total += expected
    if (n, d) != PAIRS[-1]:
      kl = row_kl(s, full, kept)
      np.testing.assert_allclose(float(metrics[f"kl/n{n}_d{d}"]), kl, rtol=1e-5)
      expected_total += kl
  np.testing.assert_allclose(float(loss), expected_total, rtol=1e-5)
  assert float(metrics["masked_negatives"]) == len(EXPECTED) and "masked_negatives" not in plain_metrics
  assert float(plain_loss) != float(loss)


def test_a_duplicated_text_changes_no_2dmse_loss_and_no_gradient():
  """2dmse (every layer and dim drawn): the masked loss minus the plain one is numpy's MNRL difference
  (its KL is over coordinates and unchanged); and the loss does not move with a passage's vector in the
  rows that mask it: passage 7 is query 3's false negative only, and with its hard-negative slot (query 3)
  masked, only the other rows, where it is a real negative, give its gradient."""
  spec = SrlLossSpec(mode="2dmse", layers=(1, 2), dims=(4, 8, 16), pairs=PAIRS, num_model_layers=LAYERS,
                     hidden_size=HIDDEN, group_size=GROUP, n_layers_per_step=-1, n_dims_per_step=-1)
  query, passage = pooled(1)
  mask = np.asarray(false_negatives(jnp.asarray(QUERY_IDS), jnp.asarray(PASSAGE_IDS), GROUP))
  kept, every = kept_columns(mask), [np.arange(QUERIES * GROUP)] * QUERIES

  def contrastive(kept_rows):
    last = sum(row_losses(scores_np(query[3], passage[3], d), kept_rows) for d in spec.dims)
    prior = np.mean([sum(row_losses(scores_np(query[n], passage[n], d), kept_rows) for d in spec.dims)
                     for n in spec.layers])
    return last + prior

  loss, metrics = masked_loss(spec, query, passage, mask)
  plain_loss, plain_metrics = masked_loss(spec, query, passage, None)
  np.testing.assert_allclose(float(loss) - float(plain_loss), contrastive(kept) - contrastive(every), rtol=1e-4)
  assert abs(contrastive(kept) - contrastive(every)) > 1e-2
  assert float(metrics["2dmse/kl"]) == float(plain_metrics["2dmse/kl"])
  for n, d in PAIRS:
    np.testing.assert_allclose(float(metrics[f"loss/n{n}_d{d}"]), row_losses(scores_np(query[n], passage[n], d), kept),
                               rtol=1e-5)


@pytest.mark.parametrize("mode", ["starbucks", "2dmse"])
def test_a_duplicated_passage_is_as_if_absent(mode):
  """One query, its positive, a copy of the positive and a negative (G = 3), masked: the same loss and
  metrics as the query with its positive and the negative alone (G = 2), and no gradient for the copy
  (2dmse without its KL, which is over each text's coordinates and so counts the copy as a text)."""
  extra = dict(kl="scores") if mode == "starbucks" else dict(
      layers=(1, 2), dims=(4, 8, 16), n_layers_per_step=-1, n_dims_per_step=-1, st_kl_temperature=0.0)
  spec = lambda group: SrlLossSpec(mode=mode, pairs=PAIRS, num_model_layers=LAYERS, hidden_size=HIDDEN,
                                   group_size=group, **extra)
  rng = np.random.default_rng(3)
  query = {n: jnp.asarray(rng.normal(size=(1, HIDDEN)), jnp.float32) for n in range(LAYERS + 1)}
  alone = {n: jnp.asarray(rng.normal(size=(2, HIDDEN)), jnp.float32) for n in range(LAYERS + 1)}
  with_copy = {n: jnp.stack([v[0], v[0], v[1]]) for n, v in alone.items()}
  mask = false_negatives(jnp.asarray([7]), jnp.asarray([1, 1, 2]), 3)
  assert np.asarray(mask).tolist() == [[False, True, False]]
  loss, metrics = srl_loss(query, with_copy, None, spec(3), KEY, mask)
  expected, expected_metrics = srl_loss(query, alone, None, spec(2), KEY)
  np.testing.assert_allclose(float(loss), float(expected), rtol=1e-6)
  for name, value in expected_metrics.items():
    np.testing.assert_allclose(float(metrics[name]), float(value), rtol=1e-6, atol=1e-7, err_msg=name)
  unmasked, _ = srl_loss(query, with_copy, None, spec(3), KEY)
  assert abs(float(unmasked) - float(expected)) > 1e-3  # counted as a negative, the copy changes the loss

  def loss_of_copy(copy):
    passages = {n: v.at[1].set(copy[n]) for n, v in with_copy.items()}
    return srl_loss(query, passages, None, spec(3), KEY, mask)[0]

  gradient = jax.grad(loss_of_copy)({n: v[1] for n, v in with_copy.items()})
  assert all(float(jnp.abs(g).max()) == 0.0 for g in gradient.values())
  assert np.isfinite(float(jax.grad(lambda p: srl_loss(query, p, None, spec(3), KEY, mask)[0])(with_copy)[3].sum()))


def test_clean_negatives_are_exact_on_eight_devices_and_under_grad_cache():
  """The probe's clean batch (duplicated query, positives and hard negatives, other labelled positives: 10
  false negatives) on 8
  simulated devices (data=2 x fsdp=4): GradCache's step equals the plain one, and the plain step's loss
  and count equal one device's."""
  import ml_collections
  import sys
  from starbucks_jax.runtime import sharding
  from tests.runtime.test_grad_cache_mesh import PROBE, assert_exact, probe_results
  from tests.training import grad_cache_probe as probe
  case = "starbucks-clean"
  results = probe_results([sys.executable, str(PROBE), "2", "4", case], JAX_PLATFORMS="cpu",
                          XLA_FLAGS="--xla_force_host_platform_device_count=8")
  assert results["devices"] == 8
  assert_exact(results, [case])
  config, params = probe.model()
  _, group, query_length, passage_length, _, _ = probe.CASES[case]
  batch = probe.make_batch(group, query_length, passage_length, scored=False, clean=True)
  one_device = sharding.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 1}))
  metrics, _ = probe.step_results(probe.settings_for(case, config), params, batch, one_device)
  assert float(metrics["masked_negatives"]) == results["cases"][case]["masked_negatives"] == 10
  assert abs(float(metrics["loss"]) - results["cases"][case]["loss"]) < 1e-5 * abs(float(metrics["loss"]))


def test_other_labelled_positives_change_no_starbucks_loss():
  """The batch with its labelled positives: every pair's MNRL and score KL equal numpy's with each query's
  other labelled positives' columns (and its duplicates') deleted, and differ from the loss without them."""
  spec = SrlLossSpec(mode="starbucks", kl="scores", pairs=PAIRS, num_model_layers=LAYERS, hidden_size=HIDDEN,
                     group_size=GROUP)
  query, passage = pooled(2)
  mask = np.asarray(false_negatives(jnp.asarray(QUERY_IDS), jnp.asarray(PASSAGE_IDS), GROUP, jnp.asarray(LABELLED_IDS)))
  without = np.asarray(false_negatives(jnp.asarray(QUERY_IDS), jnp.asarray(PASSAGE_IDS), GROUP))
  loss, metrics = masked_loss(spec, query, passage, mask)
  full, moved = scores_np(query[3], passage[3], 16), []
  for n, d in PAIRS:
    s = scores_np(query[n], passage[n], d)
    np.testing.assert_allclose(float(metrics[f"loss/n{n}_d{d}"]), row_losses(s, kept_columns(mask)), rtol=1e-5)
    moved.append(abs(row_losses(s, kept_columns(mask)) - row_losses(s, kept_columns(without))))
    if (n, d) != PAIRS[-1]:
      np.testing.assert_allclose(float(metrics[f"kl/n{n}_d{d}"]), row_kl(s, full, kept_columns(mask)), rtol=1e-5)
  assert max(moved) > 1e-2  # the other labelled positives mattered
  assert float(metrics["masked_negatives"]) == len(EXPECTED_LABELLED)
  assert float(loss) != float(masked_loss(spec, query, passage, without)[0])


@pytest.mark.parametrize("mode", ["starbucks", "2dmse"])
def test_another_labelled_positive_in_the_batch_is_as_if_absent(mode):
  """A query whose row lists two positives, trained with the first (G = 3: the positive, the other labelled
  positive as a filled slot, a negative): masked, the loss and metrics are those of the positive and the
  negative alone (G = 2), and the other positive's vector gets a gradient of exactly 0; without the mask it
  counts as a negative: another loss, and a gradient."""
  extra = dict(kl="scores") if mode == "starbucks" else dict(
      layers=(1, 2), dims=(4, 8, 16), n_layers_per_step=-1, n_dims_per_step=-1, st_kl_temperature=0.0)
  spec = lambda group: SrlLossSpec(mode=mode, pairs=PAIRS, num_model_layers=LAYERS, hidden_size=HIDDEN,
                                   group_size=group, **extra)
  rng = np.random.default_rng(4)
  query = {n: jnp.asarray(rng.normal(size=(1, HIDDEN)), jnp.float32) for n in range(LAYERS + 1)}
  alone = {n: jnp.asarray(rng.normal(size=(2, HIDDEN)), jnp.float32) for n in range(LAYERS + 1)}
  other = {n: jnp.asarray(rng.normal(size=(HIDDEN,)), jnp.float32) for n in range(LAYERS + 1)}
  passages = lambda o: {n: jnp.stack([v[0], o[n], v[1]]) for n, v in alone.items()}
  mask = false_negatives(jnp.asarray([7]), jnp.asarray([1, 5, 2]), 3, jnp.asarray([[1, 5]]))
  assert np.asarray(mask).tolist() == [[False, True, False]]
  assert not np.asarray(false_negatives(jnp.asarray([7]), jnp.asarray([1, 5, 2]), 3)).any()  # a text of its own
  loss, metrics = srl_loss(query, passages(other), None, spec(3), KEY, mask)
  expected, expected_metrics = srl_loss(query, alone, None, spec(2), KEY)
  np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)
  for name, value in expected_metrics.items():
    np.testing.assert_allclose(float(metrics[name]), float(value), rtol=1e-5, atol=1e-7, err_msg=name)  # float32 sums in another order
  masked = jax.grad(lambda o: srl_loss(query, passages(o), None, spec(3), KEY, mask)[0])(other)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in masked.values())
  unmasked_loss = srl_loss(query, passages(other), None, spec(3), KEY)[0]
  assert abs(float(unmasked_loss) - float(expected)) > 1e-3
  unmasked = jax.grad(lambda o: srl_loss(query, passages(o), None, spec(3), KEY)[0])(other)
  assert max(float(jnp.abs(g).max()) for g in unmasked.values()) > 1e-4
