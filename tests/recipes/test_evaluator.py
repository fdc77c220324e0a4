"""The evaluator recipe, for real: `match.py` (one file) registered with one line gets its command-line flag,
its training config key and its place in the results, table, heatmaps and metrics."""

import json

import pytest

from tests.helpers import REPO, run_train, tiny_config
from tests.recipes import match


@pytest.fixture
def registered():
  from starbucks_jax.evaluation import registry
  registry.register(match.EVALUATOR)  # the touch list's one registry line
  yield
  del registry.EVALUATORS["match"]  # registered for this test only


@pytest.fixture(scope="module")
def match_file(tmp_path_factory):
  rows = [json.loads(line) for line in (REPO / "data" / "quickstart" / "snli_triplets.jsonl").read_text().splitlines()[:40]]
  path = tmp_path_factory.mktemp("match") / "snli_match.jsonl"
  path.write_text("".join(json.dumps({"query": r["anchor"], "positive": r["positive"]}) + "\n" for r in rows))
  return path


def test_the_command_takes_the_new_flag(registered, match_file, minilm_dir, tmp_path, capsys):
  from starbucks_jax.cli.evaluate import main
  output = tmp_path / "results.json"
  main(["--model", str(minilm_dir), "--match", str(match_file), "--pairs", "1:16,6:384", "--output", str(output)])
  results = json.loads(output.read_text())
  accuracy = {key: m["accuracy"] for key, m in results["match"]["snli_match"].items()}
  assert list(accuracy) == ["1,16", "6,384"]
  assert accuracy["6,384"] > 0.8 and accuracy["6,384"] > accuracy["1,16"]  # the full model matches SNLI pairs
  assert "| snli_match / accuracy |" in capsys.readouterr().out
  assert (tmp_path / "results_snli_match.png").is_file()


def test_training_evaluates_with_it(registered, match_file, tiny_dir, tmp_path):
  from starbucks_jax.runtime.metrics import read_metrics
  run_train(tiny_config(tiny_dir, **{"eval.match": (str(match_file),), "num_steps": 2, "export.enabled": False}),
            tmp_path / "run")
  last = read_metrics(tmp_path / "run")[-1]
  values = [last[f"eval/snli_match/n{n}_d{d}/accuracy"] for n, d in ((1, 8), (2, 16), (4, 32))]
  assert all(0 <= v <= 1 for v in values)


def test_unregistered_flag_and_key_are_refused(match_file, tiny_dir, tmp_path):
  from starbucks_jax.cli.evaluate import main
  from starbucks_jax.errors import StarbucksError
  with pytest.raises(SystemExit):  # argparse: unrecognized arguments: --match
    main(["--model", str(tiny_dir), "--match", str(match_file), "--output", str(tmp_path / "r.json")])
  with pytest.raises(StarbucksError, match=r"config.eval has unknown field\(s\) match"):
    run_train(tiny_config(tiny_dir, **{"eval.match": (str(match_file),)}), tmp_path / "run")
