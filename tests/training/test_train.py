"""End-to-end training: a tiny random BERT on shipped SNLI triplets, checkpoints, resume, export."""

import json

import numpy as np
import pytest

from starbucks_jax.errors import StarbucksError
from tests.helpers import REPO, run_train, tiny_config

STSB_TRAIN = REPO / "data" / "quickstart" / "stsb_train.jsonl"


def test_training_writes_metrics_checkpoints_and_export(tiny_dir, tmp_path):
  summary = run_train(tiny_config(tiny_dir), tmp_path)
  from starbucks_jax.runtime.metrics import read_metrics
  rows = read_metrics(tmp_path)
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
  for row in rows:
    for key in ("loss", "lr", "examples_per_sec", "skipped_steps", "loss/n1_d8", "loss/n2_d16", "loss/n4_d32"):
      assert key in row and np.isfinite(row[key]), key
  assert rows[0]["lr"] == 0.0 and rows[1]["lr"] == pytest.approx(1e-3)  # one warmup step, then linear decay
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["3", "6"]
  assert any((tmp_path / "tensorboard").iterdir())
  export = summary["export"]
  assert (export / "model.safetensors").is_file() and (export / "modules.json").is_file()

  # The export is the trained model: transformers reproduces our encoder at layer 4.
  import torch
  import transformers
  from starbucks_jax.inference.encoder import Encoder
  model = transformers.AutoModel.from_pretrained(export).eval()
  ours = Encoder.from_pretrained(export, max_length=32)
  texts = ["a man plays a guitar", "two dogs run on the beach"]
  tok = transformers.AutoTokenizer.from_pretrained(export)
  enc = tok(texts, padding=True, return_tensors="pt")
  with torch.no_grad():
    hidden = model(**enc).last_hidden_state
  mask = enc["attention_mask"][..., None].float()
  theirs = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
  np.testing.assert_allclose(ours.encode(texts, pooling="mean"), theirs, atol=1e-4)

  # And it differs from the untrained model: training changed the weights.
  untrained = Encoder.from_pretrained(tiny_dir, max_length=32).encode(texts, pooling="mean")
  assert np.abs(untrained - theirs).max() > 1e-3


def test_export_command_from_workdir(tiny_dir, tmp_path):
  workdir = tmp_path / "run"
  run_train(tiny_config(tiny_dir, **{"export.enabled": False}), workdir)
  assert not (workdir / "export").exists()
  from starbucks_jax.cli.export import main
  main(["--workdir", str(workdir), "--step", "3", "--output", str(tmp_path / "at3"), "--num-layers", "2"])
  main(["--workdir", str(workdir), "--output", str(tmp_path / "last")])
  import transformers
  two = transformers.AutoConfig.from_pretrained(tmp_path / "at3")
  assert two.num_hidden_layers == 2
  from safetensors.numpy import load_file
  at3, last = load_file(tmp_path / "at3" / "model.safetensors"), load_file(tmp_path / "last" / "model.safetensors")
  key = "encoder.layer.0.attention.self.query.weight"
  assert not np.array_equal(at3[key], last[key])  # step 3 and step 6 are different checkpoints
  with pytest.raises(StarbucksError, match="no checkpoint at step 4"):
    main(["--workdir", str(workdir), "--step", "4", "--output", str(tmp_path / "x")])
  with pytest.raises(StarbucksError, match="not an empty folder"):
    main(["--workdir", str(workdir), "--output", str(tmp_path / "last")])


def test_separate_mode_trains_and_exports_a_cut_model(tiny_dir, tmp_path):
  summary = run_train(tiny_config(tiny_dir, **{"starbucks.mode": "separate", "starbucks.pairs": ((2, 16),),
                                               "starbucks.kl": "none", "num_steps": 2}), tmp_path)
  import transformers
  assert transformers.AutoConfig.from_pretrained(summary["export"]).num_hidden_layers == 2
  assert "loss/n2_d16" in summary["metrics"]


def test_cosent_on_scored_pairs(tiny_dir, tmp_path):
  summary = run_train(tiny_config(tiny_dir, **{"data.source": str(STSB_TRAIN), "starbucks.objective": "cosent",
                                               "num_steps": 2, "export.enabled": False}), tmp_path)
  assert np.isfinite(summary["metrics"]["loss"])


@pytest.mark.parametrize("changes, message", [
    ({"starbucks.pairs": ((2, 16), (1, 8))}, "sorted|increasing"),
    ({"starbucks.pairs": ((1, 8), (5, 16))}, "layer 5"),
    ({"starbucks.pairs": ((1, 8), (2, 33))}, "33"),
    ({"data.source": "/nonexistent/triplets.jsonl"}, "/nonexistent/triplets.jsonl"),
    ({"data.source": str(STSB_TRAIN), "data.kind": "triplets"}, "anchor|positive|negative"),
    ({"starbucks.objective": "cosent"}, "cosent"),
    ({"model.pooling": "max"}, "pooling"),
    ({"optimizer.lr": -1.0}, "lr"),
    ({"model.hidden_dropout": 1.5}, "dropout"),
    ({"model.name": "/nonexistent/model"}, "/nonexistent/model"),
])
def test_bad_config_fails_before_weights_load_or_anything_compiles(tiny_dir, tmp_path, monkeypatch, changes,
                                                                   message):
  from starbucks_jax.hf import load as pretrained
  from starbucks_jax.training import step as train_step

  def must_not_run(*args, **kwargs):
    raise AssertionError("reached weight loading / compilation with a bad config")

  monkeypatch.setattr(pretrained, "load_pretrained", must_not_run)
  monkeypatch.setattr(train_step, "init_state", must_not_run)
  with pytest.raises(StarbucksError, match=message):
    run_train(tiny_config(tiny_dir, **changes), tmp_path)
  assert not (tmp_path / "checkpoints").exists()


def test_workdir_of_another_run_is_refused(tiny_dir, tmp_path):
  run_train(tiny_config(tiny_dir, num_steps=3, **{"export.enabled": False}), tmp_path)
  saved = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
  with pytest.raises(StarbucksError, match="different config.*optimizer"):
    run_train(tiny_config(tiny_dir, num_steps=3, **{"optimizer.lr": 5e-4}), tmp_path)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == saved
  # A different mesh is allowed: a preempted run may resume on another slice.
  from starbucks_jax.runtime.workdir import check_run_config
  check_run_config(tmp_path, tiny_config(tiny_dir, num_steps=3, **{"export.enabled": False, "mesh.fsdp": 4})
                   .to_json_best_effort())


def _write_tevatron(path, queries=24, negatives=2):
  rows = []
  for i in range(queries):
    rows.append({"query_id": str(i), "query": f"what is topic number {i} about",
                 "positive_passages": [{"docid": f"p{i}", "title": f"topic {i}", "text": f"a passage about topic {i}"}],
                 "negative_passages": [{"docid": f"n{i}_{k}", "title": "", "text": f"unrelated text {i} {k}"}
                                       for k in range(negatives if i % 3 else 0)]})  # every third query has none
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def test_tevatron_groups_dot_product_cls_two_forward_passes(tiny_dir, tmp_path, caplog):
  source = _write_tevatron(tmp_path / "groups.jsonl")
  config = tiny_config(tiny_dir, **{"data.source": str(source), "data.train_group_size": 4, "data.same_length": False,
                                    "data.query_max_length": 16, "data.passage_max_length": 32,
                                    "starbucks.similarity": "dot", "model.pooling": "cls", "grad_accum_steps": 2,
                                    "num_steps": 3, "export.enabled": False})
  with caplog.at_level("WARNING", logger="starbucks_jax"):
    summary = run_train(config, tmp_path / "run")
  assert any("fewer than 3 hard negatives" in r.getMessage() for r in caplog.records)
  assert np.isfinite(summary["metrics"]["loss"]) and "loss/n4_d32" in summary["metrics"]


def test_one_and_two_forward_passes_agree():
  """Queries and passages padded to one length share a forward pass; padded apart they get two."""
  import jax
  from starbucks_jax.losses.srl_spec import SrlLossSpec
  from starbucks_jax.model import bert
  from starbucks_jax.model.bert import BertConfig
  from starbucks_jax.training.tasks.srl import SrlStepSettings, compute_loss
  config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=24, max_position_embeddings=32, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0)
  spec = SrlLossSpec(mode="starbucks", num_model_layers=2, hidden_size=16, pairs=((1, 8), (2, 16)), group_size=2)
  settings = SrlStepSettings(model_config=config, spec=spec)
  params = bert.init_params(config, jax.random.key(0))
  rng = np.random.default_rng(0)
  ids = lambda rows: rng.integers(5, 50, (rows, 8)).astype(np.int32)
  same = {"query_input_ids": ids(4), "query_attention_mask": np.ones((4, 8), np.int32),
          "passage_input_ids": ids(8), "passage_attention_mask": np.ones((8, 8), np.int32)}
  apart = dict(same, query_input_ids=np.pad(same["query_input_ids"], ((0, 0), (0, 4))),
               query_attention_mask=np.pad(same["query_attention_mask"], ((0, 0), (0, 4))))
  one = compute_loss(params, same, jax.random.key(1), settings)
  two = compute_loss(params, apart, jax.random.key(1), settings)
  for key in one[1]:
    assert float(two[1][key]) == pytest.approx(float(one[1][key]), rel=1e-5), key


def test_command_line_errors_name_the_problem(tmp_path):
  from starbucks_jax.cli.train import main
  with pytest.raises(StarbucksError, match="--config is required"):
    main(["--workdir", str(tmp_path)])
  with pytest.raises(StarbucksError, match="config file .*missing.py does not exist"):
    main(["--config", str(tmp_path / "missing.py"), "--workdir", str(tmp_path)])
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config(:\n")
  with pytest.raises(StarbucksError, match="bad command line"):
    main(["--config", str(broken), "--workdir", str(tmp_path)])
  with pytest.raises(StarbucksError, match="unknown config key optimizer.no_such_key"):
    main(["--config", str(REPO / "configs" / "quickstart.py"), "--workdir", str(tmp_path),
          "--config.optimizer.no_such_key=1"])
  with pytest.raises(StarbucksError, match="--workdir is required"):
    main(["--config", str(REPO / "configs" / "quickstart.py")])


def test_evaluation_during_training_goes_into_metrics(tiny_dir, tmp_path):
  stsb_test = REPO / "data" / "quickstart" / "stsb_test.jsonl"
  run_train(tiny_config(tiny_dir, **{"eval.sts": (str(stsb_test),), "eval.every_steps": 3,
                                     "export.enabled": False}), tmp_path)
  from starbucks_jax.runtime.metrics import read_metrics
  rows = {r["step"]: r for r in read_metrics(tmp_path)}
  for step in (3, 6):
    for n, d in ((1, 8), (2, 16), (4, 32)):
      value = rows[step][f"eval/stsb_test/n{n}_d{d}/spearman"]
      assert -100 <= value <= 100
  assert not any(k.startswith("eval/") for k in rows[2])
  with pytest.raises(StarbucksError, match="missing.jsonl"):
    run_train(tiny_config(tiny_dir, **{"eval.sts": (str(tmp_path / "missing.jsonl"),)}), tmp_path / "other")
