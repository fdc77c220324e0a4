"""Mining: each training query's hard negatives from a corpus, at one (layer, dim) size of a model.

    queries = read_training_queries("train.jsonl")
    corpus = load_corpus("beir/scifact") or corpus_from_training(queries)
    result = mine_negatives(encoder, queries, corpus, MineSettings(layer=4, dim=128), SelectOptions())
    write_groups(result.groups, "groups.jsonl")       # Tevatron groups: `train` reads them as they are

The corpus, the distinct queries and the positives are each encoded once. A query's positives (its own
and those of every row with the same query text) are excluded from its search by corpus id and by
identical text; `select.py` then picks its negatives from the ranked candidates. `result.summary` says
how many queries got fewer than asked and how positives and negatives score.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Sequence

import numpy as np

from starbucks_jax.data.prompts import with_prompt
from starbucks_jax.errors import StarbucksError
from starbucks_jax.evaluation.datasets import Corpus
from starbucks_jax.mining import search as search_lib
from starbucks_jax.mining.select import SelectOptions, choose, eligible
from starbucks_jax.mining.training_queries import TrainQuery

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MineSettings:
  """How texts are encoded and searched (the selection is `SelectOptions`)."""
  layer: int
  dim: int
  pooling: str | None = None        # None: the model's
  similarity: str = "cosine"
  query_max_length: int = 32
  passage_max_length: int = 256
  query_prompt: str = ""            # before every query / passage, as the model's prompts (`data/prompts.py`)
  passage_prompt: str = ""
  batch_size: int = 32
  packing: bool = False             # texts end to end in rows (`inference/encoder.py`): the same vectors
  chunk_size: int = 8192
  faiss: str | None = None          # a FAISS index factory string instead of exact search
  nprobe: int | None = None
  show_progress: bool = False


@dataclasses.dataclass(frozen=True)
class MiningResult:
  groups: list[dict]   # one Tevatron row per training row
  summary: dict


def corpus_from_training(queries: Sequence[TrainQuery]) -> Corpus:
  """The training file's own passages (positives, and negatives it has), each once: by docid where it
  has one, else by text; a passage without a docid gets the first free id "p<n>"."""
  ids, titles, texts, index = [], [], [], {}
  taken = {p.docid for q in queries for p in q.positives + q.negatives if p.docid is not None}
  free = 0
  for passage in (p for q in queries for p in q.positives + q.negatives):
    key = ("id", passage.docid) if passage.docid is not None else ("text", passage.full_text())
    if key in index:
      continue
    docid = passage.docid
    while docid is None or docid in taken and passage.docid is None:
      docid, free = f"p{free}", free + 1
    index[key] = len(ids)
    index.setdefault(("text", passage.full_text()), len(ids))
    ids.append(docid)
    titles.append(passage.title)
    texts.append(passage.text)
  return Corpus("training passages", ids, titles, texts)


def positive_rows(queries: Sequence[TrainQuery], corpus: Corpus) -> tuple[list[list[int]], dict]:
  """For each query group, the corpus rows of its positives (by docid and by identical text), and counts
  of positives whose id is absent from the corpus or names another text.

  Raises:
    StarbucksError: no positive at all is found in the corpus (the files are from different data sets).
  """
  row_of_id = {doc_id: row for row, doc_id in enumerate(corpus.ids)}
  rows_of_text: dict[str, list[int]] = {}
  for row, (text, full) in enumerate(zip(corpus.texts, corpus.passages())):
    for key in {text, full}:
      rows_of_text.setdefault(key, []).append(row)
  groups = [set() for _ in range(max(q.group for q in queries) + 1)]
  counts = {"positives": 0, "found": 0, "id_not_in_corpus": 0, "id_names_other_text": 0}
  for q in queries:
    for p in q.positives:
      by_text = set(rows_of_text.get(p.full_text(), [])) | set(rows_of_text.get(p.text, []))
      by_id = {row_of_id[p.docid]} if p.docid in row_of_id else set()
      counts["positives"] += 1
      counts["found"] += bool(by_text | by_id)
      counts["id_not_in_corpus"] += p.docid is not None and not by_id
      counts["id_names_other_text"] += bool(by_id) and not by_id <= by_text
      groups[q.group] |= by_text | by_id
  if counts["found"] == 0:
    example = queries[0].positives[0]
    raise StarbucksError(f"none of the {counts['positives']} positives is in the corpus {corpus.name}, by id "
                         f"or by text (e.g. {example.docid or example.text[:40]!r}); are the training file "
                         "and the corpus from one data set?")
  for name, what in (("id_not_in_corpus", "have a docid that is not in the corpus"),
                     ("id_names_other_text", "have a docid whose corpus passage has another text")):
    if counts[name]:
      log.warning("%d of %d positives %s; passages with their text are still excluded", counts[name],
                  counts["positives"], what)
  return [sorted(g) for g in groups], counts


def _padded(rows: list[list[int]]) -> np.ndarray:
  out = np.full((len(rows), max([len(r) for r in rows] + [1])), -1, np.int64)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


def mine_negatives(encoder, queries: Sequence[TrainQuery], corpus: Corpus, settings: MineSettings,
                   options: SelectOptions) -> MiningResult:
  """Every training row's negatives; see the module docstring."""
  if not queries:
    raise StarbucksError("the training file has no rows to mine for")
  if len(corpus) == 0:
    raise StarbucksError(f"the corpus {corpus.name} is empty")
  excluded_rows, found = positive_rows(queries, corpus)
  index = search_lib.faiss_index(settings.faiss, settings.dim) if settings.faiss else None
  seconds, started = {}, time.perf_counter()
  encode = dict(layer=settings.layer, dim=settings.dim, pooling=settings.pooling, batch_size=settings.batch_size,
                packing=settings.packing, normalize=settings.similarity == "cosine",
                show_progress=settings.show_progress)
  query_texts = list({q.text: None for q in queries})  # one per group, in group order
  query_vectors = search_lib.encode_all(encoder, with_prompt(settings.query_prompt, query_texts),
                                        max_length=settings.query_max_length, desc="encoding queries", **encode)
  positive_texts = list({p.full_text(): None for q in queries for p in q.positives})
  positive_vectors = search_lib.encode_all(encoder, with_prompt(settings.passage_prompt, positive_texts),
                                           max_length=settings.passage_max_length, desc="encoding positives", **encode)
  seconds["encode_queries_and_positives"] = time.perf_counter() - started
  passages = with_prompt(settings.passage_prompt, corpus.passages())
  shards = search_lib.encode_shards(encoder, passages, max_length=settings.passage_max_length,
                                    desc="encoding corpus", **encode)
  excluded = _padded(excluded_rows)
  mark = time.perf_counter()
  if index is None:
    corpus_vectors = np.zeros((len(corpus), settings.dim), np.float32)
    for first, vectors in shards:
      corpus_vectors[first:first + len(vectors)] = vectors
    seconds["encode_corpus"] = time.perf_counter() - mark
    mark = time.perf_counter()
    scores, rows = search_lib.exact_search(query_vectors, corpus_vectors, excluded, k=options.depth,
                                           similarity=settings.similarity, chunk_size=settings.chunk_size,
                                           show_progress=settings.show_progress)
  else:  # encoding and adding to the index go shard by shard, so they are timed together
    scores, rows = search_lib.faiss_search(index, shards, query_vectors, excluded, k=options.depth,
                                           nprobe=settings.nprobe, show_progress=settings.show_progress)
  seconds["search" if index is None else "encode_corpus_and_search"] = time.perf_counter() - mark
  position = {text: i for i, text in enumerate(positive_texts)}
  groups, stats = [], _Stats(options)
  for row, q in enumerate(queries):
    own = positive_vectors[[position[p.full_text()] for p in q.positives]] @ query_vectors[q.group]
    picked = choose(scores[q.group], float(own.min()), row, options)
    stats.add(scores[q.group], own, picked)
    groups.append({"query_id": q.query_id, "query": q.text,
                   "positive_passages": [p.as_json() for p in q.positives],
                   "negative_passages": [{"docid": corpus.ids[r], "title": corpus.titles[r], "text": corpus.texts[r]}
                                         for r in rows[q.group][picked]]})
  seconds["total"] = time.perf_counter() - started
  summary = {"queries": len(queries), "distinct_queries": len(query_texts), "corpus": len(corpus),
             "positives_in_corpus": found, **stats.summary(), "seconds": {k: round(v, 3) for k, v in seconds.items()}}
  return MiningResult(groups, summary)


QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


def describe(values) -> dict:
  """{count, mean, min, p5, p25, median, p75, p95, max} of a list of numbers (count 0 alone when empty)."""
  values = np.asarray(values, np.float64)
  if not len(values):
    return {"count": 0}
  names = ("min", "p5", "p25", "median", "p75", "p95", "max")
  return {"count": len(values), "mean": round(float(values.mean()), 4),
          **{n: round(float(v), 4) for n, v in zip(names, np.quantile(values, QUANTILES))}}


class _Stats:
  """What the summary reports, gathered query by query."""

  def __init__(self, options: SelectOptions):
    self.options = options
    self.got, self.positive, self.negative, self.above_positive, self.margin_dropped = [], [], [], [], 0

  def add(self, scores: np.ndarray, positive_scores: np.ndarray, picked: np.ndarray) -> None:
    self.got.append(len(picked))
    self.positive += positive_scores.tolist()
    self.negative += scores[picked].tolist()
    # Passages that are not positives yet score above the query's best positive (up to the search depth).
    self.above_positive.append(int(np.sum(scores > positive_scores.max())))
    no_margin = dataclasses.replace(self.options, margin=None, relative_margin=None)
    self.margin_dropped += int(np.sum(eligible(scores, float(positive_scores.min()), no_margin))
                               - np.sum(eligible(scores, float(positive_scores.min()), self.options)))

  def summary(self) -> dict:
    asked = self.options.num_negatives
    got = np.asarray(self.got)
    counts = {int(n): int(np.sum(got == n)) for n in np.unique(got)}
    return {"negatives_asked": asked, "queries_with_fewer": int(np.sum(got < asked)),
            "queries_by_negatives_found": counts, "candidates_dropped_by_margin": self.margin_dropped,
            "scores": {"positives": describe(self.positive), "negatives": describe(self.negative)},
            "non_positives_above_best_positive": describe(self.above_positive),
            "options": dataclasses.asdict(self.options)}


def summary_path(output):
  """groups.jsonl -> groups.summary.json, beside it."""
  return output.with_name(output.stem + ".summary.json" if output.suffix else output.name + ".summary.json")


def write_result(result: MiningResult, output, summary_file) -> None:
  """The groups as JSON Lines and the summary as JSON, each written whole (`runtime/outputs.write_file`)."""
  import json  # pylint: disable=import-outside-toplevel
  from starbucks_jax.runtime import outputs  # pylint: disable=import-outside-toplevel
  lines = "".join(json.dumps(group, ensure_ascii=False) + "\n" for group in result.groups)
  outputs.write_file(output, lambda f: f.write(lines.encode("utf-8")), "groups")
  outputs.write_file(summary_file, lambda f: f.write(json.dumps(result.summary, indent=1).encode("utf-8")),
                     "summary")
