"""Parquet shards read lazily from a bucket (fake-gcs-server) or a disk: footers at open, then only the row
groups of the rows read; every row validated as it is read; the full offline pass of the check command."""

import subprocess
import sys

import numpy as np
import pytest

from starbucks_jax import storage
from starbucks_jax.data import sources
from starbucks_jax.data.srl import DataConfig, TrainData
from starbucks_jax.errors import StarbucksError
from tests.helpers import REPO, SNLI_TRIPLETS, snli_parquet_shards

TRIPLETS = {"anchor": "text", "positive": "text", "negative": "text"}
BAD_ROW = 3000  # global row (from 0) with an empty anchor in the "bad" shards: row 3000 - 2941 + 1 of part 2


@pytest.fixture(scope="module")
def bucket(gcs, tmp_path_factory, datasets_cache):
  """gs://bucket/snli/ (4 good shards) and gs://bucket/bad/ (the same, row BAD_ROW's anchor blank)."""
  root = tmp_path_factory.mktemp("shards")
  snli_parquet_shards(root / "snli")
  snli_parquet_shards(root / "bad", bad_row=BAD_ROW)
  storage.upload_tree(root / "snli", "gs://bucket/snli")
  storage.upload_tree(root / "bad", "gs://bucket/bad")
  return root


def test_open_reads_only_footers_and_rows_equal_the_local_file(bucket):
  table = sources.open_table("gs://bucket/snli/*.parquet")
  assert len(table) == 5883 and table.columns == ("anchor", "positive", "negative")
  assert table.bytes_read < table.total_bytes / 10, (table.bytes_read, table.total_bytes)
  local = sources.open_table(str(SNLI_TRIPLETS))
  rows = [0, 5882, 1470, 1471, 4000, 17]
  assert table.read(rows, ["anchor", "negative"]) == local.read(rows, ["anchor", "negative"])
  folder = sources.open_table("gs://bucket/snli/", max_examples=100)  # a folder, the first 100 rows
  assert len(folder) == 100 and folder.read([99], ["positive"]) == local.read([99], ["positive"])


def test_batches_equal_the_local_files_and_hosts_read_disjoint_rows(bucket, tokenizer):
  def data(source, **kw):
    return TrainData(DataConfig(source=source, query_max_length=32, passage_max_length=32), tokenizer,
                     global_batch_size=16, seed=3, **kw)
  lazy, local = data("gs://bucket/snli/*.parquet"), data(str(SNLI_TRIPLETS))
  for step in (0, 1, 700):  # 700: past the end of the first epoch of 367 steps
    a, b = lazy.batch(step), local.batch(step)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), step
    if step == 0:  # footers and batch 0's (at most 16 of 48) row groups
      assert lazy.table.bytes_read < lazy.table.total_bytes * 0.45, (lazy.table.bytes_read, lazy.table.total_bytes)
  hosts = [data("gs://bucket/snli/*.parquet", process_index=i, process_count=2) for i in range(2)]
  for step in (0, 5):
    rows = [h.host_rows(h.example_indices(step)) for h in hosts]
    assert not set(rows[0]) & set(rows[1])
    texts = [h.texts(step) for h in hosts]
    whole = local.texts(step)
    assert texts[0][0] + texts[1][0] == whole[0] and texts[0][1] + texts[1][1] == whole[1]


def test_a_bad_row_is_one_error_naming_its_file_and_row_or_is_skipped(bucket):
  table = sources.open_table("gs://bucket/bad/*.parquet")
  table.check(TRIPLETS)  # the metadata only: the bad row is not met yet
  assert table.read([BAD_ROW - 1], ["anchor"])  # its neighbour reads (the same row group)
  with pytest.raises(StarbucksError, match=r"^gs://bucket/bad/part-00002.parquet: row 60, column 'anchor': "
                     r"empty text \(met while training; .*data.bad_rows='skip'"):
    table.read([5, BAD_ROW], ["anchor", "positive"])
  skipping = sources.open_table("gs://bucket/bad/*.parquet", bad_rows="skip")
  skipping.check(TRIPLETS)
  good = sources.open_table("gs://bucket/snli/*.parquet")
  assert skipping.read([5, BAD_ROW], ["anchor"]) == good.read([5, BAD_ROW + 1], ["anchor"])  # the next good row
  with pytest.raises(StarbucksError, match="^data.bad_rows must be 'error' or 'skip', got 'ignore'$"):
    sources.open_table("gs://bucket/bad/*.parquet", bad_rows="ignore")


def test_refusals_name_the_reason(bucket, tokenizer):
  with pytest.raises(StarbucksError, match=r"^data.streaming=True: training pairs are read by random access, so "
                     r"that batch `step` is a function of \(seed, step\).*gs://BUCKET/PATH/\*.parquet"):
    TrainData(DataConfig(source="hf:sentence-transformers/all-nli:triplet", streaming=True), tokenizer,
              global_batch_size=8, seed=0)
  with pytest.raises(StarbucksError, match=r"^data source gs://bucket/none/\*.parquet matches no file$"):
    sources.open_table("gs://bucket/none/*.parquet")
  (bucket / "odd.parquet").write_bytes(b"not parquet at all")
  storage.upload_tree(bucket, "gs://bucket/odd", last=())
  with pytest.raises(StarbucksError, match=r"^gs://bucket/odd/odd.parquet: not a Parquet file"):
    sources.open_table("gs://bucket/odd/odd.parquet")


def test_check_command_passes_every_row(bucket, capsys):
  from starbucks_jax.cli.check import main
  reports = main(["--config", str(REPO / "configs" / "quickstart.py"), "--config.data.source=gs://bucket/snli/"])
  assert [(r.rows, r.kind) for r in reports] == [(5883, "triplets")]
  assert capsys.readouterr().out.startswith("data: gs://bucket/snli/: 5883 triplets rows checked, none bad, ")
  bad = subprocess.run([sys.executable, "-m", "starbucks_jax.check", "--config", str(REPO / "configs" / "quickstart.py"),
                        "--config.data.source=gs://bucket/bad/*.parquet"], capture_output=True, text=True)
  errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
  assert bad.returncode == 2 and errors == [
      "error: gs://bucket/bad/part-00002.parquet: row 60, column 'anchor': empty text"], bad.stderr[-2000:]
