"""Evaluation during training: the sets of `config.eval`, loaded once, scored every N steps and at the end.

Process 0 evaluates a host copy of the parameters with the same code as `python -m starbucks_jax.evaluate`;
the figures go into metrics.jsonl as `eval/<dataset>/n{n}_d{d}/<metric>`.
"""

from __future__ import annotations

import jax

from starbucks_jax import evaluate
from starbucks_jax.bert_config import BertConfig
from starbucks_jax.encoder import Encoder
from starbucks_jax.errors import StarbucksError


class TrainingEvaluator:
  """Holds the evaluation sets; `__call__(params)` returns the flat metrics."""

  def __init__(self, eval_config, model_config: BertConfig, tokenizer, *, pooling: str, default_pairs):
    self.every_steps = int(eval_config.every_steps)
    if self.every_steps < 0:
      raise StarbucksError(f"eval.every_steps must be >= 0, got {self.every_steps}")
    # Files are read (and their problems reported) now, before anything compiles.
    self.sts_sets = [evaluate.load_sts(path) for path in eval_config.sts]
    self.beir_sets = [evaluate.load_beir(path) for path in eval_config.beir]
    self.pairs = tuple(tuple(int(v) for v in pair) for pair in (eval_config.pairs or default_pairs))
    evaluate.check_pairs(model_config, self.pairs)
    self.model_config = model_config
    self.tokenizer = tokenizer
    self.pooling = pooling
    self.eval_config = eval_config

  @property
  def enabled(self) -> bool:
    return bool(self.sts_sets or self.beir_sets)

  def due(self, step: int, total_steps: int) -> bool:
    if not self.enabled:
      return False
    return step == total_steps or (self.every_steps > 0 and step % self.every_steps == 0)

  def __call__(self, params) -> dict[str, float]:
    host_params = jax.device_get(params)
    c = self.eval_config
    encoder = Encoder(self.model_config, host_params, self.tokenizer, default_pooling=self.pooling,
                      max_length=max(c.query_max_length, c.passage_max_length))
    results = evaluate.evaluate_encoder(
        encoder, sts_sets=self.sts_sets, beir_sets=self.beir_sets, pairs=self.pairs, pooling=self.pooling,
        query_max_length=c.query_max_length, passage_max_length=c.passage_max_length, batch_size=c.batch_size,
        similarity=c.similarity, show_progress=False)
    return evaluate.flatten_for_metrics(results)
