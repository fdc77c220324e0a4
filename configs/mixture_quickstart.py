"""Mixture quickstart: Starbucks (SRL) fine-tuning of all-MiniLM-L6-v2 on three shipped sources at once, on
a CPU: SNLI triplets (MNRL), SciFact claims with the abstracts they cite (Tevatron groups, MNRL) and STS-B
train scored pairs (CoSENT). Each batch comes from one source, so in-batch negatives are of one kind.

    python -m starbucks_jax.train --config configs/mixture_quickstart.py --workdir runs/mixture_quickstart

It needs no network (the packaged all-MiniLM-L6-v2; `data/quickstart/`). One epoch of the mixture: 90 SNLI
steps, 25 SciFact steps and 60 STS-B steps of 32 examples, dealt in an order fixed by the seed
(`data/mixture.py`), then the STS-B test Spearman at every pair and the export to
`runs/mixture_quickstart/export`. `metrics.jsonl` logs each source's loss and examples under
`source/<name>/...`.

Expected (2-core CPU): about 8.5 minutes; each source's loss falls (`source/<name>/loss`: SNLI 28.0 at step
5 to 14.4 at 175, SciFact 24.3 at 30 to 17.4, STS-B's CoSENT 57.9 to 40.6), and the end-of-training STS-B
test Spearman at (1,16) ... (6,384) is 51.34 62.76 71.39 74.48 77.39 81.89 (BENCHMARKS.md, section
"Mixtures: the mixture quickstart").
Mixed batches (every batch holds each source's share; one objective and group size, so not these three):
--config.data.mix_sources=True. Steps by weight instead of size: --config.data.sampling=weights.
"""

import os

from starbucks_jax.training.defaults import base_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "data", "quickstart")


def get_config():
  c = base_config()
  c.model.name = "minilm"  # the packaged all-MiniLM-L6-v2
  c.model.pooling = "mean"
  # The data block's fields are every source's defaults; a source's own entries replace them.
  c.data.query_max_length = 32
  c.data.passage_max_length = 32
  c.data.mixture = {
      # weight: each source's share of the steps with --config.data.sampling=weights (a flag can override a
      # key a config file sets, not add one: --config.data.mixture.stsb.weight=2.0).
      "snli": dict(source=os.path.join(DATA, "snli_triplets.jsonl"), max_examples=2880, weight=1.0),
      # Claims are short; the cited abstracts are long (128 tokens keep their opening). No hard negatives:
      # each claim's second passage is another claim's abstract (`data/groups.py`).
      "scifact": dict(source=os.path.join(DATA, "scifact_train.jsonl"), kind="tevatron", train_group_size=2,
                      passage_max_length=128, weight=1.0),
      "stsb": dict(source=os.path.join(DATA, "stsb_train.jsonl"), kind="scored", objective="cosent",
                   max_examples=1920, weight=1.0),
  }
  c.data.sampling = "size"
  c.starbucks.pairs = ((1, 16), (2, 32), (3, 64), (4, 128), (5, 256), (6, 384))
  c.batch_size = 32
  c.num_epochs = 1.0
  c.optimizer.lr = 1e-4
  c.optimizer.warmup_ratio = 0.1
  c.optimizer.weight_decay = 0.0
  c.eval.sts = (os.path.join(DATA, "stsb_test.jsonl"),)
  c.eval.query_max_length = 128
  c.eval.passage_max_length = 128
  c.checkpoint.every_steps = 50
  c.log_every_steps = 5
  return c
