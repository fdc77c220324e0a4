"""The model-family recipe, for real: a renamed copy of BERT (`renamed_bert.py`, one file) registered with
one line, then loaded, encoded with, trained and exported through the same code as BERT."""

import json

import numpy as np
import pytest

from tests.helpers import randomize, run_train, tiny_config, tiny_hf_config
from tests.recipes import renamed_bert


@pytest.fixture
def registered():
  from starbucks_jax.model import registry
  registry.register(renamed_bert.FAMILY)  # the touch list's one registry line
  yield
  del registry.FAMILIES[renamed_bert.MODEL_TYPE]  # registered for this test only


@pytest.fixture(scope="module")
def renamed_folder(tmp_path_factory, minilm_dir):
  """A random tiny BERT saved by transformers, its tensors renamed and its model_type changed; and the
  transformers model, to compare with."""
  import shutil
  import transformers
  from safetensors.numpy import load_file, save_file
  model = randomize(transformers.BertModel(tiny_hf_config()), seed=5)
  original = tmp_path_factory.mktemp("original")
  model.save_pretrained(str(original))
  folder = tmp_path_factory.mktemp("renamed")
  state = load_file(str(original / "model.safetensors"))
  save_file({renamed_bert.rename(k): v for k, v in state.items()}, str(folder / "model.safetensors"))
  config = json.loads((original / "config.json").read_text())
  (folder / "config.json").write_text(json.dumps({**config, "model_type": renamed_bert.MODEL_TYPE}))
  for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
    shutil.copyfile(minilm_dir / name, folder / name)
  return folder, model


def test_unregistered_model_type_is_refused(renamed_folder):
  from starbucks_jax.errors import StarbucksError
  from starbucks_jax.hf.load import load_pretrained
  from starbucks_jax.model import registry
  # Every registered family is named (the package's list grows: BERT, RoBERTa, ModernBERT, Qwen3, ...).
  assert {"bert", "modernbert", "qwen3", "roberta", "xlm-roberta"} <= set(registry.FAMILIES)
  supported = ", ".join(repr(t) for t in sorted(registry.FAMILIES))
  with pytest.raises(StarbucksError, match=f"model_type is 'renamed_bert', but only {supported} models"):
    load_pretrained(renamed_folder[0])


def test_registered_family_loads_encodes_and_matches_transformers(registered, renamed_folder):
  import torch
  from starbucks_jax.hf.load import load_pretrained
  from starbucks_jax.inference.encoder import Encoder
  folder, model = renamed_folder
  loaded = load_pretrained(folder)
  assert type(loaded.config).__name__ == "RenamedBertConfig" and not loaded.report.unexpected
  texts = ["a man plays a guitar", "two dogs run on the beach in the sun"]
  encoder = Encoder.from_pretrained(folder, max_length=32)
  ours = encoder.encode(texts, layer=4, pooling="cls")
  enc = encoder.tokenizer(texts, padding=True, return_tensors="pt")
  with torch.no_grad():
    theirs = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state[:, 0]
  assert np.abs(ours - theirs.numpy()).max() < 1e-4


def test_registered_family_trains_and_exports_under_its_own_names(registered, renamed_folder, tmp_path):
  from safetensors.numpy import load_file
  from starbucks_jax.hf.load import load_pretrained
  folder, _ = renamed_folder
  summary = run_train(tiny_config(folder, num_steps=2), tmp_path / "run")
  assert np.isfinite(summary["metrics"]["loss"])
  exported = load_file(str(summary["export"] / "model.safetensors"))
  assert "enc.blocks.3.attn.q.weight" in exported and not any(k.startswith("encoder.") for k in exported)
  config = json.loads((summary["export"] / "config.json").read_text())
  assert (config["model_type"], config["architectures"]) == ("renamed_bert", ["RenamedBertModel"])
  reloaded = load_pretrained(summary["export"])  # the export reads back through the same family
  assert reloaded.config.num_hidden_layers == 4



@pytest.fixture
def registered_without_mlm():
  """The renamed family declaring no MLM head and last-token pooling: what a decoder family says of itself."""
  import dataclasses
  from starbucks_jax.model import registry
  registry.register(dataclasses.replace(renamed_bert.FAMILY, mlm=None, default_pooling="last"))
  yield
  del registry.FAMILIES[renamed_bert.MODEL_TYPE]


def test_a_family_says_what_it_can_do(registered_without_mlm, renamed_folder, tmp_path):
  """Without an MLM head, SMAE is refused with one error line before anything loads; its default pooling
  is what an encoder of a folder without sentence-transformers files pools by."""
  from starbucks_jax.errors import StarbucksError
  from starbucks_jax.inference.encoder import Encoder
  from starbucks_jax.training.defaults import smae_base_config
  folder, _ = renamed_folder
  config = smae_base_config()
  config.model.name = str(folder)
  config.data.source = str(tmp_path / "never_read.txt")
  with pytest.raises(StarbucksError, match="SMAE pre-training .* needs a masked-LM head, and the renamed_bert family has none"):
    run_train(config, tmp_path / "smae")
  assert not (tmp_path / "smae" / "checkpoints").exists()
  encoder = Encoder.from_pretrained(folder, max_length=32)
  assert encoder.default_pooling == "last"
  texts = ["a man plays a guitar", "two dogs"]
  # Layer 1: the random model's last layers make every token's state nearly alike.
  np.testing.assert_array_equal(encoder.encode(texts, layer=1), encoder.encode(texts, layer=1, pooling="last"))
  assert np.abs(encoder.encode(texts, layer=1) - encoder.encode(texts, layer=1, pooling="cls")).max() > 1e-2
