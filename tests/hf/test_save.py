"""Export: transformers and sentence-transformers load what we write, with identical weights and outputs."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

from starbucks_jax.hf.load import load_pretrained
from starbucks_jax.hf.save import save_pretrained
from starbucks_jax.inference.encoder import Encoder
from tests.helpers import REPO, randomize, save_with_tokenizer, tiny_hf_config

TEXTS = ["A man is playing a guitar.", "A woman is slicing an onion with a knife on a wooden board.", "Dogs run."]


@pytest.fixture(scope="module")
def minilm(minilm_dir):
  return load_pretrained(minilm_dir)


def load_without_warnings(cls, folder):
  model, info = cls.from_pretrained(str(folder), output_loading_info=True)
  assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
  return model.eval()


def test_round_trip_gives_identical_weights(minilm, minilm_dir, tmp_path):
  out = save_pretrained(tmp_path / "export", minilm.params, minilm.config, tokenizer_dir=minilm_dir,
                        pooling="mean", max_seq_length=256)
  exported = load_without_warnings(transformers.AutoModel, out).state_dict()
  original = transformers.AutoModel.from_pretrained(str(minilm_dir)).state_dict()
  assert exported.keys() == original.keys()
  for name, tensor in original.items():
    assert torch.equal(exported[name], tensor), name


def test_first_n_layers_export_is_a_standalone_model(minilm, minilm_dir, tmp_path):
  out = save_pretrained(tmp_path / "three", minilm.params, minilm.config, tokenizer_dir=minilm_dir, num_layers=3)
  small = load_without_warnings(transformers.AutoModel, out)
  assert small.config.num_hidden_layers == 3
  full = transformers.AutoModel.from_pretrained(str(minilm_dir)).eval()
  batch = transformers.AutoTokenizer.from_pretrained(str(out))(TEXTS, padding=True, return_tensors="pt")
  with torch.no_grad():
    want = full(**batch, output_hidden_states=True).hidden_states[3]
    got = small(**batch).last_hidden_state
  assert torch.equal(got, want) or torch.allclose(got, want, atol=1e-6, rtol=0)
  # And our loader reads the small export back as a 3-layer model.
  assert load_pretrained(out).config.num_hidden_layers == 3


@pytest.mark.parametrize("dim", [64, 384])
def test_sentence_transformers_loads_the_export_and_agrees(minilm, minilm_dir, tmp_path, dim):
  from sentence_transformers import SentenceTransformer
  out = save_pretrained(tmp_path / "st", minilm.params, minilm.config, tokenizer_dir=minilm_dir, pooling="mean",
                        max_seq_length=256)
  st = SentenceTransformer(str(out), device="cpu", truncate_dim=dim)
  theirs = st.encode(TEXTS, convert_to_numpy=True)
  ours = Encoder.from_pretrained(out).encode(TEXTS, dim=dim)
  assert theirs.shape == ours.shape == (len(TEXTS), dim)
  assert np.abs(theirs - ours).max() < 1e-5


def test_masked_lm_export_loads_with_its_head(tmp_path, minilm_dir):
  model = randomize(transformers.BertForMaskedLM(tiny_hf_config()), seed=3)
  loaded = load_pretrained(save_with_tokenizer(model, tmp_path / "src", minilm_dir))
  out = save_pretrained(tmp_path / "mlm", loaded.params, loaded.config, tokenizer_dir=minilm_dir,
                        with_mlm_head=True)
  reloaded = load_without_warnings(transformers.AutoModelForMaskedLM, out)
  ids = torch.tensor([[101, 7592, 103, 2003, 102]])
  with torch.no_grad():
    assert torch.equal(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_export_runs_without_torch(minilm_dir, tmp_path):
  """Export writes safetensors from numpy: it works with torch made unimportable."""
  script = f"""
import sys
sys.modules["torch"] = None
from starbucks_jax.hf.load import load_pretrained
from starbucks_jax.hf.save import save_pretrained
m = load_pretrained({str(minilm_dir)!r})
save_pretrained({str(tmp_path / 'no_torch')!r}, m.params, m.config, tokenizer_dir={str(minilm_dir)!r}, num_layers=2)
"""
  result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  assert (tmp_path / "no_torch" / "model.safetensors").is_file()
  assert load_pretrained(tmp_path / "no_torch").config.num_hidden_layers == 2


def run_export(*args):
  return subprocess.run([sys.executable, "-m", "starbucks_jax.export", *args], cwd=REPO, capture_output=True,
                        text=True)


def test_export_command_cuts_layers_and_protects_existing_folders(minilm_dir, tmp_path):
  out = tmp_path / "two_layers"
  result = run_export("--model", str(minilm_dir), "--output", str(out), "--num-layers", "2")
  assert result.returncode == 0, result.stderr
  exported = load_pretrained(out)
  assert exported.config.num_hidden_layers == 2 and exported.pooling == "mean" and exported.max_seq_length == 256
  before = (out / "model.safetensors").read_bytes()
  again = run_export("--model", str(minilm_dir), "--output", str(out), "--num-layers", "1")
  assert again.returncode == 2 and "not an empty folder" in again.stderr and "Traceback" not in again.stderr
  assert (out / "model.safetensors").read_bytes() == before  # nothing already saved is lost
  too_many = run_export("--model", str(minilm_dir), "--output", str(tmp_path / "x"), "--num-layers", "7")
  assert too_many.returncode == 2 and "--num-layers 7 is outside 1..6" in too_many.stderr
  no_head = run_export("--model", str(minilm_dir), "--output", str(tmp_path / "y"), "--with-mlm-head")
  assert no_head.returncode == 2 and "has no MLM head" in no_head.stderr


def test_a_model_initialised_here_exports_and_matches_transformers(tmp_path, minilm_dir):
  """A from-scratch model (as pre-training starts) exports, and transformers computes what we compute."""
  import jax
  from starbucks_jax.model import bert
  from starbucks_jax.model.bert import BertConfig
  from starbucks_jax.errors import StarbucksError
  config = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                      max_position_embeddings=32)
  params = bert.init_params(config, jax.random.key(7), with_mlm_head=True)
  out = save_pretrained(tmp_path / "scratch", params, config, tokenizer_dir=minilm_dir)
  ids = np.array([[101, 7592, 2088, 102, 0]], np.int32)
  ours = bert.apply(params, ids, (ids > 0).astype(np.int32), config=config).hidden_states[-1]
  with torch.no_grad():
    theirs = load_without_warnings(transformers.AutoModel, out)(
        input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(ids > 0).long()).last_hidden_state
  assert np.abs(np.asarray(ours)[0, :4] - theirs.numpy()[0, :4]).max() < 1e-4
  with pytest.raises(StarbucksError, match="lacks pooler/kernel"):
    save_pretrained(tmp_path / "no_pooler", {"encoder": params["encoder"]}, config, tokenizer_dir=minilm_dir)
