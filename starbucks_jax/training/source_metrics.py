"""A mixture's metrics per source (`data/mixture.py`): `source/<name>/loss`, the mean loss of the steps that
source's batches took since the last logged row, and `source/<name>/examples`, the examples it has given
since step 0 (counted from the order itself, so a resumed run logs what an uninterrupted one would).
Mixed batches (`data.mix_sources`) hold every source in each step: examples alone, the loss is the batch's."""

from __future__ import annotations

import jax
import numpy as np


class SourceMetrics:
  """Per-source rows for `metrics.jsonl`; nothing for a run on one source."""

  def __init__(self, names: tuple, data, start_step: int):
    self.names, self.data = tuple(names), data
    self.mixed_rows = getattr(data, "rows", None)  # MixedBatches: each source's rows of every batch
    self.examples = np.zeros(len(self.names), np.int64)
    self._losses: list[tuple[int, jax.Array]] = []
    for step in range(start_step if self.names else 0):
      self._count(step)

  def _count(self, step: int) -> int:
    if self.mixed_rows is not None:
      self.examples += np.asarray(self.mixed_rows)
      return -1
    source = self.data.source_of(step)
    self.examples[source] += self.data.global_batch_size
    return source

  def add(self, step: int, loss: jax.Array) -> None:
    """Step `step` is done with this loss (a device scalar: read only when a row is written)."""
    if self.names:
      source = self._count(step)
      if source >= 0:
        self._losses.append((source, loss))

  def row(self) -> dict:
    """The metrics since the last row, and the examples so far."""
    out = {}
    losses = jax.device_get([loss for _, loss in self._losses])
    for k, name in enumerate(self.names):
      mine = [float(v) for (source, _), v in zip(self._losses, losses) if source == k]
      if mine:
        out[f"source/{name}/loss"] = float(np.mean(mine))
      out[f"source/{name}/examples"] = int(self.examples[k])
    self._losses = []
    return out
