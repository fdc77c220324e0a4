"""The ConfigDicts that config files start from, every setting at its default.

    from starbucks_jax.training.defaults import base_config   # SRL fine-tuning (task "srl")
    c = base_config()
    c.model.name = "minilm"
    c.data.source = "data/quickstart/snli_triplets.jsonl"

`smae_base_config()` is SMAE pre-training (task "smae"). The defaults themselves live in the typed
blocks (`training/config.py` lists where); these functions write them out as ConfigDicts, so that
`--config.key=value` overrides work.
"""

from __future__ import annotations

from starbucks_jax.training import tasks


def base_config():
  """SRL fine-tuning: data of query/passage pairs, triplets, scored pairs or Tevatron groups."""
  return tasks.default_config("srl")


def smae_base_config():
  """SMAE pre-training: raw text, masked-LM at every pair plus the masked-autoencoder decoder."""
  return tasks.default_config("smae")
