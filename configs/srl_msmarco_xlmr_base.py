"""Starbucks (SRL) fine-tuning of xlm-roberta-base on MS MARCO passages: the paper's retrieval setup
(configs/srl_msmarco_bert_base.py) on a multilingual RoBERTa-family encoder.

    python -m starbucks_jax.train --config configs/srl_msmarco_xlmr_base.py --workdir runs/srl_msmarco_xlmr

What a user would run on a pod: FacebookAI/xlm-roberta-base (12 layers, hidden 768, 250k-token
SentencePiece vocabulary, positions up to 512), Tevatron's MS MARCO groups, 128 queries per batch with
7 hard negatives each, lengths 32/196, CLS pooling, dot product, KL on the in-batch scores, bf16, remat.
Add `--config.mesh.fsdp=N` to shard parameters and Adam state over N devices (the 192M-parameter
embedding table is the largest tensor; it is sharded vocabulary x embed, as BERT's). Needs the hub and an
accelerator pod. Not run here (no accelerator in
these sessions); the family itself is checked against transformers' XLMRobertaModel on tiny configs
(tests/model/test_roberta.py).
"""

from starbucks_jax.training.defaults import base_config


def get_config():
  c = base_config()
  c.model.name = "FacebookAI/xlm-roberta-base"
  c.model.pooling = "cls"
  c.model.dtype = "bfloat16"
  c.model.remat = "dots"
  c.data.source = "hf:Tevatron/msmarco-passage"
  c.data.kind = "tevatron"
  c.data.train_group_size = 8
  c.data.query_max_length = 32
  c.data.passage_max_length = 196
  c.data.same_length = False
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
  c.optimizer.lr = 2e-5
  c.optimizer.warmup_ratio = 0.05
  c.optimizer.weight_decay = 0.0
  c.checkpoint.every_steps = 2000
  return c
