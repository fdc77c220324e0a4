"""Evaluation during training: the sets of `config.eval`, loaded once, scored every N steps and at the end.

Process 0 evaluates a host copy of the parameters with the same code as `python -m starbucks_jax.evaluate`;
the figures go into metrics.jsonl as `eval/<dataset>/n{n}_d{d}/<metric>`.
"""

from __future__ import annotations

import jax

from starbucks_jax.evaluation.report import flatten_for_metrics
from starbucks_jax.evaluation.run import evaluate_encoder, load_sets
from starbucks_jax.inference.encoder import Encoder
from starbucks_jax.model.config import EncoderConfig
from starbucks_jax.pairs import check_pairs
from starbucks_jax.training.config import EvalConfig


class TrainingEvaluator:
  """Holds the evaluation sets; `__call__(params)` returns the flat metrics."""

  def __init__(self, eval_config: EvalConfig, model_config: EncoderConfig, tokenizer, *, pooling: str,
               default_pairs):
    self.every_steps = eval_config.every_steps
    self.options = eval_config.options(pooling)
    # Files are read (and their problems reported) now, before anything compiles.
    self.sets = load_sets(eval_config.sets, self.options)
    self.pairs = eval_config.pairs or tuple(default_pairs)
    check_pairs(model_config, self.pairs)
    self.model_config = model_config
    self.tokenizer = tokenizer
    self.max_length = max(eval_config.query_max_length, eval_config.passage_max_length)

  @property
  def enabled(self) -> bool:
    return any(self.sets.values())

  def due(self, step: int, total_steps: int) -> bool:
    if not self.enabled:
      return False
    return step == total_steps or (self.every_steps > 0 and step % self.every_steps == 0)

  def __call__(self, params) -> dict[str, float]:
    encoder = Encoder(self.model_config, jax.device_get(params), self.tokenizer,
                      default_pooling=self.options.pooling, max_length=self.max_length)
    return flatten_for_metrics(evaluate_encoder(encoder, self.sets, pairs=self.pairs, options=self.options))
