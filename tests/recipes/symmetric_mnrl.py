"""An objective added by the recipe in ARCHITECTURE.md: symmetric in-batch InfoNCE, the mean of the
query -> passages cross-entropy (MNRL) and the positive passage -> queries one (as GTE-style trainers use).

Touch list: this one module (in the package it would be `starbucks_jax/losses/<name>.py`) and one line in
`starbucks_jax/losses/objectives.py` (here `objectives.register(OBJECTIVE)` in the test). Every schedule
(starbucks, grid, separate, 2dmse) then trains with `--config.starbucks.objective=symmetric_mnrl`.
"""

import jax
import jax.numpy as jnp

from starbucks_jax.losses.contrastive import mnrl_loss
from starbucks_jax.losses.objectives import Objective


def symmetric_mnrl_loss(scores: jnp.ndarray, labels, group_size: int) -> jnp.ndarray:
  """scores: [Q, Q * G]; passage i * G is query i's positive."""
  num_queries = scores.shape[0]
  positives = scores[:, jnp.arange(num_queries) * group_size]  # [Q queries, Q positives]
  backward = jnp.mean(jax.nn.logsumexp(positives, axis=0) - jnp.diagonal(positives))
  return (mnrl_loss(scores, group_size) + backward) / 2


OBJECTIVE = Objective("symmetric_mnrl", symmetric_mnrl_loss)
