"""Starbucks (SRL) fine-tuning of ModernBERT-base on AllNLI triplets: the paper's STS setup
(configs/srl_allnli_bert_base.py) on a ModernBERT encoder.

    python -m starbucks_jax.train --config configs/srl_allnli_modernbert_base.py --workdir runs/srl_allnli_modernbert

What a user would run on a pod: answerdotai/ModernBERT-base (22 layers, hidden 768, rotary positions up
to 8192, global attention every third layer, 128-token sliding windows elsewhere), AllNLI triplets, MNRL
with in-batch negatives, batch 128, 1 epoch, mean pooling, the embedding KL at 0.3 as in the BERT config,
bf16. ModernBERT has 22 layers, not 12, so the six pairs are spread over them: (2,32), (6,64), (10,128),
(14,256), (18,512), (22,768); every layer n serves the n-layer model with ModernBERT's final norm
(`model/modernbert.py` says why). The learning rate is 8e-5 rather than BERT's 5e-5 (ModernBERT
fine-tunes at higher rates; a guess, not a tuned value). Add `--config.mesh.fsdp=N` to shard parameters
and Adam state. Needs the hub (or a local copy: --config.model.name=/path/to/ModernBERT-base
--config.data.source=/path/to/triplets.jsonl) and an accelerator. Not run here: no accelerator in these
sessions. The family is checked against transformers' ModernBertModel on tiny configs
(tests/model/test_modernbert.py).
"""

from starbucks_jax.training.defaults import base_config


def get_config():
  c = base_config()
  c.model.name = "answerdotai/ModernBERT-base"
  c.model.pooling = "mean"
  c.model.dtype = "bfloat16"
  c.data.source = "hf:sentence-transformers/all-nli:triplet"
  c.data.query_max_length = 128
  c.data.passage_max_length = 128
  c.starbucks.mode = "starbucks"
  c.starbucks.objective = "mnrl"
  c.starbucks.pairs = ((2, 32), (6, 64), (10, 128), (14, 256), (18, 512), (22, 768))
  c.starbucks.kl = "embeddings"
  c.starbucks.embedding_kl_scale = 0.3
  c.batch_size = 128
  c.num_epochs = 1.0
  c.optimizer.lr = 8e-5
  c.optimizer.warmup_ratio = 0.1
  c.optimizer.weight_decay = 0.0
  return c
