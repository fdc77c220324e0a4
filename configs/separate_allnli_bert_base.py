"""The "separately trained" baseline: one (layer, dim) size, the model cut to that many layers.

    python -m starbucks_jax.train --config configs/separate_allnli_bert_base.py:6,128 --workdir runs/sep_6_128

The argument after the colon is "n,d" (default 12,768). Training is MNRL on AllNLI triplets exactly as
in `srl_allnli_bert_base.py`, but for that one size; the export is an n-layer model.
Expected result: Starbucks matches these separately trained models (arXiv 2410.13230); not yet run here.
"""

from starbucks_jax.training.defaults import base_config


def get_config(arg: str = "12,768"):
  layer, dim = (int(v) for v in arg.split(","))
  c = base_config()
  c.model.name = "bert-base-uncased"
  c.model.pooling = "mean"
  c.data.source = "hf:sentence-transformers/all-nli:triplet"
  c.data.query_max_length = 128
  c.data.passage_max_length = 128
  c.starbucks.mode = "separate"
  c.starbucks.pairs = ((layer, dim),)
  c.starbucks.kl = "none"
  c.starbucks.objective = "mnrl"
  c.batch_size = 128
  c.num_epochs = 1.0
  c.optimizer.lr = 5e-5
  c.optimizer.warmup_ratio = 0.1
  c.optimizer.weight_decay = 0.0
  return c
