"""A shuffled stream of texts for SMAE pre-training, read forward, never downloaded or checked whole.

`TextStream(config, ...)` (config: a `smae.TextDataConfig` with `streaming=True`) reads an hf: source or
local files as a `datasets.IterableDataset`, shuffled through `config.shuffle_buffer` rows and split
between hosts; `texts(start, count)` gives rows [start, start + count) of this host's share, counted over
the epochs one after another (a new shuffle each epoch). A later start than the next row skips forward
to it, an earlier one restarts the stream and skips to it (logged), so any step can still be asked for,
at the cost of reading the rows before it. A bad row is named when it is read.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping, Sequence

from starbucks_jax.data import sources
from starbucks_jax.data.checks import TEXT, value_problem
from starbucks_jax.errors import StarbucksError

log = logging.getLogger(__name__)


def missing_column(name: str, column: str, columns: Sequence[str]) -> str:
  return (f"{name}: has no column {column!r} (data.text_column); its columns are {sorted(columns)}")


class TextStream:
  """This host's share of a shuffled stream of texts, epoch after epoch, read forward from any row."""

  def __init__(self, config, *, seed: int, process_index: int, process_count: int):
    self.column = config.text_column
    self.host = f"host {process_index} of {process_count}"
    self.dataset, self.name = _open_stream(config)
    self.reported_size = _reported_size(self.dataset, config.split)
    if config.max_examples is not None:
      self.dataset = self.dataset.take(config.max_examples)
      self.reported_size = min(self.reported_size or config.max_examples, config.max_examples)
    features = getattr(self.dataset, "features", None)  # None when the source does not declare them
    if features is not None and self.column not in features:
      raise StarbucksError(missing_column(self.name, self.column, list(features)))
    from datasets.distributed import split_dataset_by_node  # pylint: disable=import-outside-toplevel
    self.dataset = split_dataset_by_node(self.dataset.shuffle(seed=seed, buffer_size=config.shuffle_buffer),
                                         rank=process_index, world_size=process_count)
    self._rows = None  # the iterator of the current epoch; None before the first read
    self._position = 0  # rows of this host's share read so far, over all epochs
    self._epoch = 0
    self._in_epoch = 0  # rows of the current epoch read so far

  def texts(self, start: int, count: int) -> list[str]:
    """Rows [start, start + count) of this host's share, counted over the epochs one after another."""
    if self._rows is None or start < self._position:
      self._start_epoch(0)
      self._position = 0
    if start > self._position:
      log.info("%s: skipping %d streamed rows (%s) to reach row %d", self.name, start - self._position,
               self.host, start)
      while self._position < start:
        self._next_row()
    return [self._text(self._next_row()) for _ in range(count)]

  def _start_epoch(self, epoch: int) -> None:
    self._epoch, self._in_epoch = epoch, 0
    self.dataset.set_epoch(epoch)  # a new shuffle for each epoch
    self._rows = iter(self.dataset)

  def _next_row(self):
    while True:
      try:
        row = next(self._rows)
      except StopIteration:
        if self._in_epoch == 0:
          raise StarbucksError(f"{self.name}: the stream holds no rows for {self.host}") from None
        self._start_epoch(self._epoch + 1)
        continue
      self._position += 1
      self._in_epoch += 1
      return row

  def _text(self, row: Mapping) -> str:
    where = (f"{self.name}: streamed row {self._in_epoch} of epoch {self._epoch} ({self.host}, after "
             f"shuffling)")
    if self.column not in row:
      raise StarbucksError(missing_column(where, self.column, list(row)))
    problem = value_problem(row[self.column], TEXT)
    if problem:
      raise StarbucksError(f"{where}, column {self.column!r}: {problem}")
    return row[self.column]


def _reported_size(dataset, split: str) -> int | None:
  """The split's row count when the source declares one (a hub data set's card may), else None."""
  try:
    return int(dataset.info.splits[split].num_examples) or None
  except (AttributeError, KeyError, TypeError, ValueError):
    return None


def _open_stream(config):
  """(a `datasets.IterableDataset`, its name for messages) for an hf: source or local files."""
  import datasets  # pylint: disable=import-outside-toplevel
  source = config.source.strip()
  if source.startswith("hf:"):
    name, _, subset = source[3:].partition(":")
    try:
      dataset = datasets.load_dataset(name, subset or None, split=config.split, streaming=True)
    except Exception as e:  # pylint: disable=broad-except
      raise StarbucksError(f"{source}: cannot stream split {config.split!r}: {e}") from e
    return dataset, f"{source} split {config.split}"
  files = sources.local_files(source, sources.TEXT_FILE_BUILDERS)
  builders = sorted({builder for _, builder in files})
  if len(builders) > 1:
    raise StarbucksError(f"{source}: streamed files must all have one format, got {', '.join(builders)}")
  name = ", ".join(path for path, _ in files)
  try:
    dataset = datasets.load_dataset(builders[0], data_files=[os.path.abspath(p) for p, _ in files],
                                    split="train", streaming=True)
  except Exception as e:  # pylint: disable=broad-except
    raise StarbucksError(f"{name}: cannot be streamed as {builders[0]}: {type(e).__name__}: {e}") from e
  return dataset, name
