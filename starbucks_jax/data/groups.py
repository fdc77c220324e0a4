"""Tevatron groups: a query's positive and negatives, completed with other queries' positives when its own
negatives are too few (`srl.TrainData` builds the groups; this module fills the short ones)."""

from __future__ import annotations

import dataclasses
import numpy as np

from starbucks_jax.data.checks import as_passages
from starbucks_jax.data.text_ids import same_passage
from starbucks_jax.errors import StarbucksError

MAX_FILL_ROUNDS = 100  # rounds of drawing other queries' positives before a group counts as unfillable


@dataclasses.dataclass
class Group:
  """A Tevatron group being built: the passages chosen so far and the query's own positives."""
  row: int
  rng: np.random.Generator
  own: list[dict]
  passages: list[dict]


def fill(groups: list[Group], table, positive: str, group_size: int) -> None:
  """Completes short groups with positives (column `positive` of `table`) of other queries, each group
  drawing from its own rng.

  A round draws, for every short group, as many other rows as it lacks passages, reads their
  positives in one call, and takes one of each at random unless it is (or duplicates) one of the
  query's own positives or a passage already in the group. Each group's draws depend only on its own
  rng and the data, so the result does not depend on which host or batch the query is in.
  """
  num_examples = len(table)
  for _ in range(MAX_FILL_ROUNDS):
    if not groups:
      return
    if num_examples < 2:
      break
    draws = {}
    for g in groups:
      others = g.rng.integers(num_examples - 1, size=group_size - len(g.passages))
      draws[g.row] = others + (others >= g.row)  # skips the query's own row
    wanted = np.unique(np.concatenate(list(draws.values())))
    positives = dict(zip(wanted.tolist(), table.read(wanted, [positive])[positive]))
    for g in groups:
      for other in draws[g.row].tolist():
        candidates = as_passages(positives[other])
        candidate = candidates[g.rng.integers(len(candidates))]
        if not any(same_passage(candidate, p) for p in g.own + g.passages):
          g.passages.append(candidate)
    groups = [g for g in groups if len(g.passages) < group_size]
  if groups:
    raise StarbucksError(f"{table.name}: cannot fill the group of row {groups[0].row + 1} with "
                         f"{group_size - 1} passages that are not its own positives: the data has "
                         f"too few distinct positive passages for train_group_size {group_size}")
