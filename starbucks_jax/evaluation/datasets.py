"""Evaluation data: STS files of scored sentence pairs and BEIR retrieval folders, loaded once.

    sts = load_sts("data/quickstart/stsb_test.jsonl")      # StsSet: sentence1, sentence2, scores
    beir = load_beir("data/beir/msmarco-dl19-slice")        # BeirSet: corpus, queries in qrels, qrels

STS files are jsonl (or a .json list), csv or tsv with the columns `sentence1, sentence2, score`.
A BEIR folder holds `corpus.jsonl {_id, title, text}`, `queries.jsonl {_id, text}` and
`qrels/<split>.tsv` with the header `query-id corpus-id score`. Anything missing or malformed raises a
StarbucksError that names the file and, where it applies, the column or line.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np

from starbucks_jax.data.checks import utf8_problem
from starbucks_jax import storage
from starbucks_jax.errors import StarbucksError

log = logging.getLogger(__name__)

STS_COLUMNS = ("sentence1", "sentence2", "score")
QRELS_COLUMNS = ("query-id", "corpus-id", "score")


@dataclasses.dataclass(frozen=True)
class StsSet:
  """Scored sentence pairs; `scores` are the gold similarities, in whatever scale the file uses."""
  name: str
  sentence1: list[str]
  sentence2: list[str]
  scores: np.ndarray  # [pairs] float64

  def __len__(self) -> int:
    return len(self.sentence1)


@dataclasses.dataclass(frozen=True)
class BeirSet:
  """A retrieval test set: the corpus, the queries that have judgements, and the judgements."""
  name: str
  corpus_ids: list[str]
  passages: list[str]          # title + " " + text, or the text alone when the title is empty
  query_ids: list[str]         # only the queries that appear in the qrels, in queries.jsonl order
  queries: list[str]
  qrels: dict[str, dict[str, int]]  # {query id: {corpus id: relevance grade}}


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Passages with ids: a BEIR corpus.jsonl ({_id, title, text}) or a Tevatron corpus ({docid, title, text})."""
  name: str
  ids: list[str]
  titles: list[str]
  texts: list[str]

  def __len__(self) -> int:
    return len(self.ids)

  def passages(self) -> list[str]:
    """title + " " + text, or the text alone when the title is empty (BEIR's and Tevatron's convention)."""
    return [f"{title} {text}" if title else text for title, text in zip(self.titles, self.texts)]


def load_corpus(path: str | Path) -> Corpus:
  """The passages of a BEIR folder (its corpus.jsonl) or of a .jsonl file of {_id or docid, title, text}
  rows; local, or in a bucket through a local copy."""
  path = storage.local_copy(path, "corpus")
  if path.is_dir():
    if not (path / "corpus.jsonl").is_file():
      raise StarbucksError(f"corpus folder {path} has no corpus.jsonl (a BEIR folder holds corpus.jsonl, "
                           "queries.jsonl and qrels/)")
    path = path / "corpus.jsonl"
  elif not path.is_file():
    raise StarbucksError(f"corpus {path} does not exist")
  return read_corpus(path)


def read_corpus(path: Path) -> Corpus:
  ids, titles, texts, seen = [], [], [], set()
  for number, row in enumerate(_read_jsonl(path, required=("text",)), 1):
    id_field = next((f for f in ("_id", "docid") if f in row), None)
    if id_field is None:
      raise StarbucksError(f"{path}, line {number}: no field '_id' or 'docid' (a corpus row is "
                           "{_id, title, text})")
    doc_id = str(row[id_field])
    if doc_id in seen:
      raise StarbucksError(f"{path}, line {number}: corpus id {doc_id!r} appears twice")
    if not isinstance(row["text"] or "", str) or not isinstance(row.get("title") or "", str):
      raise StarbucksError(f"{path}, line {number}: 'text' and 'title' must be strings")
    seen.add(doc_id)
    ids.append(doc_id)
    titles.append((row.get("title") or "").strip())
    texts.append(row["text"] or "")
  if not ids:
    raise StarbucksError(f"corpus {path} is empty")
  return Corpus(path.parent.name if path.name == "corpus.jsonl" else path.stem, ids, titles, texts)


def load_sts(path: str | Path, name: str | None = None) -> StsSet:
  """Reads an STS file (.jsonl/.json/.csv/.tsv) with the columns sentence1, sentence2, score; a file in a
  bucket (gs://...) through a local copy."""
  path = storage.local_copy(path, "STS file")
  rows = _read_table(path)
  if not rows:
    raise StarbucksError(f"STS file {path} has no rows")
  for column in STS_COLUMNS:
    if column not in rows[0]:
      raise StarbucksError(f"STS file {path} has no column {column!r} (its columns: "
                           f"{', '.join(map(str, rows[0]))}); it needs {', '.join(STS_COLUMNS)}")
  sentence1, sentence2, scores = [], [], []
  for number, row in enumerate(rows, 1):
    if any(row.get(c) is None for c in STS_COLUMNS):
      missing = next(c for c in STS_COLUMNS if row.get(c) is None)
      raise StarbucksError(f"STS file {path}, row {number}: column {missing!r} is missing or empty")
    try:
      scores.append(float(row["score"]))
    except (TypeError, ValueError):
      raise StarbucksError(f"STS file {path}, row {number}: score {row['score']!r} is not a number") from None
    if not np.isfinite(scores[-1]):
      raise StarbucksError(f"STS file {path}, row {number}: score {row['score']!r} is not a finite number")
    sentence1.append(str(row["sentence1"]))
    sentence2.append(str(row["sentence2"]))
  # A rank correlation needs two pairs and two different scores; otherwise every size would score NaN.
  if len(scores) < 2:
    raise StarbucksError(f"STS file {path} has {len(scores)} row; a correlation needs at least 2")
  if min(scores) == max(scores):
    raise StarbucksError(f"STS file {path}: every score is {scores[0]:g}; a correlation needs different scores")
  return StsSet(name or path.stem, sentence1, sentence2, np.asarray(scores, np.float64))


def load_beir(folder: str | Path, split: str = "test", name: str | None = None) -> BeirSet:
  """Reads a BEIR folder (local, or in a bucket through a local copy); only the queries that appear in
  `qrels/<split>.tsv` are kept."""
  folder = storage.local_copy(folder, "BEIR folder")
  if not folder.is_dir():
    raise StarbucksError(f"BEIR folder {folder} does not exist")
  qrels_file = folder / "qrels" / f"{split}.tsv"
  if not qrels_file.is_file():
    raise StarbucksError(f"BEIR folder {folder} has no qrels file {qrels_file.relative_to(folder)}")
  qrels = _read_qrels(qrels_file)

  corpus_file = folder / "corpus.jsonl"
  corpus = read_corpus(corpus_file)
  corpus_ids, passages, seen = corpus.ids, corpus.passages(), set(corpus.ids)

  queries_file = folder / "queries.jsonl"
  all_queries = {str(row["_id"]): row["text"] or "" for row in _read_jsonl(queries_file, required=("_id", "text"))}
  absent = [q for q in qrels if q not in all_queries]
  if absent:
    raise StarbucksError(f"{qrels_file} judges {len(absent)} query id(s) absent from {queries_file}, "
                         f"e.g. {absent[0]!r}")
  query_ids = [q for q in all_queries if q in qrels]

  judgements = [doc for judged in qrels.values() for doc in judged]
  unknown_docs = sum(doc not in seen for doc in judgements)
  if unknown_docs == len(judgements):  # every metric would be 0 at every size
    raise StarbucksError(f"{qrels_file}: none of its {len(judgements)} judgement(s) names a passage of "
                         f"{corpus_file} (e.g. {judgements[0]!r}); are the qrels and the corpus from one data set?")
  if unknown_docs:  # BEIR's own loader keeps such judgements too: they count as relevant, never retrieved
    log.warning("%s: %d judgement(s) name passages absent from the corpus", folder.name, unknown_docs)
  return BeirSet(name or folder.name, corpus_ids, passages, query_ids,
                 [all_queries[q] for q in query_ids], qrels)


def _check_text(path: Path) -> None:
  problem = utf8_problem(path)
  if problem:
    raise StarbucksError(f"{path}, {problem}")


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
  _check_text(path)
  with path.open(encoding="utf-8", newline="") as f:
    reader = csv.reader(f, delimiter="\t")
    header = next(reader, None)
    if header is None:
      raise StarbucksError(f"qrels file {path} is empty")
    header = [h.strip() for h in header]
    for column in QRELS_COLUMNS:
      if column not in header:
        raise StarbucksError(f"qrels file {path} has no column {column!r} in its header "
                             f"({' '.join(header)}); it needs {' '.join(QRELS_COLUMNS)}")
    query_col, doc_col, score_col = (header.index(c) for c in QRELS_COLUMNS)
    qrels: dict[str, dict[str, int]] = {}
    for number, row in enumerate(reader, 2):
      if not row or not "".join(row).strip():
        continue
      if len(row) < len(header):
        raise StarbucksError(f"qrels file {path}, line {number}: {len(row)} columns, the header has {len(header)}")
      try:
        grade = int(float(row[score_col]))
      except ValueError:
        raise StarbucksError(f"qrels file {path}, line {number}: score {row[score_col]!r} is not a number") from None
      qrels.setdefault(row[query_col].strip(), {})[row[doc_col].strip()] = grade
  if not qrels:
    raise StarbucksError(f"qrels file {path} has a header but no judgements")
  return qrels


def _read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict]:
  if not path.is_file():
    raise StarbucksError(f"{path} does not exist")
  _check_text(path)
  rows = []
  with path.open(encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise StarbucksError(f"{path}, line {number}: not JSON ({e.msg})") from None
      if not isinstance(row, dict):
        raise StarbucksError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
      for column in required:
        if column not in row:
          raise StarbucksError(f"{path}, line {number}: no field {column!r} (it needs {', '.join(required)})")
      rows.append(row)
  return rows


def _read_table(path: Path) -> list[dict]:
  """Rows of a .jsonl, .json (a list, or one object per line), .csv or .tsv file, as dicts."""
  if path.is_dir():
    raise StarbucksError(f"{path} is a folder, not a file")
  if not path.is_file():
    raise StarbucksError(f"file {path} does not exist")
  _check_text(path)
  suffix = path.suffix.lower()
  if suffix in (".csv", ".tsv"):
    with path.open(encoding="utf-8", newline="") as f:
      return list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
  if suffix == ".json":
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
      try:
        rows = json.loads(text)
      except json.JSONDecodeError as e:
        raise StarbucksError(f"{path}: not JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
      if not all(isinstance(r, dict) for r in rows):
        raise StarbucksError(f"{path}: expected a list of JSON objects")
      return rows
  elif suffix != ".jsonl":
    raise StarbucksError(f"cannot read {path}: expected a .jsonl, .json, .csv or .tsv file")
  return _read_jsonl(path, required=())
