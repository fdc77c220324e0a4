"""SMAE pre-training end to end: a tiny random BERT (no MLM head) on shipped text, checkpoints, exact resume,
the BertForMaskedLM export, SMAE -> SRL through `init_from`, and errors raised before anything compiles."""

import json
import shutil

import numpy as np
import pytest

from starbucks_jax.errors import StarbucksError

from tests.helpers import REPO, run_train, tiny_config, tiny_run

TEXT = REPO / "data" / "quickstart" / "pretrain_text.jsonl"
PAIRS = ((1, 8), (2, 16), (4, 32))


def smae_config(model_dir, **changes):
  from starbucks_jax.training.defaults import smae_base_config
  c = smae_base_config()
  c.data.source = str(TEXT)
  c.data.max_length = 32
  c.smae.pairs = PAIRS
  return tiny_run(c, model_dir, changes)


@pytest.fixture(scope="module")
def smae_run(tiny_dir, tmp_path_factory):
  """One finished 6-step SMAE run of the tiny model (checkpoints at 3 and 6, export at the end)."""
  workdir = tmp_path_factory.mktemp("smae") / "run"
  summary = run_train(smae_config(tiny_dir), workdir)
  return workdir, summary


def test_smae_run_logs_every_pair_and_exports_a_masked_lm(smae_run, tiny_dir):
  workdir, summary = smae_run
  from starbucks_jax.runtime.metrics import read_metrics
  rows = read_metrics(workdir)
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
  for row in rows:
    assert row["dropped_labels"] == 0 and row["skipped_steps"] == 0
    for n, d in PAIRS:
      for branch in ("mlm", "mae"):
        assert np.isfinite(row[f"{branch}/n{n}_d{d}"]), (branch, n, d)
  settings = json.loads((workdir / "model" / "starbucks.json").read_text())
  assert settings["mlm_head"] is True

  from starbucks_jax.runtime.checkpoints import restore_params
  params, step = restore_params(workdir)
  assert step == 6 and set(params) == {"encoder", "pooler", "mlm_head", "mae_decoder"}

  # The export is a BertForMaskedLM that transformers loads whole and that predicts what our head does.
  import torch
  import transformers
  from starbucks_jax.model import bert
  from starbucks_jax.model.registry import read_config
  from tests.helpers import mlm_logits
  export = summary["export"]
  assert json.loads((export / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
  model, info = transformers.BertForMaskedLM.from_pretrained(export, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
  tokenizer = transformers.AutoTokenizer.from_pretrained(export)
  enc = tokenizer(["a man plays a [MASK] guitar", "the cat sat on the mat"], padding=True, return_tensors="np")
  config = read_config(workdir / "model" / "config.json")
  hidden = bert.apply(params, enc["input_ids"], enc["attention_mask"], config=config).hidden_states[-1]
  ours = np.asarray(mlm_logits(params["mlm_head"], params["encoder"]["embeddings"]["word_embeddings"]["embedding"],
                               hidden, layer_norm_eps=config.layer_norm_eps))
  with torch.no_grad():
    theirs = model.eval()(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)


def test_resumed_smae_run_is_bit_identical(smae_run, tiny_dir, tmp_path):
  """Stop after the checkpoint at step 3 (drop step 6's), run the same command again: same final weights."""
  workdir, _ = smae_run
  resumed = tmp_path / "resumed"
  shutil.copytree(workdir, resumed)
  shutil.rmtree(resumed / "checkpoints" / "6")
  shutil.rmtree(resumed / "export")
  run_train(smae_config(tiny_dir), resumed)
  from starbucks_jax.runtime.checkpoints import restore_params
  from starbucks_jax.runtime.metrics import read_metrics
  import jax
  a, _ = restore_params(workdir, 6)
  b, _ = restore_params(resumed, 6)
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  first, second = read_metrics(workdir), read_metrics(resumed)
  assert [r["step"] for r in second] == [1, 2, 3, 4, 5, 6]
  for r1, r2 in zip(first, second):
    assert {k: v for k, v in r1.items() if k != "examples_per_sec"} == \
        {k: v for k, v in r2.items() if k != "examples_per_sec"}


def test_srl_starts_from_an_smae_workdir_or_its_export(smae_run, tiny_dir, tmp_path):
  import jax
  from starbucks_jax.runtime.checkpoints import restore_params
  from starbucks_jax.training import tasks
  workdir, summary = smae_run
  pretrained, _ = restore_params(workdir)
  for source in (workdir, summary["export"]):
    config = tiny_config(tiny_dir, **{"init_from": str(source), "model.name": "/nonexistent/ignored"})
    setup = tasks.prepare(tasks.read_config(config))
    params = setup.load_params()
    assert set(params) == {"encoder", "pooler"}  # the MLM head and the MAE decoder stay behind
    assert all(np.array_equal(x, y) for x, y in
               zip(jax.tree.leaves(params["encoder"]), jax.tree.leaves(pretrained["encoder"])))
  result = run_train(tiny_config(tiny_dir, **{"init_from": str(workdir), "num_steps": 2, "export.enabled": False}),
                     tmp_path / "srl")
  assert np.isfinite(result["metrics"]["loss"]) and "loss/n4_d32" in result["metrics"]


def test_init_from_a_workdir_at_a_step(smae_run, tiny_dir):
  import jax
  from starbucks_jax.runtime.checkpoints import restore_params
  from starbucks_jax.training import tasks
  workdir, _ = smae_run
  at_3, _ = restore_params(workdir, 3)
  params = tasks.prepare(tasks.read_config(tiny_config(tiny_dir, init_from=str(workdir), init_from_step=3))).load_params()
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(params["encoder"]), jax.tree.leaves(at_3["encoder"])))
  with pytest.raises(StarbucksError, match="no checkpoint at step 4; saved steps: 3, 6"):
    tasks.prepare(tasks.read_config(tiny_config(tiny_dir, init_from=str(workdir), init_from_step=4)))
  with pytest.raises(StarbucksError, match="init_from_step needs init_from"):
    tasks.read_config(tiny_config(tiny_dir, init_from_step=3))


def test_smae_continues_from_an_smae_workdir_with_its_decoder(smae_run, tiny_dir):
  import jax
  from starbucks_jax.runtime.checkpoints import restore_params
  from starbucks_jax.training import tasks
  workdir, _ = smae_run
  params = tasks.prepare(tasks.read_config(smae_config(tiny_dir, init_from=str(workdir)))).load_params()
  saved, _ = restore_params(workdir)
  for part in ("encoder", "mlm_head", "mae_decoder"):
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(params[part]), jax.tree.leaves(saved[part])))


def test_mlm_modes_train_without_a_decoder(tiny_dir, tmp_path):
  for mode, pairs in (("mlm2d", PAIRS), ("mlm", PAIRS)):
    summary = run_train(smae_config(tiny_dir, **{"smae.mode": mode, "smae.pairs": pairs, "num_steps": 2,
                                                 "export.enabled": False}), tmp_path / mode)
    metrics = summary["metrics"]
    assert not any(k.startswith("mae/") for k in metrics)
    expected = ["mlm/n4_d32"] if mode == "mlm" else [f"mlm/n{n}_d{d}" for n, d in PAIRS]
    assert sorted(k for k in metrics if k.startswith("mlm/")) == sorted(expected)
    from starbucks_jax.runtime.checkpoints import restore_params
    params, _ = restore_params(tmp_path / mode)
    assert "mae_decoder" not in params


@pytest.mark.parametrize("changes, message", [
    ({"smae.pairs": ((5, 8),)}, r"smae pair \(5, 8\) is beyond the model"),
    ({"smae.pairs": ((2, 33),)}, r"beyond the model"),
    ({"smae.mode": "electra"}, "smae.mode must be one of"),
    ({"data.encoder_mask_rate": 0.5, "data.decoder_mask_rate": 0.4}, "rate"),
    ({"data.max_length": 128}, r"exceeds the model's 64 positions \(max_position_embeddings 64\)"),
    ({"data.source": "/no/such/text.jsonl"}, "/no/such/text.jsonl does not exist"),
    ({"data.text_column": "body"}, "body"),
    ({"init_from": "/no/such/workdir"}, "/no/such/workdir does not exist"),
    ({"task": "electra"}, "task must be one of"),
])
def test_bad_smae_input_fails_before_anything_compiles(tiny_dir, tmp_path, changes, message, monkeypatch):
  import jax
  monkeypatch.setattr(jax, "jit", lambda *a, **k: pytest.fail("compiled before the error"))
  with pytest.raises(StarbucksError, match=message):
    run_train(smae_config(tiny_dir, **changes), tmp_path / "run")
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_init_from_a_folder_that_is_no_model_is_named(tiny_dir, tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(StarbucksError, match="neither a training workdir .* nor a Hugging Face folder"):
    run_train(smae_config(tiny_dir, init_from=str(tmp_path / "empty")), tmp_path / "run")
  (tmp_path / "nockpt" / "model").mkdir(parents=True)
  shutil.copyfile(tiny_dir / "config.json", tmp_path / "nockpt" / "model" / "config.json")
  with pytest.raises(StarbucksError, match="workdir without checkpoints"):
    run_train(smae_config(tiny_dir, init_from=str(tmp_path / "nockpt")), tmp_path / "run")


def test_a_stream_runs_an_epoch_of_its_reported_size_or_needs_num_steps(tiny_dir, tmp_path, monkeypatch):
  streamed = {"data.streaming": True, "data.max_examples": 16, "num_steps": None, "export.enabled": False}
  summary = run_train(smae_config(tiny_dir, **streamed), tmp_path / "run")
  assert summary["step"] == 2  # 16 streamed texts, 8 per step
  from starbucks_jax.data import text_stream
  monkeypatch.setattr(text_stream, "_reported_size", lambda dataset, split: None)
  with pytest.raises(StarbucksError, match="set --config.num_steps"):
    run_train(smae_config(tiny_dir, **dict(streamed, **{"data.max_examples": None})), tmp_path / "other")
