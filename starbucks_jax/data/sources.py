"""Training rows from local files, the Hugging Face hub or TFDS, read by random access and validated.

`open_table(source, ...)` gives a `Table`: column names, a length, and `read(indices, columns)`, which
returns plain Python values (str, float, lists of passage dicts) for just those rows, so that each host
reads only its own share of a batch. `schemas.resolve_schema` decides which columns hold what (the
data's kind), and `Table.check` validates every row before any training code compiles.

Sharded sources are read lazily, each host reading only the rows it needs (`shard_formats.py` says which):
Parquet shards (`parquet_shards.py`: footers at open, then row groups), JSON Lines with a line index
(`jsonl_shards.py`: `python -m starbucks_jax.index` writes it once) and ArrayRecord (`array_record_shards.py`),
on a disk or in a bucket; each row is validated as it is read (`data.bad_rows`), and `check_every_row` is the
full offline pass. Other files in a bucket (JSON Lines without an index, CSV) have no random access: each
host downloads the whole file once (`storage.local_copy`, every byte read). A streamed hub data set is
refused (`STREAMING_REFUSED`).

Row numbers in messages count data rows from 1 in the order of the file: for JSON Lines and text
(.txt, pre-training only) the line number, for CSV the line number less the header.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from starbucks_jax import storage
from starbucks_jax.data import shard_formats, shards
from starbucks_jax.data.checks import (OPTIONAL_PASSAGES, PASSAGES, arrow_check, as_passages, plain, python_check,
                                      utf8_problem, value_problem)
from starbucks_jax.errors import StarbucksError

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
# Raw text for pre-training also reads .txt files: one row per line, in a column "text". Training pairs
# cannot come as plain lines, so for them a .txt file stays an unknown extension.
TEXT_FILE_BUILDERS = {**FILE_BUILDERS, ".txt": "text"}
TFDS_CHECK_CHUNK = 1024  # TFDS rows decoded per call while validating
STREAMING_REFUSED = (
    "data.streaming=True: training pairs are read by random access, so that batch `step` is a function of "
    "(seed, step) and a resumed run reads exactly the rows an uninterrupted one would; a streamed hub data set "
    "has neither a known length nor random access, so it cannot keep that promise. Write it as Parquet shards "
    "(datasets' IterableDataset, a shard at a time, with small row groups: pyarrow.parquet.write_table(..., "
    "row_group_size=4096)), put them in a bucket and set data.source=gs://BUCKET/PATH/*.parquet: they are "
    "read lazily, footers at start and then only the row groups each host needs")


class Table:
  """Random access to the rows of one data set; subclasses hold the rows."""
  name: str
  columns: tuple[str, ...]

  def __len__(self) -> int:
    raise NotImplementedError

  def parts(self) -> list["Table"]:
    """The tables read from single files or splits (to name the one at fault)."""
    return [self]

  def read(self, indices: Sequence[int], columns: Sequence[str]) -> dict[str, list]:
    """{column: [plain Python value of each row in `indices`]}."""
    raise NotImplementedError

  def check(self, checks: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Validates every row; returns {passages column: number of passages per row}.

    Raises:
      StarbucksError: naming the file, the row (from 1) and the column of the first bad value.
    """
    raise NotImplementedError

  def check_every_row(self, checks: Mapping[str, str]) -> dict[str, np.ndarray]:
    """The full pass of the `check` command: `check` itself, for tables that check every row at start."""
    return self.check(checks)

  bytes_read: int | None = None  # bytes fetched from a store so far, where the table counts them (lazy shards)


def _problem(name: str, row: int, column: str, problem: str) -> StarbucksError:
  return StarbucksError(f"{name}: row {row + 1}, column {column!r}: {problem}")


class ArrowTable(Table):
  """A `datasets.Dataset` (memory-mapped Arrow): rows are checked column-wise with Arrow kernels."""

  def __init__(self, dataset, name: str):
    self.dataset = dataset
    self.name = name
    self.columns = tuple(dataset.column_names)
    self._views = {}

  def __len__(self) -> int:
    return len(self.dataset)

  def read(self, indices, columns):
    key = tuple(columns)
    if key not in self._views:  # a view per column set, so reads skip the columns not needed
      self._views[key] = self.dataset.select_columns(list(columns))
    rows = self._views[key][[int(i) for i in indices]]
    return {c: list(rows[c]) for c in columns}

  def check(self, checks):
    table = self.dataset.data
    selected = self.dataset._indices is not None  # pylint: disable=protected-access
    if selected or len(table) != len(self.dataset):  # rows picked by an index: check those, in that order
      table = self.dataset.flatten_indices().data
    lengths = {}
    for column, check in checks.items():
      found = arrow_check(table.column(column), check)
      if found is None:  # a type the kernels do not cover (mixed JSON values, say): a Python loop
        found = python_check(iter(self.dataset[column]), check, len(self.dataset))
      bad, column_lengths = found
      if bad is not None:
        raise _problem(self.name, bad[0], column, bad[1])
      if column_lengths is not None:
        lengths[column] = column_lengths
    return lengths


class TfdsTable(Table):
  """A TFDS random-access data source (ArrayRecord files); bytes are decoded to str."""

  def __init__(self, source, name: str, limit: int | None):
    self.source = source
    self.name = name
    self.columns = tuple(source.dataset_info.features.keys())
    self._len = len(source) if limit is None else min(limit, len(source))

  def __len__(self) -> int:
    return self._len

  def _records(self, indices) -> list[dict]:
    indices = [int(i) for i in indices]
    if hasattr(self.source, "__getitems__"):
      return list(self.source.__getitems__(indices))
    return [self.source[i] for i in indices]

  def read(self, indices, columns):
    records = self._records(indices)
    return {c: [plain(r[c]) for r in records] for c in columns}

  def check(self, checks):
    # TFDS rows are records, not columns: validation decodes every row once, in a Python loop.
    lengths = {c: np.zeros(len(self), np.int64) for c, k in checks.items()
               if k in (PASSAGES, OPTIONAL_PASSAGES)}
    for start in range(0, len(self), TFDS_CHECK_CHUNK):
      chunk = range(start, min(start + TFDS_CHECK_CHUNK, len(self)))
      for row, record in zip(chunk, self._records(chunk)):
        for column, check in checks.items():
          value = plain(record[column])
          problem = value_problem(value, check)
          if problem:
            raise _problem(self.name, row, column, problem)
          if column in lengths:
            lengths[column][row] = len(as_passages(value))
    return lengths


class ConcatTable(Table):
  """Several tables one after the other (comma-separated files); each keeps its own row numbers."""

  def __init__(self, tables: Sequence[Table]):
    self.tables = list(tables)
    self.name = ", ".join(t.name for t in tables)
    self.columns = tuple(c for c in tables[0].columns if all(c in t.columns for t in tables))
    self._starts = np.cumsum([0] + [len(t) for t in tables])

  def __len__(self) -> int:
    return int(self._starts[-1])

  def parts(self):
    return list(self.tables)

  def read(self, indices, columns):
    indices = np.asarray(indices, np.int64)
    which = np.searchsorted(self._starts, indices, side="right") - 1
    out = {c: [None] * len(indices) for c in columns}
    for k in np.unique(which):
      positions = np.flatnonzero(which == k)
      values = self.tables[k].read(indices[positions] - self._starts[k], columns)
      for c in columns:
        for position, value in zip(positions, values[c]):
          out[c][position] = value
    return out

  def check(self, checks):
    return self._joined([t.check(checks) for t in self.tables])

  def check_every_row(self, checks):
    return self._joined([t.check_every_row(checks) for t in self.tables])

  @staticmethod
  def _joined(per_table: list[dict]) -> dict[str, np.ndarray]:
    """Passage counts of every row, for the columns every part counted (a lazy part counts none)."""
    return {c: np.concatenate([lengths[c] for lengths in per_table]) for c in per_table[0]
            if all(c in lengths for lengths in per_table)}

  @property
  def bytes_read(self):
    counts = [t.bytes_read for t in self.tables if t.bytes_read is not None]
    return sum(counts) if counts else None


def _check_path(path: str, file_builders: Mapping[str, str]) -> str:
  """The `datasets` builder for `path`; raises a StarbucksError when it is missing or of no known type."""
  if not os.path.exists(path):
    raise StarbucksError(f"data file {path} does not exist")
  if os.path.isdir(path):
    raise StarbucksError(f"data file {path} is a directory (use hf:{path} for a dataset folder)")
  if os.path.getsize(path) == 0:
    raise StarbucksError(f"data file {path} is empty")
  extension = os.path.splitext(path)[1].lower()
  if extension not in file_builders:
    raise StarbucksError(f"{path}: unknown data file extension {extension!r} (expected "
                         f"{', '.join(file_builders)})")
  if file_builders[extension] != "parquet":  # a text format: Arrow would read bad bytes now, fail later
    problem = utf8_problem(path)
    if problem:
      raise StarbucksError(f"{path}, {problem}")
  return file_builders[extension]


def local_files(source: str, file_builders: Mapping[str, str] = FILE_BUILDERS) -> list[tuple[str, str]]:
  """(path, `datasets` builder) of each comma-separated file of `source`, every path checked first.

  Raises:
    StarbucksError: naming the first path that is missing, empty, a directory or of an unknown type.
  """
  # A file in a bucket (gs://...) is read from a local copy (`storage.local_copy`), fetched once per host.
  paths = [str(storage.local_copy(p.strip(), "data file")) for p in source.split(",") if p.strip()]
  if not paths:
    raise StarbucksError("data source is empty: give a file path, hf:NAME or tfds:NAME")
  return [(path, _check_path(path, file_builders)) for path in paths]


def _open_file(path: str, builder: str, limit: int | None) -> ArrowTable:
  import datasets  # pylint: disable=import-outside-toplevel
  try:
    dataset = datasets.load_dataset(builder, data_files=os.path.abspath(path), split="train")
  except Exception as e:  # pylint: disable=broad-except
    raise StarbucksError(f"{path}: cannot be read as {builder}: {type(e).__name__}: {e}") from e
  if limit is not None and limit < len(dataset):
    dataset = dataset.select(range(limit))
  return ArrowTable(dataset, path)


def _open_hub(spec: str, split: str, limit: int | None) -> ArrowTable:
  import datasets  # pylint: disable=import-outside-toplevel
  name, _, config = spec.partition(":")
  try:
    dataset = datasets.load_dataset(name, config or None, split=split)
  except Exception as e:  # pylint: disable=broad-except
    raise StarbucksError(f"hf:{spec}: cannot load split {split!r}: {e}") from e
  if limit is not None and limit < len(dataset):
    dataset = dataset.select(range(limit))
  return ArrowTable(dataset, f"hf:{spec} split {split}")


def _open_tfds(spec: str, split: str, data_dir: str | None, limit: int | None) -> TfdsTable:
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise StarbucksError(f"tfds:{spec}: tfds sources need the tensorflow-datasets package") from e
  if data_dir and storage.is_remote(data_dir):  # array_record reads the shards in the bucket itself
    storage.check_store(data_dir, "data.tfds_data_dir")
  try:
    source = tfds.data_source(spec, split=split, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise StarbucksError(f"tfds:{spec}: cannot open split {split!r} as a random-access data source "
                         f"(it must be prepared in the ArrayRecord file format): {e}") from e
  return TfdsTable(source, f"tfds:{spec} split {split}", limit)


def _eager_paths(part: str) -> list[str]:
  """The files of a part read whole: itself, or what its glob matches."""
  return [p for p, _ in storage.matching_files(part, "data source")] if shards.is_pattern(part) else [part]


def open_table(source: str, *, split: str = "train", tfds_data_dir: str | None = None,
               max_examples: int | None = None, file_builders: Mapping[str, str] = FILE_BUILDERS,
               bad_rows: str = "error", streaming: bool = False) -> Table:
  """The rows of `source`: comma-separated files or shards (module docstring), "hf:NAME[:CONFIG]" or
  "tfds:NAME[/CONFIG][:VERSION]".

  Files are read whole (`split` does not apply to them), shards lazily; `max_examples` keeps the
  first rows. `file_builders` maps the file extensions allowed to their `datasets` builders. `bad_rows`
  ("error" or "skip"): what a lazy table does with a bad row met while reading. `streaming` is refused.
  """
  source = source.strip()
  if streaming:
    raise StarbucksError(STREAMING_REFUSED)
  if bad_rows not in shards.BAD_ROWS:
    raise StarbucksError(f"data.bad_rows must be 'error' or 'skip', got {bad_rows!r}")
  if source.startswith("hf:"):
    return _open_hub(source[3:], split, max_examples)
  if source.startswith("tfds:"):
    return _open_tfds(source[5:], split, tfds_data_dir, max_examples)
  parts = [p.strip() for p in source.split(",") if p.strip()]
  if not parts:
    raise StarbucksError("data source is empty: give a file path, hf:NAME or tfds:NAME")
  opened = []  # every path checked (eager files fetched) before reading any
  for part in parts:
    lazy = shard_formats.lazy_format(part)
    opened.append([(part, lazy)] if lazy else local_files(",".join(_eager_paths(part)), file_builders))
  tables, left = [], max_examples
  for path, builder in (entry for part in opened for entry in part):
    if left is not None and left <= 0:
      break
    tables.append(builder(path, limit=left, bad_rows=bad_rows) if callable(builder) else _open_file(path, builder, left))
    left = None if left is None else left - len(tables[-1])
  return tables[0] if len(tables) == 1 else ConcatTable(tables)
