"""What every kind of training data shares: the split over hosts, the epoch order, bucket lengths, padding.

A batch is a pure function of (seed, step): epoch e's example order is `epoch_order(seed, e, n)`, and
each host reads its own contiguous share of every global batch (`check_batch_split`). Rows are padded to
the smallest bucket length that holds the batch's longest text (`bucket_list`), so few shapes compile.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from starbucks_jax.errors import StarbucksError

SMALLEST_BUCKET = 16


def default_buckets(max_length: int) -> list[int]:
  """16, 32, 64, ... below `max_length`, then `max_length`.

  Coarser than the encoder's `bucket_lengths`: a training step compiles once per (query, passage) length
  pair, so the number of buckets counts twice.
  """
  return [SMALLEST_BUCKET << k for k in range(32) if SMALLEST_BUCKET << k < max_length] + [max_length]


def bucket_list(buckets: Sequence[int] | None, max_length: int) -> list[int]:
  """The lengths batches are padded to: `buckets` (default: `default_buckets`) below max_length, then it."""
  if buckets is None:
    return default_buckets(max_length)
  for b in buckets:
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1:
      raise StarbucksError(f"buckets must be positive integers, got {list(buckets)!r}")
  return sorted({int(b) for b in buckets if b < max_length} | {max_length})


def check_batch_split(global_batch_size: int, process_index: int, process_count: int) -> None:
  """Raises a StarbucksError unless the global batch splits evenly over the hosts."""
  for name, value, least in (("global_batch_size", global_batch_size, 1),
                             ("process_count", process_count, 1), ("process_index", process_index, 0)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
      raise StarbucksError(f"{name} must be an integer of at least {least}, got {value!r}")
  if process_index >= process_count:
    raise StarbucksError(f"process_index {process_index} is not below process_count {process_count}")
  if global_batch_size % process_count:
    raise StarbucksError(f"global batch size {global_batch_size} is not divisible by the "
                         f"{process_count} processes")


class HostBatches:
  """What every batch source shares: the seed, and this host's share of each global batch.

  Host `process_index` of `process_count` takes rows [process_index * b, (process_index + 1) * b) of every
  global batch, b = global_batch_size / process_count. With `fixed_lengths` (default: with several
  hosts) every batch is padded to the max lengths, so all hosts' arrays have one shape without
  exchanging anything. Packed batches come in `pack_groups` groups (the step's micro-batches or GradCache
  chunks: `packing.py`), so a host's share must split into that many.
  """

  def __init__(self, *, global_batch_size: int, seed: int, process_index: int, process_count: int,
               fixed_lengths: bool | None, pack_groups: int = 1):
    check_batch_split(global_batch_size, process_index, process_count)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
      raise StarbucksError(f"seed must be a non-negative integer, got {seed!r}")
    self.seed = int(seed)
    self.global_batch_size = int(global_batch_size)
    self.process_index = int(process_index)
    self.process_count = int(process_count)
    self.local_batch_size = self.global_batch_size // self.process_count
    self.fixed_lengths = self.process_count > 1 if fixed_lengths is None else bool(fixed_lengths)
    if pack_groups < 1 or self.local_batch_size % pack_groups:
      raise StarbucksError(f"packed batches in {pack_groups} micro-batches or chunks: each host's "
                           f"{self.local_batch_size} examples (global_batch_size / processes) must split into "
                           f"{pack_groups} equal parts")
    self.pack_groups = int(pack_groups)

  def host_rows(self, global_rows: np.ndarray) -> np.ndarray:
    """This host's slice of a global batch's rows."""
    b = self.local_batch_size
    return global_rows[self.process_index * b:(self.process_index + 1) * b]


def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The example order of an epoch: a permutation of range(num_examples) fixed by (seed, epoch)."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


class EpochOrder:
  """Global batch `step`'s example indices: slice `step % steps_per_epoch` of epoch `step // steps_per_epoch`'s
  order (the last incomplete batch of an epoch is dropped). The current epoch's order is cached."""

  def __init__(self, seed: int, num_examples: int, global_batch_size: int):
    self.seed, self.num_examples, self.global_batch_size = seed, num_examples, global_batch_size
    self.steps_per_epoch = num_examples // global_batch_size
    self._order = (-1, None)

  def indices(self, step: int) -> np.ndarray:
    """The example (row) indices of global batch `step`, all hosts' rows, in batch order."""
    if step < 0:
      raise ValueError(f"step must be non-negative, got {step}")
    epoch, position = divmod(int(step), self.steps_per_epoch)
    if self._order[0] != epoch:
      self._order = (epoch, epoch_order(self.seed, epoch, self.num_examples))
    # A copy: callers may change it, the cached order must not.
    return self._order[1][position * self.global_batch_size:(position + 1) * self.global_batch_size].copy()


def pad_rows(rows: Sequence[Sequence[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Lists of ids (of at most `length`) as int32 [len(rows), length], pad_id after each row's ids,
  and the attention mask (1 on a row's ids, 0 on its padding)."""
  ids = np.full((len(rows), length), pad_id, np.int32)
  mask = np.zeros((len(rows), length), np.int32)
  for row, x in enumerate(rows):
    ids[row, :len(x)] = x
    mask[row, :len(x)] = 1
  return ids, mask
