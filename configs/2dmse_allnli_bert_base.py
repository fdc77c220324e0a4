"""The 2DMSE baseline on AllNLI: sentence-transformers' Matryoshka2dLoss (with its defaults) over MNRL.

    python -m starbucks_jax.train --config configs/2dmse_allnli_bert_base.py --workdir runs/2dmse_allnli

Same data, batch, schedule and model as `srl_allnli_bert_base.py`; each step trains the last layer and
one randomly sampled earlier layer, at randomly sampled dims, with KL alignment of the sampled layer
to the last (`starbucks_jax/matryoshka2d_loss.py` gives the exact semantics and the version followed).
The logged per-pair losses are the six Starbucks pairs, computed for monitoring only.
Expected result: below Starbucks at the small sizes (arXiv 2410.13230, Table 1); not yet run here.
"""

from starbucks_jax.training.defaults import base_config


def get_config():
  c = base_config()
  c.model.name = "bert-base-uncased"
  c.model.pooling = "mean"
  c.data.source = "hf:sentence-transformers/all-nli:triplet"
  c.data.query_max_length = 128
  c.data.passage_max_length = 128
  c.starbucks.mode = "2dmse"
  c.starbucks.layers = tuple(range(12))  # prior-layer candidates as ST samples them: 0 (embeddings) .. 11
  c.starbucks.dims = (32, 64, 128, 256, 512, 768)
  c.starbucks.objective = "mnrl"
  c.batch_size = 128
  c.num_epochs = 1.0
  c.optimizer.lr = 5e-5
  c.optimizer.warmup_ratio = 0.1
  c.optimizer.weight_decay = 0.0
  return c
