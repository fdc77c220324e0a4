"""The queries to mine for: each row of a training file with its positive passages.

A row of Tevatron groups gives its `positive_passages` ({docid, title, text}); a row of pairs or
triplets gives its positive text (a triplet's negative is dropped: mining replaces it). Rows with the same
query text share their positives, so no query is given another row's positive as a negative.
"""

from __future__ import annotations

import dataclasses

from starbucks_jax.data import schemas, sources
from starbucks_jax.data.checks import as_passages
from starbucks_jax.errors import StarbucksError

MINABLE_KINDS = ("tevatron", "pairs", "triplets")


@dataclasses.dataclass(frozen=True)
class Passage:
  docid: str | None
  title: str
  text: str

  def full_text(self) -> str:
    """title + " " + text, or the text alone (what the trainer encodes for a Tevatron passage)."""
    return f"{self.title} {self.text}" if self.title else self.text

  def as_json(self, docid: str | None = None) -> dict:
    return {"docid": docid if docid is not None else self.docid, "title": self.title, "text": self.text}


@dataclasses.dataclass(frozen=True)
class TrainQuery:
  query_id: str
  text: str
  positives: tuple[Passage, ...]  # this row's
  group: int                      # rows with the same query text share a group
  negatives: tuple[Passage, ...] = ()  # the file's own (Tevatron groups, triplets): only for a corpus made
                                       # of the training file's passages


def read_training_queries(path: str, kind: str = "auto", max_examples: int | None = None) -> list[TrainQuery]:
  """Every row of `path` (what `train` reads: local files, hf:NAME or tfds:NAME) as a TrainQuery.

  Raises:
    StarbucksError: a file problem, a bad row, or a kind without positives (scored pairs).
  """
  table = sources.open_table(path, max_examples=max_examples)
  schema = schemas.resolve_schema(table, kind)
  if schema.kind not in MINABLE_KINDS:
    raise StarbucksError(f"{table.name}: {schema.kind} data has no positives to mine negatives for; "
                         f"give {', '.join(MINABLE_KINDS)} data")
  table.check(schema.checks())
  columns = [c for c in (schema.query, schema.positive, schema.negative) if c]
  columns += ["query_id"] if "query_id" in table.columns else []
  values = table.read(range(len(table)), columns)
  groups: dict[str, int] = {}
  queries = []
  for row, text in enumerate(values[schema.query]):
    positive = values[schema.positive][row]
    negative = values[schema.negative][row] if schema.negative else None
    if schema.passages:
      positives, negatives = _passages(positive), _passages(negative)
    else:
      positives, negatives = (Passage(None, "", positive),), (() if negative is None else (Passage(None, "", negative),))
    query_id = str(values["query_id"][row]) if "query_id" in values else str(row + 1)
    queries.append(TrainQuery(query_id, text, positives, groups.setdefault(text, len(groups)), negatives))
  return queries


def _passages(value) -> tuple[Passage, ...]:
  return tuple(Passage(None if p.get("docid") in (None, "") else str(p["docid"]), (p.get("title") or "").strip(),
                       p["text"]) for p in as_passages(value))
