"""Every shipped config reads and checks (`tasks.read_config`: unknown keys, types and values), and the
decoder configs' pairs fit the real models' shapes (built from their known sizes, no weights)."""

import importlib

import pytest

from starbucks_jax.pairs import check_pairs
from starbucks_jax.training import tasks
from tests.helpers import REPO

CONFIGS = sorted(p.stem for p in (REPO / "configs").glob("*.py"))

# The real models' sizes (their config.json files), for the pair check.
REAL_SIZES = {
    "srl_msmarco_qwen3_0_6b": ("qwen3", dict(num_hidden_layers=28, hidden_size=1024, num_attention_heads=16,
                                             num_key_value_heads=8, head_dim=128, intermediate_size=3072,
                                             vocab_size=151669)),
    "srl_msmarco_embeddinggemma": ("gemma3", dict(num_hidden_layers=24, hidden_size=768, num_attention_heads=3,
                                                  num_key_value_heads=1, head_dim=256, intermediate_size=1152,
                                                  vocab_size=262144)),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_reads(name):
  config = tasks.read_config(importlib.import_module(f"configs.{name}").get_config())
  assert config.batch_size >= 1


@pytest.mark.parametrize("name", sorted(REAL_SIZES))
def test_decoder_configs_fit_their_models(name):
  family, sizes = REAL_SIZES[name]
  module = importlib.import_module(f"starbucks_jax.model.{family}")
  model_config = module.FAMILY.config_class(**sizes)
  config = tasks.read_config(importlib.import_module(f"configs.{name}").get_config())
  check_pairs(model_config, config.loss.pairs)
  assert config.model.pooling == module.FAMILY.default_pooling
  assert config.data.query_prompt
