"""Packed rows: several texts laid end to end in rows of a fixed token budget, instead of one padded row each.

Short texts in long padded rows pay for every pad token; packing pays only for the rounding at the
end of each row. A packed batch holds, besides the per-token arrays of its texts, [rows, length]:

    segment_ids    int32   the token's text id; PAD_SEGMENT on padding
    position_ids   int32   the token's position within its own text (0 at its first token)
    attention_mask int32   1 on a text's tokens, 0 on padding

The model lets a token attend only to tokens of its own text and pools per text id
(`model/pooling.py`, per text), so each text's vectors are those it gets alone in a padded row.

Text ids are global: host h of H numbers its texts after those of hosts 0..h-1, so pooled vectors come
out in the order of the unpacked global batch however the rows were filled. The number of texts per
batch is fixed by the batch size, and the number of rows is fixed per run (`rows`); a batch whose texts
do not fit takes more rows, in steps of about rows / 16 (`overflow_step`; a new shape, compiled once).

Placement is first-fit decreasing: texts by length, longest first (ties by id), each into the first
row with room. It is a pure function of the lengths, so a batch stays a pure function of (seed, step).

Groups (`groups` = k > 1, for `grad_accum_steps` micro-batches and GradCache chunks): example i of a
host's batch, and its texts, go to group i mod k (`group_of`), which is packed into rows of its own (texts
never share a row across groups) and numbers its texts as a batch of its own (`group_text_id`); the
groups' rows are interleaved: row r of group m is row r k + m. So the strided split the step already makes of a batch ([rows, ...] -> [k, rows / k,
...], part m taking rows m, m + k, ...: `training/step.py`) hands part m exactly group m's rows, on
every host (each host's row count is a multiple of k) and with each device's rows staying on it.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Mapping, Sequence

import numpy as np

from starbucks_jax.errors import StarbucksError

log = logging.getLogger(__name__)

# The segment id of padding tokens: above any text id, so pooling drops them (segment sums keep only ids
# below the number of texts), and shared by all padding, so a padding token attends to padding only and
# no attention row is empty.
PAD_SEGMENT = 2 ** 30
PACKED_KEYS = ("segment_ids", "position_ids", "attention_mask")


def check_settings(pack_length, pack_rows) -> None:
  """A data block's `pack_length` and `pack_rows`: None or positive integers."""
  for name, value in (("pack_length", pack_length), ("pack_rows", pack_rows)):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
      raise StarbucksError(f"data.{name} must be None or a positive integer, got {value!r}")


def run_rows(pack_rows: int | None, estimate: Callable[[], int], row_multiple: int, length: int,
             groups: int = 1) -> int:
  """The rows per host and batch (per group of it) of a run: `pack_rows`, or `estimate()`, rounded up to
  `row_multiple`."""
  rows = round_up(pack_rows or estimate(), row_multiple)
  log.info("packing: %d rows of %d tokens per host and batch%s", rows, length,
           f", for each of its {groups} micro-batches or chunks" if groups > 1 else "")
  return rows


def first_fit(lengths: Sequence[int], capacity: int) -> tuple[np.ndarray, np.ndarray, int]:
  """(row of each text, its start in the row, rows used) of first-fit decreasing into rows of `capacity`."""
  lengths = np.asarray(lengths, np.int64)
  if len(lengths) and (lengths.max() > capacity or lengths.min() < 1):
    raise ValueError(f"text lengths must be in 1..{capacity}, got {lengths.min()}..{lengths.max()}")
  order = np.lexsort((np.arange(len(lengths)), -lengths))  # longest first, ties by index
  row_of = np.zeros(len(lengths), np.int64)
  start_of = np.zeros(len(lengths), np.int64)
  used: list[int] = []  # tokens used in each open row
  for i in order:
    n = lengths[i]
    row = next((r for r, u in enumerate(used) if u + n <= capacity), len(used))
    if row == len(used):
      used.append(0)
    row_of[i], start_of[i] = row, used[row]
    used[row] += n
  return row_of, start_of, len(used)


def round_up(n: int, multiple: int) -> int:
  return max(multiple, math.ceil(n / multiple) * multiple)


def overflow_step(rows: int, row_multiple: int) -> int:
  """Rows a batch that overflows `rows` grows by, in steps of about 1/16 of them: few extra shapes."""
  return round_up(math.ceil(rows / 16), row_multiple)


def rows_needed(lengths: Sequence[int], capacity: int, row_multiple: int = 1, groups: int = 1,
                group_of: Sequence[int] | None = None) -> int:
  """The rows per group first-fit decreasing takes for these lengths, rounded up to a multiple of
  `row_multiple` (`groups`, `group_of`: as `pack`'s)."""
  members = _members(len(lengths), groups, group_of)
  return round_up(max(first_fit([lengths[i] for i in m], capacity)[2] for m in members), row_multiple)


def group_of_example(example: int, groups: int) -> int:
  """The group of the example at index `example` of a host's batch (module docstring)."""
  return example % groups


def group_text_id(example: int, groups: int) -> int:
  """The number, within its group, of the example at index `example` of a batch: examples m, m + k, ...
  of the batch are examples 0, 1, ... of group m (k = groups), as in the step's strided split."""
  return example // groups


def _members(count: int, groups: int, group_of: Sequence[int] | None) -> list[np.ndarray]:
  """The text indices of each group."""
  if groups == 1:
    return [np.arange(count)]
  group_of = np.asarray(group_of)
  if group_of.shape != (count,) or group_of.min() < 0 or group_of.max() >= groups:
    raise ValueError(f"group_of must give each of {count} texts a group in 0..{groups - 1}")
  return [np.flatnonzero(group_of == m) for m in range(groups)]


def pack(columns: Mapping[str, Sequence[Sequence[int]]], pads: Mapping[str, int], text_ids: Sequence[int], *,
         length: int, rows: int, row_multiple: int = 1, groups: int = 1,
         group_of: Sequence[int] | None = None) -> dict[str, np.ndarray]:
  """Packs texts into int32 [R, length] arrays.

  Args:
    columns: name -> one sequence per text (all columns of a text have the same length), e.g.
      {"input_ids": [...]} or SMAE's ids and labels.
    pads: name -> the value of that column on padding.
    text_ids: each text's (global) id, below PAD_SEGMENT; with groups, its id within its group.
    length: tokens per row.
    rows: the least number of rows R (per group); more (in steps of `overflow_step`) when the texts need them.
    groups, group_of: with groups > 1, each text's group (module docstring); groups are packed apart and
      their rows interleaved.

  Returns:
    the columns, plus segment_ids, position_ids and attention_mask (module docstring), [R x groups, length].
  """
  names = list(columns)
  lengths = [len(x) for x in columns[names[0]]]
  for name in names[1:]:
    if [len(x) for x in columns[name]] != lengths:
      raise ValueError(f"packed column {name} has other lengths than {names[0]}")
  members = _members(len(lengths), groups, group_of)
  placed = [first_fit([lengths[i] for i in m], length) for m in members]
  used = max(p[2] for p in placed)
  total = rows if used <= rows else rows + round_up(used - rows, overflow_step(rows, row_multiple))
  total = round_up(total, row_multiple)
  if total > rows:
    log.warning("packing: a batch needed %d rows, more than the run's %d: a new shape to compile (set "
                "data.pack_rows higher to avoid it)", total, rows)
  out = {name: np.full((total * groups, length), pads[name], np.int32) for name in names}
  out["segment_ids"] = np.full((total * groups, length), PAD_SEGMENT, np.int32)
  out["position_ids"] = np.zeros((total * groups, length), np.int32)
  out["attention_mask"] = np.zeros((total * groups, length), np.int32)
  row_of, start_of = np.zeros(len(lengths), np.int64), np.zeros(len(lengths), np.int64)
  for m, (texts, (group_rows, group_starts, _)) in enumerate(zip(members, placed)):
    row_of[texts], start_of[texts] = group_rows * groups + m, group_starts
  for i, (row, start, n) in enumerate(zip(row_of, start_of, lengths)):
    span = slice(start, start + n)
    for name in names:
      out[name][row, span] = columns[name][i]
    out["segment_ids"][row, span] = text_ids[i]
    out["position_ids"][row, span] = np.arange(n)
    out["attention_mask"][row, span] = 1
  return out


def is_packed(batch: Mapping) -> bool:
  """Whether a batch is packed rows (every packed batch has segment ids; no other batch does)."""
  return "segment_ids" in batch


def is_row_array(batch: Mapping, name: str) -> bool:
  """Whether batch[name] is one of a packed batch's [rows, length] arrays (the others hold a value per text)."""
  return is_packed(batch) and batch[name].shape == batch["segment_ids"].shape


def packed_rows(batch: Mapping[str, np.ndarray]) -> int:
  return int(batch["segment_ids"].shape[0])


def pad_to_rows(batch: Mapping[str, np.ndarray], rows: int, pads: Mapping[str, int],
                groups: int = 1) -> dict[str, np.ndarray]:
  """The batch with empty rows added to its [rows, length] arrays up to `rows` (hosts of a multi-host run
  agree on the largest count); with groups, at the end of each group's rows, keeping them interleaved.
  `pads`: the padding value of each row array other than PACKED_KEYS'."""
  have = packed_rows(batch)
  if rows < have or rows % groups or have % groups:
    raise ValueError(f"cannot pad {have} packed rows to {rows} in {groups} groups")
  row_pads = {"segment_ids": PAD_SEGMENT, "position_ids": 0, "attention_mask": 0, **pads}
  out = dict(batch)
  for name, value in row_pads.items():
    if name in batch and rows > have:
      x = batch[name].reshape((have // groups, groups) + batch[name].shape[1:])
      x = np.concatenate([x, np.full(((rows - have) // groups,) + x.shape[1:], value, x.dtype)])
      out[name] = x.reshape((rows,) + x.shape[2:])
  return out


def split_rows(x, groups: int):
  """[rows x groups, ...] -> [groups, rows, ...]: group m's rows (rows m, m + groups, ...), for numpy and
  jax arrays alike (the strided split of `training/step.py`)."""
  x = x.reshape((x.shape[0] // groups, groups) + x.shape[1:])
  return x.swapaxes(0, 1)
