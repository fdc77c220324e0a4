"""The paper's retrieval setup: Starbucks (SRL) fine-tuning of bert-base-uncased on MS MARCO passages.

    python -m starbucks_jax.train --config configs/srl_msmarco_bert_base.py --workdir runs/srl_msmarco

As ielab/Starbucks `retrieval/README.md` runs it with Tevatron: `Tevatron/msmarco-passage`, 128 queries
per batch, train_group_size 8 (1 positive + 7 hard negatives), lr 1e-4 with linear decay and no
warmup, 3 epochs, query/passage max lengths 32/196, CLS pooling, dot product / temperature 1 without
normalisation, KL weight 1 on the in-batch score distributions, bf16, gradient checkpointing (remat).
Needs the hub (or --config.data.source=/path/to/tevatron.jsonl) and an accelerator pod; on a single
accelerator, the same batch and gradients through GradCache: configs/srl_msmarco_bert_base_one_device.py
(or --config.grad_cache.query_chunk=16).
Expected result: DL19 nDCG@10 of 0.6346 at (12, 768) for the released model (retrieval/README.md);
not yet run here.
"""

from starbucks_jax.training.defaults import base_config


def get_config():
  c = base_config()
  c.model.name = "bert-base-uncased"
  c.model.pooling = "cls"
  c.model.dtype = "bfloat16"
  c.model.remat = True
  c.data.source = "hf:Tevatron/msmarco-passage"
  c.data.kind = "tevatron"
  c.data.train_group_size = 8
  c.data.query_max_length = 32
  c.data.passage_max_length = 196
  c.data.same_length = False  # queries (32) are far shorter than passages (196): encode them apart
  c.starbucks.mode = "starbucks"
  c.starbucks.objective = "mnrl"
  c.starbucks.similarity = "dot"
  c.eval.similarity = "dot"
  c.starbucks.temperature = 1.0
  c.starbucks.normalize = False
  c.starbucks.kl = "scores"
  c.starbucks.kl_weight = 1.0
  c.starbucks.kl_temperature = 1.0
  c.batch_size = 128
  c.num_epochs = 3.0
  c.optimizer.lr = 1e-4
  c.optimizer.warmup_ratio = 0.0
  c.optimizer.weight_decay = 0.0
  c.checkpoint.every_steps = 2000
  return c
