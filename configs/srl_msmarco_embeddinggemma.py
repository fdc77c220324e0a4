"""Starbucks (SRL) fine-tuning of EmbeddingGemma-300m on MS MARCO passages: the paper's retrieval setup
(configs/srl_msmarco_bert_base.py) on a Gemma 3 embedder.

    python -m starbucks_jax.train --config configs/srl_msmarco_embeddinggemma.py --workdir runs/srl_embeddinggemma

google/embeddinggemma-300m is Gemma 3 text with bidirectional attention (24 layers, hidden 768, sliding
and global layers; `model/gemma3.py`), mean pooling, and two Dense modules after pooling (768 -> 3072 ->
768, `model/dense_head.py`) before its Normalize; it was trained Matryoshka at 768/512/256/128. Here every
layer n also serves the n-layer model (Gemma's final norm on each layer's output) and the Dense head runs
on each layer's pooled vector before the cut, so the pairs span layers and its Matryoshka dims: (6, 128),
(12, 256), (18, 512), (24, 768). Prompts are EmbeddingGemma's retrieval prompts (its model card's
`query` and `document`); they reach the export, so `SentenceTransformer(export).encode_query` uses them.
Tevatron groups of 8, 128 queries a batch, lengths 64/256, bf16, GradCache in chunks of 16 queries. The
learning rate and the single epoch are guesses for a model that is already an embedder, not tuned values.
Needs the hub (or --config.model.name=/path/to/embeddinggemma-300m --config.data.source=...) and an
accelerator. Not run here; the family is checked against transformers' Gemma3TextModel and
sentence-transformers' Dense modules on tiny configs (tests/model/test_gemma3.py).
"""

from starbucks_jax.training.defaults import base_config


def get_config():
  c = base_config()
  c.model.name = "google/embeddinggemma-300m"
  c.model.pooling = "mean"
  c.model.dtype = "bfloat16"
  c.model.remat = "dots"
  c.data.query_prompt = "task: search result | query: "
  c.data.passage_prompt = "title: none | text: "
  # Full fine-tuning; for LoRA instead: --config.lora.rank=16 --config.lora.alpha=32
  c.data.source = "hf:Tevatron/msmarco-passage"
  c.data.kind = "tevatron"
  c.data.train_group_size = 8
  c.data.query_max_length = 64
  c.data.passage_max_length = 256
  c.data.same_length = False
  c.starbucks.mode = "starbucks"
  c.starbucks.objective = "mnrl"
  c.starbucks.pairs = ((6, 128), (12, 256), (18, 512), (24, 768))
  c.starbucks.similarity = "cosine"
  c.starbucks.scale = 20.0
  c.eval.similarity = "cosine"
  c.starbucks.kl = "scores"
  c.starbucks.kl_weight = 1.0
  c.batch_size = 128
  c.grad_cache.query_chunk = 16
  c.num_epochs = 1.0
  c.optimizer.lr = 2e-5
  c.optimizer.warmup_ratio = 0.05
  c.optimizer.weight_decay = 0.0
  c.checkpoint.every_steps = 2000
  c.export.normalize = True
  return c
