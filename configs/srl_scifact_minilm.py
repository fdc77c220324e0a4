"""Starbucks (SRL) fine-tuning of all-MiniLM-L6-v2 on SciFact training groups, with or without mined
hard negatives: the "bring your own retrieval data" example, runnable on a CPU.

    python bench/hard_negatives/split_scifact.py --out runs/scifact          # 700 train / 109 dev queries
    python -m starbucks_jax.mine --train runs/scifact/train.jsonl --corpus runs/scifact/dev \
        --layer 6 --dim 384 --range-max 100 --passage-max-length 128 --output runs/scifact/mined_6_384.jsonl
    python -m starbucks_jax.train --config configs/srl_scifact_minilm.py --workdir runs/scifact_mined \
        --config.data.source=runs/scifact/mined_6_384.jsonl
    # in-batch negatives only: --config.data.source=runs/scifact/train.jsonl --config.data.train_group_size=1

16 queries per step, each with its positive and 7 mined negatives (train_group_size 8), passages cut at
128 tokens (to keep the CPU run short), packed; one epoch (43 steps); at the end, nDCG@10 on the dev
queries against the whole corpus at every pair goes into metrics.jsonl. `bash bench/hard_negatives/run.sh`
runs the whole comparison; BENCHMARKS.md ("Hard negatives") has its figures.
Expected (2-core CPU, 2026-12-02): about 13 minutes of training plus a 4-minute evaluation; dev nDCG@10
at (1,16) ... (6,384): 5.45 6.54 19.51 30.96 38.87 68.99 with negatives mined at (6, 384). In-batch
negatives only, and negatives mined at (3, 64): BENCHMARKS.md, section "Hard negatives".
"""

import os

from starbucks_jax.training.defaults import base_config

SPLIT = os.environ.get("SCIFACT_SPLIT", "runs/scifact")  # where split_scifact.py wrote train.jsonl and dev/


def get_config():
  c = base_config()
  c.model.name = "minilm"  # the packaged all-MiniLM-L6-v2
  c.model.pooling = "mean"
  c.data.source = os.path.join(SPLIT, "train.jsonl")
  c.data.kind = "tevatron"
  c.data.train_group_size = 8
  c.data.query_max_length = 64
  c.data.passage_max_length = 128
  c.data.packing = True
  c.starbucks.pairs = ((1, 16), (2, 32), (3, 64), (4, 128), (5, 256), (6, 384))
  c.batch_size = 16
  c.num_epochs = 1.0
  c.optimizer.lr = 5e-5
  c.optimizer.warmup_ratio = 0.1
  c.optimizer.weight_decay = 0.0
  c.eval.beir = (os.path.join(SPLIT, "dev"),)
  c.eval.query_max_length = 64
  c.eval.passage_max_length = 128
  c.checkpoint.every_steps = 20
  c.log_every_steps = 5
  return c
