"""STS evaluation: how well each size's cosine similarity ranks scored sentence pairs.

Spearman and Pearson correlations (x100) of the pairs' cosine similarity with the gold scores; each
distinct sentence is encoded once, through every layer the pairs need. Quantized precisions score the
int8 codes (ranges from the set's sentences at each size) or negated Hamming distances (`quantize.py`).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from starbucks_jax.evaluation.datasets import StsSet, load_sts
from starbucks_jax.evaluation import quantize
from starbucks_jax.evaluation.evaluator import EvalOptions, Evaluator, precision_metric
from starbucks_jax.pairs import Pair, result_key

log = logging.getLogger(__name__)

METRICS = ("spearman", "pearson")


def evaluate_sts(encoder, sts: StsSet, pairs: Sequence[Pair], *, pooling=None, max_length=None,
                 batch_size=32, show_progress=None, precisions=("float32",),
                 packing=False, prompt="") -> dict[str, dict[str, float]]:
  """{"n,d": {"spearman", "pearson", and "spearman/int8" ... per quantized precision}} (x100) of the pairs'
  cosine similarity against the gold scores. `prompt` goes before both sentences of every pair (one prompt
  for a symmetric task: the query prompt, `data/prompts.py`)."""
  from scipy import stats
  texts = list(dict.fromkeys(sts.sentence1 + sts.sentence2))  # each distinct sentence encoded once
  row = {text: i for i, text in enumerate(texts)}
  log.info("%s: encoding %d sentences", sts.name, len(texts))
  vectors = encoder.encode_layers(texts, layers=sorted({n for n, _ in pairs}), pooling=pooling,
                                  batch_size=batch_size, max_length=max_length, show_progress=show_progress,
                                  packing=packing, prompt=prompt)
  left, right = [row[t] for t in sts.sentence1], [row[t] for t in sts.sentence2]
  results = {}
  for layer, dim in pairs:
    metrics = results[result_key((layer, dim))] = {}
    for precision in quantize.check_precisions(precisions):
      if precision == "binary":  # closer is a smaller Hamming distance
        bits = quantize.pack_binary(vectors[layer][:, :dim])
        similarity = -quantize.hamming_pairs(bits[left], bits[right]).astype(np.float64)
      else:
        scored = quantize.scoring_vectors(vectors[layer][:, :dim], precision).astype(np.float64)
        a, b = scored[left], scored[right]
        norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
        similarity = np.sum(a * b, axis=1) / norms
      metrics[precision_metric("spearman", precision)] = 100 * float(stats.spearmanr(similarity, sts.scores)[0])
      metrics[precision_metric("pearson", precision)] = 100 * float(stats.pearsonr(similarity, sts.scores)[0])
  return results


def _evaluate(encoder, sts: StsSet, pairs, options: EvalOptions):
  return evaluate_sts(encoder, sts, pairs, pooling=options.pooling, max_length=options.max_length,
                      batch_size=options.batch_size, show_progress=options.show_progress,
                      precisions=options.precisions, packing=options.packing, prompt=options.query_prompt)


EVALUATOR = Evaluator(
    name="sts", help=".jsonl/.json/.csv/.tsv files with sentence1, sentence2, score", metavar="FILE",
    load=lambda path, options: load_sts(path), evaluate=_evaluate, metrics=METRICS, digits=2)
