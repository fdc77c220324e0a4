"""Training from shards in a bucket (fake-gcs-server): the run starts after reading the footers (or line
indexes) and batch 0's row groups (or blocks) only (reported), and a bad row met mid-run stops it with one
error naming the file and row while the checkpoint already saved survives: the same command, the row fixed,
resumes from it."""

import logging

import pytest

from starbucks_jax import storage
from starbucks_jax.data.batching import EpochOrder
from starbucks_jax.errors import StarbucksError
from starbucks_jax.runtime import checkpoints
from tests.helpers import run_train, snli_parquet_shards, tiny_config

BATCH = 8


def test_a_bad_row_met_at_step_5_keeps_the_checkpoint_of_step_3(gcs, tiny_dir, tmp_path, caplog, datasets_cache):
  config = tiny_config(tiny_dir, **{"data.source": "gs://bucket/train/*.parquet", "data.max_examples": None,
                                    "eval.sts": ()})
  bad_row = int(EpochOrder(config.seed, 5883, BATCH).indices(4)[0])  # the first row of step 5's batch
  shards = snli_parquet_shards(tmp_path / "bad", bad_row=bad_row)
  storage.upload_tree(tmp_path / "bad", "gs://bucket/train")
  total = sum(p.stat().st_size for p in shards)
  with caplog.at_level(logging.INFO, logger="starbucks_jax"), pytest.raises(StarbucksError) as error:
    run_train(config, tmp_path / "run")
  assert "column 'anchor': empty text" in str(error.value) and "in the batch of step 5, after step 4" in str(error.value)
  assert str(error.value).startswith("gs://bucket/train/part-0000"), error.value
  assert checkpoints.saved_steps(tmp_path / "run") == [3]
  before = [r.getMessage() for r in caplog.records if "bytes read before step 0" in r.getMessage()]
  assert len(before) == 1, before
  read = int(before[0].split()[1])
  assert read < total / 4, (read, total)  # footers and batch 0's row groups, not the shards whole

  snli_parquet_shards(tmp_path / "fixed")  # the row fixed, the same command: it resumes at step 3
  storage.upload_tree(tmp_path / "fixed", "gs://bucket/train")
  caplog.clear()
  with caplog.at_level(logging.INFO, logger="starbucks_jax"):
    summary = run_train(config, tmp_path / "run")
  assert any("resuming from the checkpoint at step 3" in r.getMessage() for r in caplog.records)
  assert summary["step"] == 6 and 0 < summary["data_bytes_before_step_0"] < total / 4
  assert checkpoints.saved_steps(tmp_path / "run") == [3, 6]


def test_a_mixture_in_a_bucket_starts_on_footers_and_trains_as_its_local_files(gcs, tiny_dir, tmp_path, caplog,
                                                                              datasets_cache):
  """SNLI triplets as Parquet shards and STS-B scored pairs as indexed JSON Lines shards in the bucket, one
  mixture: before step 0 the run has read the footers, the line indexes and its first batch's row groups and
  blocks, a small part of the shards (logged, returned), and it logs what the same mixture of the local JSON
  Lines files logs, step for step."""
  from starbucks_jax.cli.index import main as write_index
  from starbucks_jax.runtime.metrics import read_metrics
  from tests.helpers import REPO
  stsb = (REPO / "data" / "quickstart" / "stsb_train.jsonl").read_text().splitlines(keepends=True)
  (tmp_path / "stsb").mkdir()
  for k, part in enumerate((stsb[:3000], stsb[3000:])):
    (tmp_path / "stsb" / f"part-{k:05d}.jsonl").write_text("".join(part))
  shards = snli_parquet_shards(tmp_path / "snli") + sorted((tmp_path / "stsb").iterdir())
  storage.upload_tree(tmp_path / "snli", "gs://bucket/mix/snli")
  storage.upload_tree(tmp_path / "stsb", "gs://bucket/mix/stsb")
  write_index(["gs://bucket/mix/stsb/*.jsonl"])
  total = sum(p.stat().st_size for p in shards)

  def mixture_run(snli: str, stsb_source: str, workdir):
    config = tiny_config(tiny_dir, **{"data.max_examples": None, "eval.sts": (), "num_steps": 8,
                                      "checkpoint.every_steps": 8})
    config.data.source = ""
    config.data.mixture = {"snli": dict(source=snli), "stsb": dict(source=stsb_source, kind="scored")}
    return run_train(config, workdir)

  with caplog.at_level(logging.INFO, logger="starbucks_jax"):
    summary = mixture_run("gs://bucket/mix/snli/*.parquet", "gs://bucket/mix/stsb/*.jsonl", tmp_path / "remote")
  before = [r.getMessage() for r in caplog.records if "bytes read before step 0" in r.getMessage()]
  assert len(before) == 1 and 0 < summary["data_bytes_before_step_0"] < total / 4, (before, total)
  local = mixture_run(str(REPO / "data" / "quickstart" / "snli_triplets.jsonl"),
                      str(REPO / "data" / "quickstart" / "stsb_train.jsonl"), tmp_path / "local")
  assert local["data_bytes_before_step_0"] is None  # read whole, not counted
  drop_timing = lambda rows: [{k: v for k, v in r.items() if k != "examples_per_sec"} for r in rows]
  remote_rows = read_metrics(tmp_path / "remote")
  assert drop_timing(remote_rows) == drop_timing(read_metrics(tmp_path / "local"))
  from starbucks_jax.data.mixture import MixtureOrder
  order = MixtureOrder(seed=0, shares=[5883 // BATCH, 5749 // BATCH])  # the sources in name order
  dealt = {("snli", "stsb")[order(step)[0]] for step in range(8)}
  assert dealt == {"snli", "stsb"}  # both sources come up in these 8 steps: the test sees both read
  assert {k for r in remote_rows for k in r if k.startswith("source/") and k.endswith("/loss")} == {
      f"source/{name}/loss" for name in dealt}
