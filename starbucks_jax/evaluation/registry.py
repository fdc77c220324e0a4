"""The evaluators, by name: `sts` (scored sentence pairs), `beir` (retrieval folders) and `mteb` (MTEB
tasks, local or by name).

Each becomes a flag of `python -m starbucks_jax.evaluate` (`--sts FILE ...`), a training config key
(`eval.sts`) and a key of the results. A new evaluator registers here with one line, or at run time with
`register` (a plugin, a test).
"""

from __future__ import annotations

from starbucks_jax.errors import StarbucksError
from starbucks_jax.evaluation import mteb_tasks, retrieval, sts
from starbucks_jax.evaluation.evaluator import Evaluator

EVALUATORS: dict[str, Evaluator] = {evaluator.name: evaluator for evaluator in (
    sts.EVALUATOR,
    retrieval.EVALUATOR,
    mteb_tasks.EVALUATOR,
)}


def register(evaluator: Evaluator) -> None:
  if evaluator.name in EVALUATORS and EVALUATORS[evaluator.name] is not evaluator:
    raise StarbucksError(f"evaluator {evaluator.name!r} is registered already")
  EVALUATORS[evaluator.name] = evaluator
