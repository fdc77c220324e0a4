"""The paper's SMAE pre-training run: bert-base-uncased on FineWeb sample-100BT.

    python -m starbucks_jax.train --config configs/smae_fineweb_bert_base.py --workdir runs/smae_fineweb

As ielab/Starbucks `smae/pretrain_smae.sh` runs it: masked-LM at the six pairs (2,32) ... (12,768) plus
the one-layer masked-autoencoder decoder, whole-word masking at 0.2 (encoder) and 0.4 (decoder),
texts randomly cropped to 512 tokens, a global batch of 512 (4 nodes x 2 GPUs x 32 x 2 accumulation
steps there), lr 1e-4 with cosine decay after 5% warmup, weight decay 0.001, bf16, one epoch over the
sample. The data is streamed from the hub by name (`HuggingFaceFW/fineweb`, config `sample-100BT`), so
it needs network and an accelerator pod; one epoch's step count comes from the size the hub reports for
the split, or give --config.num_steps. Then fine-tune with SRL:

    python -m starbucks_jax.train --config configs/srl_msmarco_bert_base.py --workdir runs/srl_msmarco_smae \
        --config.init_from=runs/smae_fineweb

Expected result: the paper's SMAE-initialised Starbucks model (arXiv 2410.13230, Tables 1-2) improves on
bert-base-uncased initialisation at the small sizes; not yet run here (no accelerator or hub).
"""

from starbucks_jax.pairs import BERT_BASE_PAIRS
from starbucks_jax.training.defaults import smae_base_config


def get_config():
  c = smae_base_config()
  c.model.name = "bert-base-uncased"
  c.model.dtype = "bfloat16"
  c.data.source = "hf:HuggingFaceFW/fineweb:sample-100BT"
  c.data.streaming = True
  c.data.max_length = 512
  c.data.encoder_mask_rate = 0.2
  c.data.decoder_mask_rate = 0.4
  c.smae.mode = "smae"
  c.smae.pairs = BERT_BASE_PAIRS
  c.batch_size = 512
  c.num_epochs = 1.0
  c.optimizer.lr = 1e-4
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_ratio = 0.05
  c.optimizer.weight_decay = 0.001
  c.checkpoint.every_steps = 10000
  c.log_every_steps = 100
  return c
