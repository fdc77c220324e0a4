"""Importing Hugging Face folders: key layouts, file formats, the MLM head, the hub path, and bad folders."""

import json
import logging
import shutil

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import save_file

from starbucks_jax.errors import StarbucksError
from starbucks_jax.hf.load import load_pretrained, resolve_model_dir
from starbucks_jax.model import bert, bert_names
from tests.helpers import mlm_logits, randomize, save_with_tokenizer, tiny_hf_config

IDS = np.array([[101, 7592, 2088, 2003, 102, 0], [101, 2460, 102, 0, 0, 0]], np.int32)
MASK = (IDS > 0).astype(np.int32)


@pytest.fixture(scope="module")
def masked_lm(tmp_path_factory, minilm_dir):
  model = randomize(transformers.BertForMaskedLM(tiny_hf_config()), seed=1)
  return model, save_with_tokenizer(model, tmp_path_factory.mktemp("mlm"), minilm_dir)


def torch_mlm_logits(model):
  with torch.no_grad():
    return model(input_ids=torch.tensor(IDS, dtype=torch.long), attention_mask=torch.tensor(MASK)).logits.numpy()


def our_mlm_logits(loaded):
  out = bert.apply(loaded.params, IDS, MASK, config=loaded.config)
  word_embeddings = loaded.params["encoder"]["embeddings"]["word_embeddings"]["embedding"]
  return np.asarray(mlm_logits(loaded.params["mlm_head"], word_embeddings, out.hidden_states[-1],
                               layer_norm_eps=loaded.config.layer_norm_eps))


def test_masked_lm_layout_keeps_the_head(masked_lm):
  model, folder = masked_lm
  loaded = load_pretrained(folder)
  assert loaded.report.has_mlm_head and loaded.report.initialized == ["pooler"]
  err = np.abs(our_mlm_logits(loaded) - torch_mlm_logits(model))[MASK.astype(bool)].max()
  assert err < 1e-4, f"MLM logits max abs error {err:.2e}"


def test_pretraining_layout_keeps_head_and_pooler_and_drops_nsp(tmp_path, minilm_dir):
  model = randomize(transformers.BertForPreTraining(tiny_hf_config()), seed=2)
  loaded = load_pretrained(save_with_tokenizer(model, tmp_path, minilm_dir))
  assert loaded.report.has_mlm_head and not loaded.report.initialized and not loaded.report.unexpected
  assert any(name.startswith("cls.seq_relationship") for name in loaded.report.ignored)
  np.testing.assert_array_equal(loaded.params["pooler"]["kernel"], model.bert.pooler.dense.weight.detach().numpy().T)
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(IDS, dtype=torch.long), attention_mask=torch.tensor(MASK)).prediction_logits
  assert np.abs(our_mlm_logits(loaded) - ref.numpy())[MASK.astype(bool)].max() < 1e-4


def test_layout_without_prefix_and_torch_bin_give_the_same_params(masked_lm, tmp_path):
  model, folder = masked_lm
  reference = load_pretrained(folder).params
  state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}

  no_prefix = tmp_path / "no_prefix"
  no_prefix.mkdir()
  shutil.copyfile(folder / "config.json", no_prefix / "config.json")
  save_file({k.removeprefix("bert."): v for k, v in state.items()}, str(no_prefix / "model.safetensors"))

  torch_bin = tmp_path / "torch_bin"
  torch_bin.mkdir()
  shutil.copyfile(folder / "config.json", torch_bin / "config.json")
  torch.save(model.state_dict(), torch_bin / "pytorch_model.bin")

  for variant in (no_prefix, torch_bin):
    loaded = load_pretrained(variant)
    assert loaded.report.has_mlm_head
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded.params, reference)


def test_bfloat16_weights_are_read_as_float32(tiny_dir, tmp_path):
  model = transformers.BertModel.from_pretrained(str(tiny_dir)).to(torch.bfloat16)
  model.save_pretrained(str(tmp_path))
  loaded = load_pretrained(tmp_path)
  kernel = loaded.params["encoder"]["layer_0"]["intermediate"]["kernel"]
  assert kernel.dtype == np.float32
  np.testing.assert_array_equal(kernel, model.encoder.layer[0].intermediate.dense.weight.detach().float().numpy().T)


def test_name_table_covers_every_tensor_of_transformers_bert():
  model = transformers.BertForPreTraining(tiny_hf_config(num_hidden_layers=2))
  ours = {hf for hf, _, _ in bert_names.name_table(2) + list(bert_names.POOLER_NAMES)}
  ours |= {hf for hf, _, _ in bert_names.MLM_HEAD_NAMES}
  theirs = {k.removeprefix("bert.") for k in model.state_dict()}
  unmapped = {k for k in theirs - ours if not bert_names.IGNORED_NAMES.match(k)}
  assert not unmapped and not ours - theirs


def _copy_folder_with_state(src, dst, edit):
  from safetensors.numpy import load_file
  dst.mkdir()
  shutil.copyfile(src / "config.json", dst / "config.json")
  state = load_file(str(src / "model.safetensors"))
  edit(state)
  save_file(state, str(dst / "model.safetensors"))
  return dst


def test_missing_tensor_is_named(tiny_dir, tmp_path):
  name = "encoder.layer.2.output.dense.weight"
  folder = _copy_folder_with_state(tiny_dir, tmp_path / "m", lambda s: s.pop(name))
  with pytest.raises(StarbucksError, match=name.replace(".", r"\.")):
    load_pretrained(folder)


def test_unexpected_tensor_is_reported_and_skipped(tiny_dir, tmp_path, caplog):
  folder = _copy_folder_with_state(tiny_dir, tmp_path / "u",
                                   lambda s: s.update({"classifier.weight": np.zeros((2, 32), np.float32)}))
  with caplog.at_level(logging.WARNING):
    loaded = load_pretrained(folder)
  assert loaded.report.unexpected == ["classifier.weight"]
  assert "classifier.weight" in caplog.text


def test_wrong_shape_is_named(tiny_dir, tmp_path):
  name = "embeddings.token_type_embeddings.weight"
  folder = _copy_folder_with_state(tiny_dir, tmp_path / "s", lambda s: s.update({name: np.zeros((3, 32), np.float32)}))
  with pytest.raises(StarbucksError, match="token_type_embeddings.*shape"):
    load_pretrained(folder)


def test_incomplete_mlm_head_is_refused(masked_lm, tmp_path):
  _, folder = masked_lm
  broken = _copy_folder_with_state(folder, tmp_path / "h", lambda s: s.pop("cls.predictions.transform.dense.bias"))
  with pytest.raises(StarbucksError, match="MLM head is incomplete"):
    load_pretrained(broken)


@pytest.mark.parametrize("problem, match", [
    ("no_weights", "no weights in"),
    ("not_bert", "model_type is 'gpt2'"),
    ("no_config", "no config.json"),
    ("missing_folder", "does not exist"),
])
def test_bad_folders_get_clear_errors(problem, match, tiny_dir, tmp_path):
  folder = tmp_path / "model"
  if problem != "missing_folder":
    folder.mkdir()
  if problem in ("no_weights", "not_bert"):
    config = json.loads((tiny_dir / "config.json").read_text())
    config["model_type"] = "gpt2" if problem == "not_bert" else "bert"
    (folder / "config.json").write_text(json.dumps(config))
    if problem == "not_bert":
      shutil.copyfile(tiny_dir / "model.safetensors", folder / "model.safetensors")
  with pytest.raises(StarbucksError, match=match):
    load_pretrained(folder)


def test_hub_name_resolves_through_the_hub_cache(tiny_dir, tmp_path, monkeypatch):
  """The hub code path, offline: a repo id is found in a Hugging Face cache laid out as the hub writes it."""
  import huggingface_hub.constants as hub_constants
  revision = "0123456789abcdef0123456789abcdef01234567"
  repo = tmp_path / "hub" / "models--starbucks-test--tiny-bert"
  shutil.copytree(tiny_dir, repo / "snapshots" / revision)
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text(revision)
  monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
  monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
  assert resolve_model_dir("starbucks-test/tiny-bert") == repo / "snapshots" / revision
  loaded = load_pretrained("starbucks-test/tiny-bert")
  assert loaded.config.num_hidden_layers == 4
  with pytest.raises(StarbucksError, match="fetching it from the Hugging Face hub failed"):
    resolve_model_dir("starbucks-test/not-in-cache")
