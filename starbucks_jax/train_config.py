"""Every training setting and its default. Config files in `configs/` start from `base_config()` (SRL
fine-tuning, `task="srl"`) or `smae_base_config()` (SMAE pre-training, `task="smae"`) and change what
their run needs; any value can be overridden on the command line as `--config.optimizer.lr=1e-4` or
`--config.starbucks.pairs="((2,32),(4,64))"`. The two share everything but `data` and the loss block
(`starbucks` or `smae`).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

# The paper's BERT-base pair list: (layer, dim), small to large.
BERT_BASE_PAIRS = ((2, 32), (4, 64), (6, 128), (8, 256), (10, 512), (12, 768))


def base_config() -> ml_collections.ConfigDict:
  """SRL fine-tuning: the data of query/passage pairs, triplets, scored pairs or Tevatron groups."""
  c = _run_config("srl")
  c.data = ml_collections.ConfigDict()
  c.data.source = ""                  # file(s) .jsonl/.csv/.parquet, "hf:NAME[:CONFIG]" or "tfds:NAME[/CONFIG]"
  c.data.split = "train"
  c.data.kind = "auto"                # "triplets" | "pairs" | "scored" | "tevatron" | "auto"
  c.data.train_group_size = 8         # tevatron: 1 positive + (group - 1) negatives per query
  c.data.query_max_length = 128
  c.data.passage_max_length = 128
  c.data.query_prefix = ""
  c.data.passage_prefix = ""
  c.data.tfds_data_dir = config_dict.placeholder(str)
  c.data.max_examples = config_dict.placeholder(int)
  c.data.same_length = True           # pad queries and passages alike: one forward pass, fewer compiles

  c.starbucks = ml_collections.ConfigDict()
  c.starbucks.mode = "starbucks"      # "starbucks" | "2dmse" | "grid" | "separate"
  c.starbucks.pairs = BERT_BASE_PAIRS  # starbucks and separate (one pair); the logged pairs for 2dmse
  c.starbucks.layers = ()  # grid: its layers; 2dmse: the prior-layer candidates (empty: 0..L-1, as in ST)
  c.starbucks.dims = ()    # grid: its dims; 2dmse: the Matryoshka dims (empty: the dims of `pairs`)
  c.starbucks.objective = "mnrl"      # "mnrl" (in-batch negatives) | "cosent" (scored pairs)
  c.starbucks.similarity = "cosine"   # "cosine" (x scale) | "dot" (/ temperature)
  c.starbucks.scale = 20.0
  c.starbucks.temperature = 1.0
  c.starbucks.normalize = False       # L2-normalise after the cut (dot similarity; cosine always does)
  c.starbucks.pair_weights = config_dict.placeholder(tuple)  # None: every pair weighs 1
  c.starbucks.kl = "scores"           # "scores" (paper, retrieval) | "embeddings" (paper, STS) | "none"
  c.starbucks.kl_weight = 1.0
  c.starbucks.kl_temperature = 1.0
  c.starbucks.embedding_kl_scale = 0.3
  return c


def smae_base_config() -> ml_collections.ConfigDict:
  """SMAE pre-training: raw text, masked-LM at every pair plus the masked-autoencoder decoder."""
  c = _run_config("smae")
  c.model.pooling = "cls"             # only for evaluation and the export's sentence-transformers files
  c.data = ml_collections.ConfigDict()
  c.data.source = ""                  # .jsonl/.json/.csv/.parquet/.txt file(s), "hf:NAME[:CONFIG]", "tfds:NAME"
  c.data.split = "train"
  c.data.text_column = "text"
  c.data.max_length = 512             # tokens with [CLS] and [SEP]; longer texts are cropped at random
  c.data.encoder_mask_rate = 0.2      # whole words, BERT's 80/10/10 replacement
  c.data.decoder_mask_rate = 0.4      # a superset of the encoder's masked positions
  c.data.streaming = False            # stream an hf: source instead of downloading it (needs num_steps
  c.data.shuffle_buffer = 10000       # unless the hub reports the split's size)
  c.data.tfds_data_dir = config_dict.placeholder(str)
  c.data.max_examples = config_dict.placeholder(int)

  c.smae = ml_collections.ConfigDict()
  c.smae.mode = "smae"                # "smae" (MLM + MAE per pair) | "mlm2d" (MLM per pair) | "mlm" (full model)
  c.smae.pairs = BERT_BASE_PAIRS      # ignored by "mlm", which trains the full model's pair
  c.smae.gather = True                # vocabulary logits only at masked positions (False: at every position)

  c.batch_size = 512
  c.optimizer.lr = 1e-4
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_ratio = 0.05
  c.optimizer.weight_decay = 0.001
  c.optimizer.clip_grad_norm = 1.0
  return c


def _run_config(task: str) -> ml_collections.ConfigDict:
  """What every run has: model, batch, optimizer, mesh, checkpoints, logging, evaluation, export."""
  c = ml_collections.ConfigDict()
  c.task = task                       # "srl" | "smae": which loss and which kind of data
  c.seed = 0
  # Start from a training workdir's newest checkpoint or an exported folder instead of model.name's
  # weights (an SMAE run's output into SRL, say); its config and tokenizer are used too.
  c.init_from = config_dict.placeholder(str)

  c.model = ml_collections.ConfigDict()
  c.model.name = "bert-base-uncased"  # a Hugging Face folder or hub name; "minilm" = the packaged all-MiniLM-L6-v2
  c.model.pooling = "mean"            # "mean" | "cls"
  c.model.dtype = "float32"           # compute dtype: "float32" | "bfloat16" (parameters stay float32)
  c.model.remat = False               # recompute layer activations in the backward pass (less memory)
  c.model.hidden_dropout = config_dict.placeholder(float)     # None: the model config's rate; 0 turns it off
  c.model.attention_dropout = config_dict.placeholder(float)  # None: the model config's rate; 0 turns it off

  c.batch_size = 128                  # global: queries per step, over all devices and hosts
  c.grad_accum_steps = 1              # micro-batches per step (negatives come from within a micro-batch)
  c.num_epochs = 1.0
  c.num_steps = config_dict.placeholder(int)  # overrides num_epochs when set

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.lr = 5e-5
  c.optimizer.schedule = "linear"     # "linear" | "cosine" | "constant", after warmup
  c.optimizer.warmup_ratio = 0.1
  c.optimizer.warmup_steps = -1       # >= 0 overrides warmup_ratio
  c.optimizer.weight_decay = 0.01     # not applied to biases and LayerNorm
  c.optimizer.clip_grad_norm = 1.0    # 0 turns clipping off
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1                    # data-parallel devices; -1 = what fsdp leaves
  c.mesh.fsdp = 1                     # devices that shard parameters and optimizer state (ZeRO-3 style);
                                      # the batch is split over data x fsdp; -1 = what data leaves

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 1000
  c.checkpoint.keep = 3
  c.checkpoint.async_save = True

  c.log_every_steps = 10
  c.tensorboard = True
  c.progress_bar = True

  # Evaluation during training (process 0), results into metrics.jsonl as eval/<dataset>/n{n}_d{d}/<metric>.
  c.eval = ml_collections.ConfigDict()
  c.eval.every_steps = 0              # 0: only evaluate when sets are given, at the end; N: also every N steps
  c.eval.sts = ()                     # files with sentence1, sentence2, score
  c.eval.beir = ()                    # BEIR folders (corpus.jsonl, queries.jsonl, qrels/test.tsv)
  c.eval.pairs = ()                   # (layer, dim) pairs to score; empty: starbucks.pairs
  c.eval.batch_size = 64
  c.eval.query_max_length = 32
  c.eval.passage_max_length = 256
  c.eval.similarity = "cosine"        # BEIR scoring: "cosine" | "dot" (match starbucks.similarity)

  c.export = ml_collections.ConfigDict()
  c.export.enabled = True             # write workdir/export at the end
  c.export.normalize = False          # add sentence-transformers' Normalize module
  return c
