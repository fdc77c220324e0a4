"""Data schemas: which columns of a training table hold the query, the passages and the score.

A kind of data (`SchemaKind`) maps a table's column names to a `Schema`; `KINDS` lists them in the order
"auto" tries them, most columns first (a triplets table also holds pairs). Text columns hold one text
each; a kind whose `passages` is true (Tevatron groups) holds lists of {docid, title, text} passages
instead, and a query's group is its positive plus `train_group_size - 1` negatives. A schema with a
score column gives scored pairs (CoSENT's data).

To add a kind: a `SchemaKind` in a new module and one line in `KINDS`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from starbucks_jax.data.checks import OPTIONAL_PASSAGES, PASSAGES, SCORE, TEXT
from starbucks_jax.errors import StarbucksError


@dataclasses.dataclass(frozen=True)
class Schema:
  """Which columns hold the query, the positive, the negative(s) and the score, for one kind of data."""
  kind: str
  query: str
  positive: str
  negative: str | None = None
  score: str | None = None
  passages: bool = False  # the positive / negative columns hold lists of passages (Tevatron groups)

  def checks(self) -> dict[str, str]:
    """{column: what it must hold}."""
    if self.passages:
      checks = {self.query: TEXT, self.positive: PASSAGES}
      if self.negative:
        checks[self.negative] = OPTIONAL_PASSAGES
      return checks
    checks = {self.query: TEXT, self.positive: TEXT}
    if self.negative:
      checks[self.negative] = TEXT
    if self.score:
      checks[self.score] = SCORE
    return checks

  def group_size(self, train_group_size: int) -> int:
    """Passages per query: the group size for passage lists, else the positive and any negative."""
    return train_group_size if self.passages else 1 + (self.negative is not None)


@dataclasses.dataclass(frozen=True)
class SchemaKind:
  name: str
  columns: str                        # for messages: "triplets (anchor, positive, negative)"
  schema: Callable[[set], Schema]     # the table's column names -> this kind's schema


def _query_column(columns: set) -> str:
  return "query" if "query" in columns and "anchor" not in columns else "anchor"


TEVATRON = SchemaKind("tevatron", "tevatron (query, positive_passages[, negative_passages])", lambda columns: Schema(
    "tevatron", "query", "positive_passages",
    "negative_passages" if "negative_passages" in columns else None, passages=True))
TRIPLETS = SchemaKind("triplets", "triplets (anchor, positive, negative)",
                      lambda columns: Schema("triplets", _query_column(columns), "positive", "negative"))
PAIRS = SchemaKind("pairs", "pairs (anchor, positive)",
                   lambda columns: Schema("pairs", _query_column(columns), "positive"))
SCORED = SchemaKind("scored", "scored (sentence1, sentence2, score)",
                    lambda columns: Schema("scored", "sentence1", "sentence2", score="score"))

KINDS: dict[str, SchemaKind] = {kind.name: kind for kind in (TEVATRON, TRIPLETS, PAIRS, SCORED)}


def schema_help() -> str:
  return ", ".join(kind.columns for kind in KINDS.values()) + "; 'query' may replace 'anchor'"


def _missing(schema: Schema, columns: set) -> list[str]:
  return [c for c in schema.checks() if c not in columns]


def resolve_schema(table, kind: str) -> Schema:
  """The schema of `kind` for a `sources.Table` ("auto": the first of KINDS whose columns all exist).

  Raises:
    StarbucksError: the kind is unknown, "auto" matches nothing, or a file lacks the kind's columns.
  """
  if kind != "auto" and kind not in KINDS:
    raise StarbucksError(f"data kind must be auto or one of {', '.join(KINDS)}, got {kind!r}")
  parts = table.parts()
  first = set(parts[0].columns)
  if kind == "auto":
    kind = next((k for k, candidate in KINDS.items() if not _missing(candidate.schema(first), first)), None)
    if kind is None:
      raise StarbucksError(f"{parts[0].name}: cannot tell the kind of data from its columns "
                           f"{sorted(first)}; expected {schema_help()}, or set data.kind")
  schema = KINDS[kind].schema(first)
  for part in parts:
    missing = _missing(schema, set(part.columns))
    if missing:
      raise StarbucksError(f"{part.name}: lacks column(s) {', '.join(map(repr, missing))} needed for "
                           f"kind {kind!r} (it has {sorted(part.columns)}); expected {schema_help()}")
  return schema
