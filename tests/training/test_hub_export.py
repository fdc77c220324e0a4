"""The end of a run and its export as a newcomer meets them: the train command's closing block (every size's
scores, where things are, the next commands, which run as printed), and an export ready for the hub (a
model card with the hub's YAML and the run's measured table, `matryoshka_dimensions` in config.json, a
manifest), loaded unchanged by sentence-transformers and transformers; the same for `export --num-layers`."""

import contextlib
import io
import json
import shlex

import numpy as np
import pytest
import yaml

from tests.helpers import REPO

PAIRS = [(1, 8), (2, 16), (4, 32)]
STS_ROWS = 40


@pytest.fixture(scope="module")
def trained(tiny_dir, tmp_path_factory):
  """The quickstart command on the tiny model (4 steps, an STS evaluation at the end), and what it printed."""
  root = tmp_path_factory.mktemp("hub")
  sts = root / "sts.jsonl"
  sts.write_text("\n".join((REPO / "data" / "quickstart" / "stsb_test.jsonl").read_text().splitlines()[:STS_ROWS]))
  from starbucks_jax.cli.train import main
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    summary = main(["--config", str(REPO / "configs" / "quickstart.py"), "--workdir", str(root / "run"),
                    f"--config.model.name={tiny_dir}", "--config.data.max_examples=64", "--config.batch_size=8",
                    "--config.num_steps=4", "--config.starbucks.pairs=((1,8),(2,16),(4,32))",
                    f"--config.eval.sts=('{sts}',)", "--config.eval.query_max_length=32",
                    "--config.eval.passage_max_length=32", "--config.checkpoint.every_steps=4",
                    "--config.log_every_steps=2", "--config.progress_bar=False", "--config.mesh.data=1"])
  rows = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
  return {"root": root, "workdir": root / "run", "summary": summary, "printed": printed.getvalue(), "final": rows[-1]}


def card_of(folder):
  text = (folder / "README.md").read_text()
  assert text.startswith("---\n")
  _, front, body = text.split("---\n", 2)
  return yaml.safe_load(front), body


def test_the_run_ends_with_every_size_and_what_to_run_next(trained):
  printed, workdir, final = trained["printed"], trained["workdir"], trained["final"]
  assert "Finished: 4 steps" in printed and "Scores at every trained size" in printed
  for n, d in PAIRS:  # a row per size, its figure the one in metrics.jsonl
    figure = f"{final[f'eval/sts/n{n}_d{d}/spearman']:.2f}"
    assert f"| ({n}, {d}) | {figure} |" in printed, (n, d, printed)
  assert f"Export:       {workdir / 'export'}" in printed
  assert f"tensorboard --logdir {workdir}/tensorboard" in printed and (workdir / "tensorboard").is_dir()
  commands = [shlex.split(line) for line in printed.splitlines() if line.strip().startswith("python -m")]
  assert [c[2] for c in commands] == ["starbucks_jax.encode", "starbucks_jax.export", "starbucks_jax.evaluate"]
  # The export command runs as printed: a standalone 2-layer model with its own card.
  from starbucks_jax.cli.export import main as export
  export(commands[1][3:])
  two = workdir.parent / f"{workdir.name}_2l"
  assert json.loads((two / "config.json").read_text())["matryoshka_dimensions"] == [16]


def test_the_export_carries_a_hub_card_with_the_measured_table(trained):
  export, final = trained["workdir"] / "export", trained["final"]
  meta, body = card_of(export)
  assert meta["library_name"] == "sentence-transformers" and meta["pipeline_tag"] == "sentence-similarity"
  assert {"matryoshka", "2d-matryoshka", "starbucks", "sentence-transformers"} <= set(meta["tags"])
  assert "license" not in meta and "base_model" not in meta  # a random local model: neither is known
  for n, d in PAIRS:
    cells = [f"{final[f'eval/sts/n{n}_d{d}/{m}']:.2f}" for m in ("spearman", "pearson")]
    assert f"| ({n}, {d}) | {' | '.join(cells)} |" in body, (n, d)
  assert "truncate_dim=32" in body and "--num-layers" in body and "dimensions" in body
  config = json.loads((export / "config.json").read_text())
  assert config["matryoshka_dimensions"] == [32] and config["is_matryoshka"] is True
  manifest = json.loads((export / "starbucks.json").read_text())
  assert manifest["trained_pairs"] == [list(p) for p in PAIRS] and manifest["num_layers"] == 4
  assert manifest["scores"]["sts/spearman"]["1,8"] == final["eval/sts/n1_d8/spearman"]


@pytest.mark.parametrize("num_layers", [None, 2])
def test_sentence_transformers_and_transformers_load_the_folder_unchanged(trained, num_layers):
  from sentence_transformers import SentenceTransformer
  import torch
  import transformers
  from starbucks_jax.inference.encoder import Encoder
  folder = trained["workdir"] / "export"
  if num_layers:
    from starbucks_jax.cli.export import main as export
    folder = trained["root"] / "two_layers"
    export(["--workdir", str(trained["workdir"]), "--num-layers", "2", "--output", str(folder)])
    meta, body = card_of(folder)
    assert "# A Starbucks (2D Matryoshka) model, 2 layers" in body and "serves (2, 16)" in body
  layer, dim = (num_layers or 4), (16 if num_layers else 32)
  texts = ["a man plays a guitar", "two dogs run on the beach"]
  st = SentenceTransformer(str(folder), truncate_dim=dim, device="cpu")
  ours = Encoder.from_pretrained(trained["workdir"]).encode(texts, layer=layer, dim=dim)
  np.testing.assert_allclose(st.encode(texts), ours, atol=1e-4)
  model, info = transformers.AutoModel.from_pretrained(str(folder), output_loading_info=True)
  assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
  assert model.config.num_hidden_layers == layer and model.config.matryoshka_dimensions == [dim]
  with torch.no_grad():
    model.eval()(**transformers.AutoTokenizer.from_pretrained(str(folder))(texts, padding=True, return_tensors="pt"))


def test_a_previous_export_with_its_card_is_replaced_by_overwrite(trained):
  from starbucks_jax.cli.export import main as export
  out = trained["root"] / "again"
  export(["--workdir", str(trained["workdir"]), "--output", str(out)])
  export(["--workdir", str(trained["workdir"]), "--output", str(out), "--overwrite", "--num-layers", "1"])
  assert json.loads((out / "starbucks.json").read_text())["matryoshka_dimensions"] == [8]


def test_the_card_record_names_hub_models_data_and_the_license(minilm_dir, tmp_path):
  from starbucks_jax.training.model_card import card_record
  record = card_record("minilm", "hf:sentence-transformers/all-nli:triplet", minilm_dir, PAIRS)
  assert record == {"pairs": [list(p) for p in PAIRS], "base_model": "sentence-transformers/all-MiniLM-L6-v2",
                    "datasets": ["sentence-transformers/all-nli"], "license": "apache-2.0"}
  local = card_record(str(tmp_path), str(tmp_path / "triplets.jsonl"), tmp_path, PAIRS)
  assert local["base_model"] is None and local["datasets"] == [] and local["license"] is None
