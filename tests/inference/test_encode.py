"""Encoding: the Encoder API against transformers, bucketing, packing, and the command line with good and bad input."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

from starbucks_jax.errors import StarbucksError
from starbucks_jax.inference import encoder as encoder_lib
from starbucks_jax.inference.encoder import Encoder, bucket_lengths
from tests.helpers import REPO


@pytest.fixture(scope="module")
def minilm_encoder(minilm_dir):
  return Encoder.from_pretrained(minilm_dir)


def transformers_mean_pooled(model_dir, texts, max_length=256):
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
  model = transformers.BertModel.from_pretrained(str(model_dir)).eval()
  batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
  with torch.no_grad():
    hidden = model(**batch, output_hidden_states=True).hidden_states
  mask = batch["attention_mask"][..., None].float()
  return [((h * mask).sum(1) / mask.sum(1)).numpy() for h in hidden]


def test_encode_matches_transformers_at_full_size(minilm_encoder, minilm_dir, sentences):
  assert minilm_encoder.default_pooling == "mean" and minilm_encoder.max_length == 256
  ours = minilm_encoder.encode(sentences, layer=6, dim=384, pooling="mean", batch_size=16)
  want = transformers_mean_pooled(minilm_dir, sentences)[6]
  assert ours.shape == (len(sentences), 384) and ours.dtype == np.float32
  assert np.abs(ours - want).max() < 1e-5


def test_smaller_sizes_and_one_pass_for_many_layers(minilm_encoder, minilm_dir, sentences):
  texts = sentences[:24]
  want = transformers_mean_pooled(minilm_dir, texts)
  cut = want[3][:, :64] / np.linalg.norm(want[3][:, :64], axis=1, keepdims=True)
  got = minilm_encoder.encode(texts, layer=3, dim=64, normalize=True, batch_size=8)
  assert np.abs(got - cut).max() < 1e-5
  per_layer = minilm_encoder.encode_layers(texts, layers=(2, 5), batch_size=8)
  for n in (2, 5):
    assert np.abs(per_layer[n] - want[n]).max() < 1e-5


def test_padding_buckets_bound_the_number_of_compiled_shapes(minilm_encoder):
  assert bucket_lengths(256) == [12, 16, 24, 32, 48, 64, 96, 128, 192, 256]
  assert bucket_lengths(100) == [12, 16, 24, 32, 48, 64, 96, 100]
  assert bucket_lengths(16) == [12, 16] and bucket_lengths(12) == [12] and bucket_lengths(10) == [10]
  texts = [" ".join(["word"] * n) for n in (1, 3, 5, 20, 40, 41, 60, 90, 2, 7)]
  encoder_lib.pooled_layers.clear_cache()
  minilm_encoder.encode(texts, batch_size=3, pooling="cls", layer=1)
  # 10 texts (3 to 92 tokens) in 4 batches of 3 fall into the buckets 96, 48, 12, 12: three shapes.
  assert encoder_lib.pooled_layers._cache_size() == 3


@pytest.fixture(scope="module")
def tiny_encoder(tiny_dir):
  return Encoder.from_pretrained(tiny_dir)


def test_default_pooling_is_cls_without_sentence_transformers_files(tiny_encoder):
  assert tiny_encoder.default_pooling == "cls"


def test_packed_encoding_gives_the_padded_vectors_from_one_compiled_shape(tiny_encoder, sentences):
  """Texts of 2 to 64 tokens (the row length, texts cut there), more than one forward pass holds: every
  text's CLS and mean vectors at every layer asked for equal the padded path's, the passes share one
  shape, and the last pass is padded with an empty text."""
  texts = sentences + ["", "a", " ".join(["word"] * 100)]
  lengths = [len(x) for x in tiny_encoder.tokenizer(texts, truncation=True, max_length=64)["input_ids"]]
  assert min(lengths) == 2 and max(lengths) == tiny_encoder.max_length == 64
  passes, rows = encoder_lib.packed_passes(lengths, 64, 4 * 64)  # batch_size 4: 256 tokens a pass
  assert len(passes) > 2 and rows <= 4 and len(passes[-1]) == len(passes[0]) - 1
  assert sorted(np.concatenate(passes)) == list(range(len(texts)))
  for pooling in ("cls", "mean"):
    padded = tiny_encoder.encode_layers(texts, layers=(1, 2, 4), pooling=pooling, batch_size=128)  # one shape
    encoder_lib.pooled_layers.clear_cache()
    packed = tiny_encoder.encode_layers(texts, layers=(4, 2, 1), pooling=pooling, batch_size=4, packing=True)
    assert encoder_lib.pooled_layers._cache_size() == 1
    for n in (1, 2, 4):
      assert np.abs(packed[n] - padded[n]).max() < 1e-5, (pooling, n)
      assert np.abs(padded[n]).max() > 0.1  # vectors that a mixed-up text would change


def test_packed_encoding_refuses_a_text_without_tokens(tiny_encoder):
  no_special_tokens = lambda texts, **kwargs: {"input_ids": [[7592] if text else [] for text in texts]}
  encoder = Encoder(tiny_encoder.config, tiny_encoder.params, no_special_tokens)
  with pytest.raises(StarbucksError, match=r"texts\[1\] has no tokens; packed encoding needs at least one"):
    encoder.encode_layers(["hello", ""], layers=(1,), packing=True)


def test_progress_bar_on_long_input(minilm_encoder, capsys):
  minilm_encoder.encode(["a b c"] * 16, batch_size=2, layer=1)
  assert "encoding" in capsys.readouterr().err
  minilm_encoder.encode(["a b c"] * 4, batch_size=2, layer=1)
  assert "encoding" not in capsys.readouterr().err


def run_encode(*args):
  return subprocess.run([sys.executable, "-m", "starbucks_jax.encode", *args], cwd=REPO, capture_output=True,
                        text=True)


@pytest.mark.parametrize("packing", [[], ["--packing"]])
def test_cli_writes_an_array(minilm_dir, tmp_path, sentences, packing):
  (tmp_path / "texts.txt").write_text("\n".join(sentences[:10]) + "\n")
  result = run_encode("--model", str(minilm_dir), "--layer", "4", "--dim", "128", "--pooling", "mean",
                      "--normalize", "--input", str(tmp_path / "texts.txt"), "--output", str(tmp_path / "e.npy"),
                      *packing)
  assert result.returncode == 0, result.stderr
  assert ("packed encoding: 10 texts, forward passes of" in result.stderr) == bool(packing), result.stderr
  vectors = np.load(tmp_path / "e.npy")
  assert vectors.shape == (10, 128) and vectors.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, minilm_dir):
  root = tmp_path_factory.mktemp("bad")
  (root / "texts.txt").write_text("one text\n")
  (root / "empty.txt").write_text("")
  (root / "no_weights").mkdir()
  shutil.copyfile(minilm_dir / "config.json", root / "no_weights" / "config.json")
  (root / "not_bert").mkdir()
  config = json.loads((minilm_dir / "config.json").read_text())
  (root / "not_bert" / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
  return root


@pytest.mark.parametrize("case, extra, message", [
    ("no weights", ["--model", "{root}/no_weights"], "no weights in"),
    ("not bert", ["--model", "{root}/not_bert"], "model_type is 'gpt2', but only 'bert', 'gemma3_text', 'modernbert', 'qwen3', 'roberta', 'xlm-roberta' models are supported"),
    ("layer 0", ["--layer", "0"], "layer 0 is outside 1..6"),
    ("layer above", ["--layer", "7"], "layer 7 is outside 1..6"),
    ("dim above", ["--dim", "385"], "dim 385 is outside 1..384"),
    ("empty input", ["--input", "{root}/empty.txt"], "is empty"),
    ("missing input", ["--input", "{root}/nope.txt"], "does not exist"),
    ("missing model", ["--model", "{root}/nowhere"], "does not exist"),
])
def test_cli_bad_input_gets_one_line_error(case, extra, message, bad_inputs, minilm_dir):
  args = {"--model": str(minilm_dir), "--input": str(bad_inputs / "texts.txt"), "--output": str(bad_inputs / "o.npy")}
  flags = []
  for i in range(0, len(extra), 2):
    args.pop(extra[i], None)
    flags += [extra[i], extra[i + 1].format(root=bad_inputs)]
  for key, value in args.items():
    flags += [key, value]
  result = run_encode(*flags)
  assert result.returncode == 2, (case, result.stderr)
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (case, result.stderr)
  assert "Traceback" not in result.stderr and not (bad_inputs / "o.npy").exists()
