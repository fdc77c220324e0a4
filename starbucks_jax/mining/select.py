"""Which of a query's ranked candidates become its negatives: a pure function of the scores and the seed.

Candidates come best first with the query's positives already removed (by id and by identical text), so
rank 1 is the most similar passage that is not a positive. A candidate is eligible when

  - its rank r is in range_min < r <= range_max (the range_min most similar are skipped: likely
    unlabelled positives), and
  - it scores at most positive - margin (`margin`) and at most positive * (1 - relative_margin)
    (`relative_margin`), the positive score being the lowest of the query's positives: a candidate that
    scores within the margin of a positive is likely a false negative.

`num_negatives` are then drawn from the eligible ones: "random" (default) draws them with
numpy.random.default_rng([seed, query row]), so a query's negatives do not depend on the batch it is
searched in or the other queries of the file; "top" takes the best. They are returned best first.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from starbucks_jax.errors import StarbucksError

SAMPLINGS = ("random", "top")


@dataclasses.dataclass(frozen=True)
class SelectOptions:
  num_negatives: int = 7
  depth: int = 200
  range_min: int = 10
  range_max: int | None = None  # None: depth
  margin: float | None = None
  relative_margin: float | None = None
  sampling: str = "random"
  seed: int = 0

  def __post_init__(self):
    for name, least in (("num_negatives", 1), ("depth", 1), ("range_min", 0), ("seed", 0)):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise StarbucksError(f"--{name.replace('_', '-')} must be an integer of at least {least}, got {value!r}")
    if self.range_max is not None and not self.range_min < self.range_max <= self.depth:
      raise StarbucksError(f"--range-max must be above --range-min ({self.range_min}) and at most --depth "
                           f"({self.depth}), got {self.range_max}")
    if self.range_min >= self.top_rank:
      raise StarbucksError(f"--range-min {self.range_min} leaves no rank to draw from: the search goes "
                           f"{self.depth} deep (--depth)")
    for name in ("margin", "relative_margin"):
      value = getattr(self, name)
      if value is not None and not (np.isfinite(value) and value >= 0):
        raise StarbucksError(f"--{name.replace('_', '-')} must be a number of at least 0, got {value!r}")
    if self.relative_margin is not None and self.relative_margin >= 1:
      raise StarbucksError(f"--relative-margin must be below 1, got {self.relative_margin}")
    if self.sampling not in SAMPLINGS:
      raise StarbucksError(f"--sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}")

  @property
  def top_rank(self) -> int:
    """The last rank (from 1) that may be drawn."""
    return self.depth if self.range_max is None else self.range_max


def eligible(scores: np.ndarray, positive_score: float, options: SelectOptions) -> np.ndarray:
  """[depth] bool: which candidates may be drawn (scores best first; -inf marks no candidate)."""
  ranks = np.arange(1, len(scores) + 1)
  ok = np.isfinite(scores) & (ranks > options.range_min) & (ranks <= options.top_rank)
  if options.margin is not None:
    ok &= scores <= positive_score - options.margin
  if options.relative_margin is not None:
    ok &= scores <= positive_score * (1 - options.relative_margin)
  return ok


def choose(scores: np.ndarray, positive_score: float, row: int, options: SelectOptions) -> np.ndarray:
  """Indices into `scores` of the query's negatives, best first (fewer when too few are eligible)."""
  candidates = np.flatnonzero(eligible(scores, positive_score, options))
  if len(candidates) <= options.num_negatives:
    return candidates
  if options.sampling == "top":
    return candidates[:options.num_negatives]
  rng = np.random.default_rng([options.seed, row])
  return np.sort(rng.choice(candidates, options.num_negatives, replace=False))
