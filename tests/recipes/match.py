"""An evaluator added by the recipe in ARCHITECTURE.md: "match", top-1 accuracy of finding each query's own
positive among all the positives of a file of (query, positive) pairs, at every (layer, dim) size.

Touch list: this one module (in the package it would be `starbucks_jax/evaluation/<name>.py`) and one line
in `starbucks_jax/evaluation/registry.py` (here `registry.register(EVALUATOR)` in the test). It then has
its command-line flag (`--match FILE`), its training config key (`eval.match`) and its results.
"""

import json
from pathlib import Path

import numpy as np

from starbucks_jax.errors import StarbucksError
from starbucks_jax.evaluation.evaluator import Evaluator
from starbucks_jax.pairs import result_key


class MatchSet:
  def __init__(self, path: str):
    path = Path(path)
    if not path.is_file():
      raise StarbucksError(f"match file {path} does not exist")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if len(rows) < 2 or any("query" not in r or "positive" not in r for r in rows):
      raise StarbucksError(f"match file {path} needs at least 2 rows with 'query' and 'positive'")
    self.name = path.stem
    self.queries = [r["query"] for r in rows]
    self.positives = [r["positive"] for r in rows]


def evaluate(encoder, data: MatchSet, pairs, options) -> dict:
  layers = sorted({n for n, _ in pairs})
  encode = lambda texts: encoder.encode_layers(texts, layers=layers, pooling=options.pooling,
                                               batch_size=options.batch_size, packing=options.packing,
                                               show_progress=False)
  queries, positives = encode(data.queries), encode(data.positives)
  results = {}
  for layer, dim in pairs:
    q = queries[layer][:, :dim] / np.linalg.norm(queries[layer][:, :dim], axis=1, keepdims=True)
    p = positives[layer][:, :dim] / np.linalg.norm(positives[layer][:, :dim], axis=1, keepdims=True)
    hits = np.argmax(q @ p.T, axis=1) == np.arange(len(q))
    results[result_key((layer, dim))] = {"accuracy": float(np.mean(hits))}
  return results


EVALUATOR = Evaluator(name="match", help=".jsonl files of query, positive", metavar="FILE",
                      load=lambda path, options: MatchSet(path), evaluate=evaluate, metrics=("accuracy",), digits=3)
