"""Training objectives: what one (layer, dim) sub-model's loss is, given its [queries, docs] scores.

An `Objective` turns a pair's logits (`srl_spec.pair_scores`: [B, B*G], scale * cos or dot / temperature)
and, for scored data, the [B] labels into a scalar. `OBJECTIVES` lists them by the name that
`starbucks.objective` takes; every schedule (`srl.py`, `mse2d.py`) trains with whichever is named.

To add an objective: its function in a new module and one line in `OBJECTIVES` (or `register(...)`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp

from starbucks_jax.errors import StarbucksError
from starbucks_jax.losses.contrastive import cosent_loss, mnrl_loss


@dataclasses.dataclass(frozen=True)
class Objective:
  """A loss on one sub-model's scores.

  Attributes:
    name: the value of `starbucks.objective`.
    loss: (scores [B, B*G] float32, labels [B] or None, group_size G) -> scalar.
    scored: it reads labels: the data must be scored pairs (G = 1); otherwise it must not be.
  """
  name: str
  loss: Callable
  scored: bool = False


MNRL = Objective("mnrl", lambda scores, labels, group_size: mnrl_loss(scores, group_size))
# CoSENT scores pair i as (sentence1 i, sentence2 i): the diagonal of the score matrix.
COSENT = Objective("cosent", lambda scores, labels, group_size: cosent_loss(jnp.diagonal(scores), labels),
                   scored=True)

OBJECTIVES: dict[str, Objective] = {objective.name: objective for objective in (MNRL, COSENT)}


def register(objective: Objective) -> None:
  if objective.name in OBJECTIVES and OBJECTIVES[objective.name] is not objective:
    raise StarbucksError(f"objective {objective.name!r} is registered already")
  OBJECTIVES[objective.name] = objective


def get_objective(name: str) -> Objective:
  if name not in OBJECTIVES:
    raise StarbucksError(f"unknown objective {name!r}; expected one of {', '.join(OBJECTIVES)}")
  return OBJECTIVES[name]
