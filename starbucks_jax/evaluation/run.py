"""Evaluating one encoder at many (layer, dim) sizes on loaded data sets, with every registered evaluator.

    sets = load_sets({"sts": ["data/quickstart/stsb_test.jsonl"], "beir": [...]}, options)
    results = evaluate_encoder(encoder, sets, pairs=[(2, 32), (4, 64)], options=options)
    # {"sts": {"stsb_test": {"2,32": {"spearman": ..., "pearson": ...}, ...}}, "beir": {...}}

Data sets are loaded once (and checked, so a bad file is named before anything is encoded) and can be
evaluated many times: the training loop does so every `eval.every_steps` steps.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from starbucks_jax.errors import StarbucksError
from starbucks_jax.evaluation.evaluator import EvalOptions
from starbucks_jax.evaluation.registry import EVALUATORS
from starbucks_jax.model.pooling import SIMILARITIES
from starbucks_jax.pairs import Pair, check_pairs, default_pairs, parse_pairs


def load_sets(paths: Mapping[str, Sequence[str]], options: EvalOptions) -> dict[str, list]:
  """{evaluator name: [loaded data set, ...]} from {evaluator name: [path, ...]}; names are checked unique."""
  unknown = sorted(set(paths) - set(EVALUATORS))
  if unknown:
    raise StarbucksError(f"unknown evaluator(s) {', '.join(unknown)}; known: {', '.join(EVALUATORS)}")
  sets = {name: [EVALUATORS[name].load(str(path), options) for path in paths.get(name, ())] for name in EVALUATORS}
  check_unique_names([d for loaded in sets.values() for d in loaded])
  return sets


def evaluate_encoder(encoder, sets: Mapping[str, Sequence], *, pairs: Sequence[Pair] | None = None,
                     options: EvalOptions = EvalOptions()) -> dict:
  """{evaluator name: {data set name: {"n,d": metrics}}}, every registered evaluator's key present.

  `sets`: {evaluator name: loaded data sets}; pairs default to `pairs.default_pairs`.
  """
  pairs = default_pairs(encoder.config) if pairs is None else list(parse_pairs(pairs, "pairs"))
  check_pairs(encoder.config, pairs)
  if options.similarity not in SIMILARITIES:
    raise StarbucksError(f"similarity must be one of {', '.join(SIMILARITIES)}, got {options.similarity!r}")
  unknown = sorted(set(sets) - set(EVALUATORS))
  if unknown:
    raise StarbucksError(f"unknown evaluator(s) {', '.join(unknown)}; known: {', '.join(EVALUATORS)}")
  check_unique_names([d for loaded in sets.values() for d in loaded])
  return {name: {data.name: evaluator.evaluate(encoder, data, pairs, options) for data in sets.get(name, ())}
          for name, evaluator in EVALUATORS.items()}


def check_unique_names(data_sets) -> None:
  names = [d.name for d in data_sets]
  for name in names:
    if names.count(name) > 1:
      raise StarbucksError(f"two data sets are named {name!r} (results are keyed by file or folder name)")
