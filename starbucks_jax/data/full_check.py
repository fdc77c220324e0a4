"""The full offline pass over a training source: every row of every needed column, as training would read it.

    report = check_source(config.data)   # a `srl.DataConfig` or a `smae.TextDataConfig`
    report.rows, report.kind, report.bytes_read

Training checks what it can before the first step: local files and hub data sets whole (Arrow kernels),
lazy shards only from their footers or line indexes (`shards.py`: each row is checked when a batch reads it).
This pass reads every row of every source, with the same rules and the same kernels, so that a bad row in
a large source surfaces before a run rather than at the step that meets it.
"""

from __future__ import annotations

import dataclasses

from starbucks_jax.data import schemas, sources
from starbucks_jax.data.checks import TEXT
from starbucks_jax.errors import StarbucksError


@dataclasses.dataclass(frozen=True)
class SourceReport:
  source: str
  rows: int
  kind: str
  bytes_read: int | None  # fetched from a store by lazy shards (None: read whole, not counted)


def check_source(data_config) -> SourceReport:
  """Opens `data_config`'s source as training would and validates every row.

  Raises:
    StarbucksError: the first bad row, naming its file and row (from 1) and the column.
  """
  if getattr(data_config, "streaming", False) and hasattr(data_config, "text_column"):
    raise StarbucksError(f"{data_config.source}: a streamed source has no rows to count in advance; the check "
                         "command reads random-access sources (files, shards, hub or TFDS data sets)")
  text = hasattr(data_config, "text_column")  # pre-training text (SMAE) or training pairs (SRL)
  table = sources.open_table(
      data_config.source, split=data_config.split, tfds_data_dir=data_config.tfds_data_dir,
      max_examples=data_config.max_examples, bad_rows=getattr(data_config, "bad_rows", "error"),
      streaming=False if text else data_config.streaming,
      file_builders=sources.TEXT_FILE_BUILDERS if text else sources.FILE_BUILDERS)
  if text:
    missing = [p.name for p in table.parts() if data_config.text_column not in p.columns]
    if missing:
      raise StarbucksError(f"{missing[0]}: no column {data_config.text_column!r} (data.text_column)")
    checks, kind = {data_config.text_column: TEXT}, "text"
  else:
    schema = schemas.resolve_schema(table, data_config.kind)
    checks, kind = schema.checks(), schema.kind
  table.check_every_row(checks)
  return SourceReport(table.name, len(table), kind, table.bytes_read)
