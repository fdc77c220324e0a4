"""`--dry_run` without weights: its parameters are shapes alone (`tasks/base.py` `start_params`), so a model
folder holding only config.json and a tokenizer serves (the issue's 8B Qwen3 costs no memory;
bench/qwen3_dry_run.py). Here a tiny Qwen3 folder without weights: the dry run reports the exact bytes of
its parameters, full fine-tuning and LoRA (under GradCache); SMAE's MLM head and MAE decoder on a tiny BERT
folder without weights; a real run from such a folder still stops at the missing weights."""

import json
import math
import re
import shutil

import pytest

from starbucks_jax.errors import StarbucksError
from tests.helpers import REPO, TOKENIZER_FILES, run_train, tiny_config, tiny_hf_config

RANK = 4


def config_only(folder, minilm_dir, hf_config: dict):
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps(hf_config))
  for name in TOKENIZER_FILES:
    shutil.copyfile(minilm_dir / name, folder / name)
  return folder


@pytest.fixture(scope="module")
def qwen3_config():
  from starbucks_jax.model.qwen3 import Qwen3Config
  return Qwen3Config(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, max_position_embeddings=64)


@pytest.fixture(scope="module")
def qwen3_folder(tmp_path_factory, minilm_dir, qwen3_config):
  """config.json (real-looking: Qwen3ForCausalLM, tied embeddings) and MiniLM's tokenizer; no weights."""
  hf = {**qwen3_config.to_hf_dict("Qwen3ForCausalLM"), "tie_word_embeddings": True}
  return config_only(tmp_path_factory.mktemp("qwen3") / "config_only", minilm_dir, hf)


def qwen3_run(folder, **changes):
  return tiny_config(folder, batch_size=16, **{"model.pooling": "last", "eval.sts": (), **changes})


def test_dry_run_needs_no_weights(qwen3_folder, qwen3_config, capsys):
  from starbucks_jax.model.registry import family_of
  from starbucks_jax.training.dry_run import dry_run
  shapes = family_of(qwen3_config).hf_names.expected_shapes(qwen3_config)
  model_bytes = 4 * sum(math.prod(shape) for shape in shapes.values())
  full = dry_run(qwen3_run(qwen3_folder))
  assert full["parameters_bytes"] == full["trainable_bytes"] == model_bytes  # float32, one device
  assert full["optimizer_state_bytes"] >= 2 * model_bytes and full["activations_bytes"] > 0
  lora = dry_run(qwen3_run(qwen3_folder, **{"lora.rank": RANK, "grad_cache.query_chunk": 8}))
  adapters = 4 * RANK * sum(sum(shapes[path]) for path in shapes if re.search(r"self_attn/[qkvo]_proj/kernel$", path))
  assert lora["trainable_bytes"] == adapters and lora["parameters_bytes"] == model_bytes + adapters
  assert "LoRA adapters, rank 4" in capsys.readouterr().out


def test_smae_dry_run_needs_no_weights(tmp_path, minilm_dir):
  from starbucks_jax.training.defaults import smae_base_config
  from starbucks_jax.training.dry_run import dry_run
  from tests.helpers import tiny_run
  folder = config_only(tmp_path / "bert", minilm_dir, tiny_hf_config().to_dict())
  config = tiny_run(smae_base_config(), folder, {"data.source": str(REPO / "data" / "quickstart" / "pretrain_text.jsonl"),
                                                 "data.max_length": 32, "smae.pairs": ((2, 16), (4, 32)),
                                                 "eval.sts": ()})
  report = dry_run(config)  # the MLM head comes with the shapes; the MAE decoder is layer 1's shape
  assert report["trainable_bytes"] == report["parameters_bytes"] > 0 and report["activations_bytes"] > 0


def test_a_real_run_without_weights_stops_at_them(qwen3_folder, tmp_path):
  with pytest.raises(StarbucksError, match=re.escape(f"no weights in {qwen3_folder}: expected one of "
                                                     "model.safetensors")):
    run_train(qwen3_run(qwen3_folder), tmp_path / "run")
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_mixtures_dry_run_compiles_each_sources_step(tiny_dir):
  """Each source of a mixture compiles its own step (its group size, its lengths); the report is the largest
  and names it: the SciFact groups of 3 passages at 64 tokens outweigh SNLI's triplets at 32."""
  from starbucks_jax.training.dry_run import dry_run
  config = tiny_config(tiny_dir)
  config.data.source = ""
  config.data.max_examples = None
  config.data.mixture = {
      "snli": dict(source=str(REPO / "data" / "quickstart" / "snli_triplets.jsonl"), max_examples=16),
      "scifact": dict(source=str(REPO / "data" / "quickstart" / "scifact_train.jsonl"), train_group_size=3,
                      passage_max_length=64, max_examples=16)}
  report = dry_run(config)
  by_source = report["total_bytes_by_source"]
  assert set(by_source) == {"snli", "scifact"} and report["source"] == "scifact"
  assert by_source["scifact"] > by_source["snli"] > 0 and report["total_bytes"] == by_source["scifact"]
