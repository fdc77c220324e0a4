"""Training from Parquet shards in a bucket (fake-gcs-server): the run starts after reading the footers and
batch 0's row groups only (reported), and a bad row met mid-run stops it with one error naming the file and
row while the checkpoint already saved survives: the same command, the row fixed, resumes from it."""

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
