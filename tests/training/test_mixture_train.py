"""Training on a mixture (`configs/mixture_quickstart.py`, cut to a tiny random BERT and a few rows of each
shipped source): per-source metrics, kill -9 and resume bit-identically, and the mixture's prompts in the
export, read back by sentence-transformers."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO

STEPS = 10
CONFIG = """
import sys
sys.path.insert(0, {configs!r})
from mixture_quickstart import get_config as quickstart


def get_config():
  c = quickstart()
  c.model.name = {model!r}
  for name, rows in (("snli", 48), ("scifact", 24), ("stsb", 32)):
    c.data.mixture[name].max_examples = rows
  c.data.mixture.scifact.passage_max_length = 48
  c.data.query_prompt = "query: "
  c.data.passage_prompt = "passage: "
  c.data.mixture.stsb.passage_prompt = "query: "  # scored pairs take one prompt on both sentences
  c.starbucks.pairs = ((1, 8), (2, 16), (4, 32))
  c.batch_size = 8
  c.num_steps = {steps}
  c.checkpoint.every_steps = 4
  c.log_every_steps = 1
  c.optimizer.lr = 1e-3
  c.eval.sts = ()
  c.tensorboard = False
  c.progress_bar = False
  c.mesh.data = 1
  return c
"""


def train(config_file, workdir, **env):
  return subprocess.run([sys.executable, "-m", "starbucks_jax.train", "--config", str(config_file), "--workdir",
                         str(workdir)], env=dict(os.environ, **env), capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def config_file(tiny_dir, tmp_path_factory):
  path = tmp_path_factory.mktemp("mixture_config") / "tiny_mixture.py"
  path.write_text(CONFIG.format(configs=str(REPO / "configs"), model=str(tiny_dir), steps=STEPS))
  return path


@pytest.fixture(scope="module")
def whole_run(config_file, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("mixture_whole") / "run"
  out = train(config_file, workdir)
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir


def test_each_source_is_logged(whole_run):
  from starbucks_jax.data.mixture import MixtureOrder
  from starbucks_jax.runtime.metrics import read_metrics
  rows = read_metrics(whole_run)
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  # The order the run dealt: scifact 3, snli 6 and stsb 4 steps an epoch of 8 (names in order), seed 0.
  order = MixtureOrder(seed=0, shares=[24 // 8, 48 // 8, 32 // 8])
  names = ("scifact", "snli", "stsb")
  examples = dict.fromkeys(names, 0)
  for step, row in enumerate(rows):
    source = names[order(step)[0]]
    examples[source] += 8
    assert row[f"source/{source}/loss"] == row["loss"]  # one step a row: the source's loss is the step's
    assert all(f"source/{other}/loss" not in row for other in names if other != source)
    assert {name: row[f"source/{name}/examples"] for name in names} == examples
    assert np.isfinite(row["loss"])
  assert all(examples.values())  # every source had a turn


def test_a_killed_mixture_run_resumes_bit_identically(config_file, whole_run, tmp_path):
  from tests.runtime.test_preemption import assert_bit_identical
  from starbucks_jax.runtime.metrics import read_metrics
  killed = train(config_file, tmp_path / "run", STARBUCKS_FAULT_KILL_AT_STEP="6")
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  resumed = train(config_file, tmp_path / "run")
  assert resumed.returncode == 0 and "resuming from the checkpoint at step 4" in resumed.stderr, resumed.stderr[-3000:]
  assert_bit_identical(whole_run, tmp_path / "run")
  drop_timing = lambda rows: [{k: v for k, v in r.items() if k != "examples_per_sec"} for r in rows]
  assert drop_timing(read_metrics(tmp_path / "run")) == drop_timing(read_metrics(whole_run))


def test_the_mixtures_prompts_reach_the_export(whole_run):
  from sentence_transformers import SentenceTransformer
  from starbucks_jax.inference.encoder import Encoder
  export = whole_run / "export"
  card = json.loads((export / "config_sentence_transformers.json").read_text())
  assert card["prompts"] == {"query": "query: ", "document": "passage: "}
  texts = ["a man plays a guitar", "two dogs run on the beach"]
  theirs = SentenceTransformer(str(export), device="cpu")
  ours = Encoder.from_pretrained(export)
  np.testing.assert_allclose(theirs.encode_query(texts), ours.encode(["query: " + t for t in texts]), atol=1e-5)
  np.testing.assert_allclose(theirs.encode_document(texts), ours.encode(["passage: " + t for t in texts]), atol=1e-5)


@pytest.mark.parametrize("changes", [{"data.packing": True}, {"grad_cache.query_chunk": 4}],
                         ids=["packed", "grad_cache"])
def test_a_mixture_trains_packed_and_with_grad_cache(tiny_dir, tmp_path, changes):
  from starbucks_jax.runtime.metrics import read_metrics
  from tests.helpers import run_train, tiny_config
  config = tiny_config(tiny_dir, **changes, **{"num_steps": 4, "checkpoint.every_steps": 4})
  config.data.source = ""
  config.data.max_examples = None
  config.data.mixture = {
      "snli": dict(source=str(REPO / "data" / "quickstart" / "snli_triplets.jsonl"), max_examples=16),
      "scifact": dict(source=str(REPO / "data" / "quickstart" / "scifact_train.jsonl"), train_group_size=3,
                      max_examples=16)}
  run_train(config, tmp_path)
  rows = read_metrics(tmp_path)
  assert len(rows) == 4 and all(np.isfinite(r["loss"]) for r in rows)
  assert rows[-1]["source/snli/examples"] + rows[-1]["source/scifact/examples"] == 4 * 8
  assert {k for r in rows for k in r if k.endswith("/loss") and k.startswith("source/")} == {
      "source/snli/loss", "source/scifact/loss"}


def test_a_scored_source_trains_without_the_data_blocks_clean_negatives(tiny_dir, tmp_path, monkeypatch):
  """data.clean_negatives=True and a scored source in the mixture: the run trains, masking negatives in the
  triplets' steps only; set in the scored source's own entry, or on a single scored source, it is refused
  with the one error, before anything compiles."""
  import jax
  import starbucks_jax.training.loop  # noqa: F401  (imported, and its functions jitted, before jit fails)
  from starbucks_jax.errors import StarbucksError
  from starbucks_jax.runtime.metrics import read_metrics
  from tests.helpers import run_train, tiny_config
  data = REPO / "data" / "quickstart"
  config = tiny_config(tiny_dir, **{"num_steps": 6, "checkpoint.every_steps": 6, "data.clean_negatives": True})
  config.data.source, config.data.max_examples = "", None
  snli = dict(source=str(data / "snli_triplets.jsonl"), max_examples=24)
  stsb = dict(source=str(data / "stsb_train.jsonl"), kind="scored", objective="cosent", max_examples=24)
  refused = "data.clean_negatives masks in-batch negatives, and the cosent objective on scored data has none"
  with monkeypatch.context() as patch:
    patch.setattr(jax, "jit", lambda *a, **k: pytest.fail("compiled before the error"))
    config.data.mixture = {"snli": snli, "stsb": dict(stsb, clean_negatives=True)}
    with pytest.raises(StarbucksError, match=refused + r": leave it off \(data.mixture.stsb.clean_negatives=False\)"):
      run_train(config, tmp_path / "own")
    single = tiny_config(tiny_dir, **{"data.clean_negatives": True, "starbucks.objective": "cosent"})
    single.data.source = stsb["source"]
    with pytest.raises(StarbucksError, match=refused + ": leave it off$"):
      run_train(single, tmp_path / "single")
  config.data.mixture = {"snli": snli, "stsb": stsb}
  run_train(config, tmp_path / "run")
  rows = read_metrics(tmp_path / "run")
  assert len(rows) == 6 and all(np.isfinite(r["loss"]) for r in rows)
  assert {r["step"] for r in rows if "masked_negatives" in r} == {r["step"] for r in rows if "source/snli/loss" in r}
