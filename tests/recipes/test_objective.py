"""The objective recipe, for real: `symmetric_mnrl.py` (one file) registered with one line, checked against
numpy, then trained by the starbucks and 2dmse schedules through the config."""

import numpy as np
import pytest

from tests.helpers import run_train, tiny_config
from tests.recipes import symmetric_mnrl


@pytest.fixture
def registered():
  from starbucks_jax.losses import objectives
  objectives.register(symmetric_mnrl.OBJECTIVE)  # the touch list's one registry line
  yield
  del objectives.OBJECTIVES["symmetric_mnrl"]  # registered for this test only


def test_the_loss_against_numpy():
  rng = np.random.default_rng(0)
  queries, group = 4, 3
  scores = rng.normal(size=(queries, queries * group)).astype(np.float32)
  log_softmax = lambda x, axis: x - np.log(np.sum(np.exp(x), axis=axis, keepdims=True))
  forward = -np.mean(log_softmax(scores, 1)[np.arange(queries), np.arange(queries) * group])
  positives = scores[:, np.arange(queries) * group]
  backward = -np.mean(np.diagonal(log_softmax(positives, 0)))
  ours = float(symmetric_mnrl.symmetric_mnrl_loss(scores, None, group))
  assert ours == pytest.approx((forward + backward) / 2, rel=1e-5)


def test_schedules_train_with_the_registered_objective(registered, tiny_dir, tmp_path):
  """A run trains with it from the config; the starbucks and 2dmse schedules both compute it (the same
  batch scores differently than under MNRL)."""
  import jax
  from starbucks_jax.training import tasks
  changes = {"starbucks.objective": "symmetric_mnrl", "num_steps": 1, "export.enabled": False}
  assert np.isfinite(run_train(tiny_config(tiny_dir, **changes), tmp_path / "run")["metrics"]["loss"])
  for mode in ("starbucks", "2dmse"):
    losses = {}
    for objective in ("symmetric_mnrl", "mnrl"):
      setup = tasks.prepare(tasks.read_config(tiny_config(tiny_dir, **dict(
          changes, **{"starbucks.mode": mode, "starbucks.objective": objective}))))
      _, metrics = setup.settings.loss(setup.load_params(), setup.data.batch(0), jax.random.key(0))
      losses[objective] = float(metrics["loss/n4_d32"])
    assert np.isfinite(losses["symmetric_mnrl"]) and losses["symmetric_mnrl"] != losses["mnrl"], (mode, losses)


def test_an_unregistered_objective_is_refused(tiny_dir, tmp_path):
  from starbucks_jax.errors import StarbucksError
  with pytest.raises(StarbucksError, match="unknown objective 'symmetric_mnrl'; expected one of mnrl, cosent"):
    run_train(tiny_config(tiny_dir, **{"starbucks.objective": "symmetric_mnrl"}), tmp_path / "run")
