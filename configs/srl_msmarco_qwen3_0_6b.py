"""Starbucks (SRL) fine-tuning of Qwen3-Embedding-0.6B on MS MARCO passages: the paper's retrieval setup
(configs/srl_msmarco_bert_base.py) on a decoder embedder.

    python -m starbucks_jax.train --config configs/srl_msmarco_qwen3_0_6b.py --workdir runs/srl_msmarco_qwen3

What a user would run on one accelerator: Qwen/Qwen3-Embedding-0.6B (28 causal layers, hidden 1024, 16
query heads and 8 key/value heads of 128, rotary positions, a 151k-token vocabulary; `model/qwen3.py`),
Tevatron's MS MARCO groups, 128 queries per batch with 7 hard negatives each, lengths 64/196 (the
queries carry Qwen3-Embedding's instruction prompt), bf16, remat,
and GradCache in chunks of 16 queries and their 128 passages (the same gradients as the whole batch at
once; `--dry_run` prints what a device must hold). The embedding is the last token's state (`last`
pooling: the tokenizer ends every text with <|endoftext|>), every layer n serving the n-layer model with
Qwen3's final norm, so the five pairs are spread over the 28 layers: (4,64), (7,128), (14,256),
(21,512), (28,1024). Cosine similarity x 20 rather than BERT's raw dot product (a decoder's last-token
states are far from unit length, and Qwen3-Embedding is served normalised: the export adds
sentence-transformers' Normalize module). The learning rate (2e-5, 5% warmup) and the single epoch are
guesses for a model that is already an embedder, not tuned values. Add `--config.mesh.fsdp=N` to shard
parameters and Adam state over N devices.
Needs the hub (or --config.model.name=/path/to/Qwen3-Embedding-0.6B
--config.data.source=/path/to/tevatron.jsonl) and an accelerator. Not run here (needs an accelerator and
the hub); the family is checked against transformers' Qwen3Model on tiny configs (tests/model/test_qwen3.py).
"""

from starbucks_jax.training.defaults import base_config


def get_config():
  c = base_config()
  c.model.name = "Qwen/Qwen3-Embedding-0.6B"
  c.model.pooling = "last"
  c.model.dtype = "bfloat16"
  c.model.remat = "dots"  # GradCache bounds the activations already; "full" holds the least
  # Qwen3-Embedding's instruction form on queries, none on documents (its model card's retrieval usage);
  # the instruction's tokens count in the query length, hence 64 rather than 32.
  c.data.query_prompt = ("Instruct: Given a web search query, retrieve relevant passages that answer the "
                         "query\nQuery:")
  # Full fine-tuning; for LoRA instead (adapters on the attention projections, the base frozen):
  # --config.lora.rank=16 --config.lora.alpha=32
  c.data.source = "hf:Tevatron/msmarco-passage"
  c.data.kind = "tevatron"
  c.data.train_group_size = 8
  c.data.query_max_length = 64
  c.data.passage_max_length = 196
  c.data.same_length = False  # queries (64) are far shorter than passages (196): encode them apart
  c.starbucks.mode = "starbucks"
  c.starbucks.objective = "mnrl"
  c.starbucks.pairs = ((4, 64), (7, 128), (14, 256), (21, 512), (28, 1024))
  c.starbucks.similarity = "cosine"
  c.starbucks.scale = 20.0
  c.eval.similarity = "cosine"
  c.starbucks.kl = "scores"
  c.starbucks.kl_weight = 1.0
  c.starbucks.kl_temperature = 1.0
  c.batch_size = 128
  c.grad_cache.query_chunk = 16  # and its 128 passages: 8 chunks a step
  c.num_epochs = 1.0
  c.optimizer.lr = 2e-5
  c.optimizer.warmup_ratio = 0.05
  c.optimizer.weight_decay = 0.0
  c.checkpoint.every_steps = 2000
  c.export.normalize = True
  return c
