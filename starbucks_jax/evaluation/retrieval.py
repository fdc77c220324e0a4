"""Retrieval evaluation on BEIR folders: exact search over the whole corpus at each size, then
nDCG@10, RR@10 ("mrr@10") and R@100 ("recall@100") from ir_measures, in 0..1.

Queries and passages are each encoded once, through every layer the pairs need. `search` is exact
top-k search with the corpus on the host, scored on the device a chunk at a time. Quantized
precisions search the corpus stored as int8 codes or bits (`quantize.py`: binary with rescoring).
"""

from __future__ import annotations

import functools
import logging
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from starbucks_jax.errors import StarbucksError
from starbucks_jax.evaluation.datasets import BeirSet, load_beir
from starbucks_jax.evaluation import quantize
from starbucks_jax.evaluation.evaluator import EvalOptions, Evaluator, precision_metric
from starbucks_jax.model.pooling import SIMILARITIES, l2_normalize
from starbucks_jax.pairs import Pair, result_key

log = logging.getLogger(__name__)

RETRIEVAL_DEPTH = 100  # passages kept per query: enough for recall@100
METRICS = ("ndcg@10", "mrr@10", "recall@100")


@functools.partial(jax.jit, static_argnames=("k", "normalize"))
def _merge_chunk(best_scores, best_rows, queries, chunk, first_row, valid_rows, excluded, *, k, normalize):
  """Scores one corpus chunk and merges its top k into the running top k (rows are corpus indices).
  `excluded` [Q, E]: corpus rows each query must not get (-1: none); they score -inf."""
  if normalize:
    chunk = l2_normalize(chunk)
  scores = jnp.matmul(queries, chunk.T, precision=jax.lax.Precision.HIGHEST)  # no TF32 on GPUs
  rows = first_row + jnp.arange(chunk.shape[0])
  scores = jnp.where(rows < first_row + valid_rows, scores, -jnp.inf)  # the last chunk's padding
  if excluded.shape[1]:
    scores = jnp.where((excluded[:, :, None] == rows[None, None, :]).any(axis=1), -jnp.inf, scores)
  chunk_scores, chunk_rows = jax.lax.top_k(scores, min(k, chunk.shape[0]))
  # Running results first: among equal scores, top_k keeps the lower corpus index, as one chunk would.
  scores = jnp.concatenate([best_scores, chunk_scores], axis=1)
  rows = jnp.concatenate([best_rows, chunk_rows + first_row], axis=1)
  best_scores, picked = jax.lax.top_k(scores, k)
  return best_scores, jnp.take_along_axis(rows, picked, axis=1)


def search(queries: np.ndarray, corpus: np.ndarray, *, k: int = RETRIEVAL_DEPTH, chunk_size: int = 8192,
           similarity: str = "cosine", exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Exact top-k search: ([Q, k] scores, [Q, k] corpus rows), best first, k capped at the corpus size.

  The corpus stays on the host and goes to the device `chunk_size` rows at a time (the last chunk padded,
  so one compiled shape serves them all), so it never has to fit on the device at once. `exclude`
  [Q, E] lists corpus rows a query must not get (its positives when mining; -1 pads); where fewer than
  k rows are left, the last places hold -inf scores.
  """
  if similarity not in SIMILARITIES:
    raise StarbucksError(f"similarity must be one of {', '.join(SIMILARITIES)}, got {similarity!r}")
  if chunk_size < 1:
    raise StarbucksError(f"chunk size must be at least 1, got {chunk_size}")
  k = min(k, len(corpus))
  chunk_rows = min(chunk_size, len(corpus))
  queries = jnp.asarray(queries, jnp.float32)
  if similarity == "cosine":
    queries = l2_normalize(queries)
  best_scores = jnp.full((len(queries), k), -jnp.inf, jnp.float32)
  best_rows = jnp.zeros((len(queries), k), jnp.int32)
  excluded = jnp.asarray(np.zeros((len(queries), 0)) if exclude is None else exclude, jnp.int32)
  for start in range(0, len(corpus), chunk_rows):
    chunk = np.asarray(corpus[start:start + chunk_rows], np.float32)
    valid = len(chunk)
    if valid < chunk_rows:
      chunk = np.pad(chunk, ((0, chunk_rows - valid), (0, 0)))
    best_scores, best_rows = _merge_chunk(best_scores, best_rows, queries, jax.device_put(chunk), start, valid,
                                          excluded, k=k, normalize=similarity == "cosine")
  return np.asarray(best_scores), np.asarray(best_rows)


def evaluate_beir(encoder, beir: BeirSet, pairs: Sequence[Pair], *, pooling=None, query_max_length=32,
                  passage_max_length=256, batch_size=32, similarity="cosine", chunk_size=8192,
                  show_progress=None, precisions=("float32",), packing=False, query_prompt="",
                  passage_prompt="") -> dict[str, dict[str, float]]:
  """{"n,d": {"ndcg@10", "mrr@10", "recall@100", and "ndcg@10/int8" ... per quantized precision}} from
  exact search at each pair; the prompts go before every query and every passage (`data/prompts.py`)."""
  import ir_measures
  from ir_measures import RR, R, nDCG
  layers = sorted({n for n, _ in pairs})
  log.info("%s: encoding %d queries and %d passages", beir.name, len(beir.queries), len(beir.passages))
  encode = functools.partial(encoder.encode_layers, layers=layers, pooling=pooling, batch_size=batch_size,
                             show_progress=show_progress, packing=packing)
  queries = encode(beir.queries, max_length=query_max_length, prompt=query_prompt)
  corpus = encode(beir.passages, max_length=passage_max_length, prompt=passage_prompt)
  measures = {"ndcg@10": nDCG @ 10, "mrr@10": RR @ 10, "recall@100": R @ 100}
  chunked = functools.partial(search, chunk_size=chunk_size)
  results = {}
  for layer, dim in pairs:
    metrics = results[result_key((layer, dim))] = {}
    for precision in quantize.check_precisions(precisions):
      scores, rows = quantize.quantized_search(queries[layer][:, :dim], corpus[layer][:, :dim], precision,
                                               k=RETRIEVAL_DEPTH, search=chunked, similarity=similarity)
      run = {qid: {beir.corpus_ids[r]: float(s) for s, r in zip(scores[i], rows[i])}
             for i, qid in enumerate(beir.query_ids)}
      values = ir_measures.calc_aggregate(list(measures.values()), beir.qrels, run)
      metrics.update({precision_metric(name, precision): float(values[m]) for name, m in measures.items()})
  return results


def _evaluate(encoder, beir: BeirSet, pairs, options: EvalOptions):
  return evaluate_beir(encoder, beir, pairs, pooling=options.pooling, query_max_length=options.query_max_length,
                       passage_max_length=options.passage_max_length, batch_size=options.batch_size,
                       similarity=options.similarity, chunk_size=options.chunk_size,
                       show_progress=options.show_progress, precisions=options.precisions,
                       packing=options.packing, query_prompt=options.query_prompt,
                       passage_prompt=options.passage_prompt)


EVALUATOR = Evaluator(
    name="beir", help="BEIR folders: corpus.jsonl, queries.jsonl, qrels/<split>.tsv", metavar="DIR",
    load=lambda path, options: load_beir(path, split=options.split), evaluate=_evaluate, metrics=METRICS,
    digits=4, points_scale=100.0)
