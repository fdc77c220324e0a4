"""SMAE pre-training quickstart: all-MiniLM-L6-v2 on shipped text, on a CPU, in minutes.

    python -m starbucks_jax.train --config configs/smae_quickstart.py --workdir runs/smae_quickstart

Masked-LM at the six pairs (1,16) (2,32) (3,64) (4,128) (5,256) (6,384) plus the one-layer
masked-autoencoder decoder fed each pair's CLS vector, on `data/quickstart/pretrain_text.jsonl`
(565 SciFact abstracts, randomly cropped to 32 tokens, and 10279 STS-B train sentences, none of them
in STS-B test), 90 steps of 32 texts. MiniLM ships without an MLM head, so the head (and the decoder,
a copy of layer 1) starts fresh; the log says so. It exports `runs/smae_quickstart/export`, a `BertForMaskedLM` folder, which feeds SRL fine-tuning:

    python -m starbucks_jax.train --config configs/quickstart.py --workdir runs/smae_srl \
        --config.init_from=runs/smae_quickstart

Expected (2-core CPU): about 6 minutes; the total loss falls from 8.4 to 7.3 (means of the first and
last four logs), every pair's MLM and MAE loss with it. What it does for SRL at each size: the README's
"SMAE, then SRL" table.
"""

import os

from starbucks_jax.training.defaults import smae_base_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config():
  c = smae_base_config()
  c.model.name = "minilm"  # the packaged all-MiniLM-L6-v2
  c.model.pooling = "mean"
  c.data.source = os.path.join(REPO, "data", "quickstart", "pretrain_text.jsonl")
  # 32 tokens: the vocabulary projection at 12 (pair, branch) terms dominates a step (its FLOPs and time:
  # BENCHMARKS.md, section "Results (CPU, float32)", the SMAE quickstart's step), so the quickstart
  # stays short.
  c.data.max_length = 32
  c.smae.pairs = ((1, 16), (2, 32), (3, 64), (4, 128), (5, 256), (6, 384))
  c.batch_size = 32
  c.num_steps = 90
  c.optimizer.lr = 2e-4    # the head starts from scratch; the paper's 1e-4 is for 100B tokens
  c.optimizer.warmup_ratio = 0.05
  c.checkpoint.every_steps = 30
  c.log_every_steps = 5
  return c
