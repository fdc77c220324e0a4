"""A mixture of training sources: each batch from one source (by default), in a resumable order.

    config.data.mixture = {
        "snli": dict(source="data/quickstart/snli_triplets.jsonl"),
        "scifact": dict(source="scifact_train.jsonl", train_group_size=4, passage_max_length=128,
                        instruction="Given a scientific claim, retrieve documents that support it"),
        "stsb": dict(source="data/quickstart/stsb_train.jsonl", objective="cosent", weight=0.5),
    }
    config.data.query_prompt = "Instruct: {instruction}\\nQuery:"   # each source's, with its own instruction

Every source is a `srl.DataConfig` of its own: the data block's fields, with the source's entries (any
DataConfig field but the shared layout: `same_length`, `packing`, `pack_length`, `pack_rows`) in their place.
A source adds `weight`, `objective` (its loss: "" takes `starbucks.objective`, or CoSENT for scored pairs)
and `instruction`; in its prompts "{name}" and "{instruction}" stand for its name and instruction. A
scored source does not take the data block's `clean_negatives` (it has no in-batch negatives to clean).

Order: `MixtureOrder`. An epoch of the mixture has as many steps as its sources' epochs together; with
`sampling="size"` each source has its own epoch's steps in it, with `sampling="weights"` shares of those
steps in proportion to the weights. The epoch's steps are dealt to the sources in a random order fixed by
(seed, epoch), so which source a step reads, and which of that source's batches, are a pure function of
(seed, step): a resumed run reads what an uninterrupted one would, and each host reads only its rows of
that source's batch (`srl.TrainData`). Each source keeps its own epochs: a source given more steps than
its epoch has goes on into its next epoch.

With `mix_sources=True` a batch instead holds every source's rows (`MixedBatches`): a share of the batch
per source in proportion to the sampling, one objective and one group size for all.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Mapping, Sequence

import numpy as np

from starbucks_jax.data import text_ids
from starbucks_jax.data.batching import HostBatches
from starbucks_jax.data.mixture_config import source_block
from starbucks_jax.data.srl import DataConfig, TrainData
from starbucks_jax.errors import StarbucksError

log = logging.getLogger(__name__)

MIXTURE_SALT = 0x6D6978  # keeps the mixture's order apart from any source's own (seed, epoch) order


def step_shares(steps_per_epoch: Sequence[int], weights: Sequence[float], sampling: str) -> np.ndarray:
  """Steps of each source in one epoch of the mixture (as many as the sources' epochs together)."""
  sizes = np.asarray(steps_per_epoch, np.int64)
  if sampling == "size":
    return sizes
  total = int(sizes.sum())
  exact = np.asarray(weights, np.float64) / float(np.sum(weights)) * total
  shares = np.floor(exact).astype(np.int64)
  # The steps the floors leave go to the largest remainders (ties: the earlier source).
  shares[np.argsort(-(exact - shares), kind="stable")[:total - int(shares.sum())]] += 1
  return shares


class MixtureOrder:
  """Which source global batch `step` reads, and which of that source's batches: see the module docstring."""

  def __init__(self, seed: int, shares: Sequence[int]):
    self.seed = seed
    self.shares = np.asarray(shares, np.int64)
    self.steps_per_epoch = int(self.shares.sum())
    self._epoch = (-1, None, None)

  def _deal(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(source of each step of `epoch`, that step's batch number within its source)."""
    if self._epoch[0] != epoch:
      sources = np.repeat(np.arange(len(self.shares)), self.shares)
      sources = sources[np.random.default_rng([self.seed, MIXTURE_SALT, epoch]).permutation(len(sources))]
      within = np.zeros(len(sources), np.int64)
      for k, share in enumerate(self.shares):
        within[sources == k] = epoch * share + np.arange(share)
      self._epoch = (epoch, sources, within)
    return self._epoch[1], self._epoch[2]

  def __call__(self, step: int) -> tuple[int, int]:
    """(source index, the source's own step) of global batch `step`."""
    if step < 0:
      raise ValueError(f"step must be non-negative, got {step}")
    epoch, position = divmod(int(step), self.steps_per_epoch)
    sources, within = self._deal(epoch)
    return int(sources[position]), int(within[position])


class MixtureData(HostBatches):
  """Batches of several `srl.TrainData` sources, one source a batch (module docstring).

  Args:
    config: the data block (its `mixture` and `sampling`).
    parts: each source's opened data, in the order of `config.mixture` (same batch size, hosts, tokenizer).
  """

  def __init__(self, config: DataConfig, parts: Sequence, *, seed: int):
    sources, first = config.mixture, parts[0]
    super().__init__(global_batch_size=first.global_batch_size, seed=seed, process_index=first.process_index,
                     process_count=first.process_count, fixed_lengths=first.fixed_lengths,
                     pack_groups=first.pack_groups)
    self.config, self.sources, self.parts = config, tuple(sources), list(parts)
    self.source_names = tuple(s.name for s in sources)
    self.shares = step_shares([p.steps_per_epoch for p in parts], [s.weight for s in sources], config.sampling)
    self.order = MixtureOrder(seed, self.shares)
    self.steps_per_epoch = self.order.steps_per_epoch
    self.num_examples = sum(p.num_examples for p in parts)
    for source, part, share in zip(sources, parts, self.shares):
      log.info("mixture source %s: %d %s examples, %d of the mixture's %d steps per epoch (%.2f of its own "
               "epoch)", source.name, part.num_examples, part.kind, share, self.steps_per_epoch,
               share / part.steps_per_epoch)

  @property
  def fixed_lengths(self) -> bool:
    return self._fixed_lengths

  @fixed_lengths.setter
  def fixed_lengths(self, value: bool) -> None:  # the dry run pads every source to its max lengths
    self._fixed_lengths = value
    for part in getattr(self, "parts", ()):
      part.fixed_lengths = value

  def source_of(self, step: int) -> int:
    return self.order(step)[0]

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This host's rows of global batch `step`: its source's own batch (`srl.TrainData.batch`)."""
    source, within = self.order(step)
    return self.parts[source].batch(within)

  def texts(self, step: int):
    source, within = self.order(step)
    return self.parts[source].texts(within)

  def row_pads(self) -> dict[str, int]:
    return self.parts[0].row_pads()


class MixedBatches(MixtureData):
  """`mix_sources=True`: every batch holds each source's share of rows (its share of the steps, as a share of
  the batch), one source after the other; all sources must share a kind of loss and a group size. Host h's
  rows are its share of every source's rows, so several hosts' batches hold one host's rows in another order."""

  def __init__(self, config: DataConfig, parts: Sequence, *, seed: int):
    super().__init__(config, parts, seed=seed)
    self.rows = tuple(mixed_rows(self.global_batch_size, self.shares, self.process_count))
    self.parts = [part.resized(rows) for part, rows in zip(parts, self.rows)]
    self.steps_per_epoch = min(p.steps_per_epoch for p in self.parts)  # the shortest source's epoch
    log.info("mixed batches: %s rows a batch", ", ".join(f"{s.name} {r}" for s, r in zip(self.sources, self.rows)))

  def source_of(self, step: int) -> int:
    return 0

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """Each source's batch `step` (of its own share of rows), queries and passages one source after the other,
    padded to one length."""
    batches = [part.batch(step) for part in self.parts]
    out = {}
    for key in batches[0]:
      arrays = [b[key] for b in batches]
      if arrays[0].ndim == 2:
        length = max(a.shape[1] for a in arrays)
        pad = self.parts[0].tokenizer.pad_token_id if key.endswith("input_ids") else 0
        arrays = [text_ids.widen(a, length) if key == text_ids.LABELLED_KEY else
                  np.pad(a, ((0, 0), (0, length - a.shape[1])), constant_values=pad) for a in arrays]
      out[key] = np.concatenate(arrays)
    return out

  def texts(self, step: int):
    parts = [part.texts(step) for part in self.parts]
    scores = None if parts[0][2] is None else np.concatenate([p[2] for p in parts])
    return sum((p[0] for p in parts), []), sum((p[1] for p in parts), []), scores


def mixed_rows(global_batch_size: int, shares: Sequence[int], multiple: int) -> list[int]:
  """Each source's rows of a mixed batch: its share of the batch, in multiples of `multiple` (hosts x
  packing groups), at least one multiple each, summing to the batch."""
  if global_batch_size % multiple:
    raise StarbucksError(f"batch_size {global_batch_size} is not a multiple of {multiple}")
  units = global_batch_size // multiple
  if units < len(shares):
    raise StarbucksError(f"data.mix_sources: batch_size {global_batch_size} cannot give each of the "
                         f"{len(shares)} sources at least {multiple} rows")
  exact = np.asarray(shares, np.float64) / float(np.sum(shares)) * units
  counts = np.floor(exact).astype(np.int64)
  counts[np.argsort(-(exact - counts), kind="stable")[:units - int(counts.sum())]] += 1  # largest remainders
  while counts.min() == 0:  # a source too small for a unit of its own takes one from the largest
    counts[np.argmax(counts)] -= 1
    counts[np.argmin(counts)] += 1
  return [int(c) * multiple for c in counts]


def _open_source(config: DataConfig, source, tokenizer, kwargs: dict) -> TrainData:
  """One source's data (`source_block`). A scored source takes `clean_negatives` from its own entry only: its
  CoSENT loss has no in-batch negatives to clean, so the data block's setting, meant for the others, is not
  its (set in its entry, it is refused as for a single source, `tasks/srl.py`)."""
  part = TrainData(source_block(config, source), tokenizer, **kwargs)
  if part.schema.score is not None and "clean_negatives" not in dict(source.overrides):
    part.config = dataclasses.replace(part.config, clean_negatives=False)
  return part


def open_data(config: DataConfig, tokenizer, **kwargs) -> HostBatches:
  """The training data of a data block: `srl.TrainData` for one source, a mixture for `config.mixture`.
  `kwargs`: TrainData's (global_batch_size, seed, hosts, rows, packing groups)."""
  if not config.mixture:
    return TrainData(config, tokenizer, **kwargs)
  if config.mix_sources and config.packing:
    raise StarbucksError("data.mix_sources cannot pack: a mixed batch joins each source's padded rows; turn "
                         "off data.packing or data.mix_sources")
  parts = [_open_source(config, source, tokenizer, kwargs) for source in config.mixture]
  if not config.mix_sources:
    return MixtureData(config, parts, seed=kwargs["seed"])
  for source, part in zip(config.mixture[1:], parts[1:]):
    first = parts[0]
    if (part.group_size, part.schema.score is None) != (first.group_size, first.schema.score is None):
      raise StarbucksError(f"data.mix_sources: source {source.name} ({part.kind}, {part.group_size} passage(s) "
                           f"a query) cannot share a batch with {config.mixture[0].name} ({first.kind}, "
                           f"{first.group_size}): mixed sources need one kind of loss and one group size")
  return MixedBatches(config, parts, seed=kwargs["seed"])
