"""JSON Lines with a line index and ArrayRecord shards, read lazily from a bucket (fake-gcs-server) or a disk:
the same rows and batches as the files read whole, only the blocks of the rows read, every row validated as
it is read; TFDS ArrayRecord data sets in a bucket."""

import json
import logging
import subprocess
import sys

import numpy as np
import pytest

from starbucks_jax import storage
from starbucks_jax.data import jsonl_shards, sources
from starbucks_jax.data.srl import DataConfig, TrainData
from starbucks_jax.errors import StarbucksError
from tests.helpers import REPO, SNLI_TRIPLETS

TRIPLETS = {"anchor": "text", "positive": "text", "negative": "text"}
QUICKSTART = REPO / "data" / "quickstart"
BAD_JSON, BLANK_ANCHOR = 3000, 4000  # global rows (from 0) broken in the "bad" shards


def _parts(rows: list, shards: int) -> list[list]:
  bounds = np.linspace(0, len(rows), shards + 1).astype(int)
  return [rows[bounds[k]:bounds[k + 1]] for k in range(shards)]


def _write_jsonl(folder, name: str, lines: list[str], shards: int) -> list:
  folder.mkdir(parents=True, exist_ok=True)
  paths = []
  for k, part in enumerate(_parts(lines, shards)):
    paths.append(folder / f"{name}-{k:05d}.jsonl")
    paths[-1].write_text("".join(line + "\n" for line in part))
  return paths


@pytest.fixture(scope="module")
def bucket(gcs, tmp_path_factory, datasets_cache):
  """gs://bucket/jsonl/{snli,bad,groups,stsb}: indexed JSON Lines shards; gs://bucket/plain/: unindexed."""
  from starbucks_jax.cli.index import main as index
  root = tmp_path_factory.mktemp("lazy")
  snli = SNLI_TRIPLETS.read_text().splitlines()
  _write_jsonl(root / "snli", "part", snli[:1000] + [""] + snli[1000:], 4)  # a blank line: not a row
  bad = list(snli)
  bad[BAD_JSON] = bad[BAD_JSON][:-2]
  bad[BLANK_ANCHOR] = json.dumps(dict(json.loads(bad[BLANK_ANCHOR]), anchor=" "))
  _write_jsonl(root / "bad", "part", bad, 4)
  _write_jsonl(root / "groups", "part", (QUICKSTART / "scifact_train.jsonl").read_text().splitlines(), 2)
  _write_jsonl(root / "stsb", "part", (QUICKSTART / "stsb_train.jsonl").read_text().splitlines(), 2)
  _write_jsonl(root / "plain", "part", snli, 2)
  for name in ("snli", "bad", "groups", "stsb", "plain"):
    storage.upload_tree(root / name, f"gs://bucket/jsonl/{name}")
  index(["gs://bucket/jsonl/snli/*.jsonl", "gs://bucket/jsonl/bad/", "gs://bucket/jsonl/groups/*.jsonl",
         "gs://bucket/jsonl/stsb/*.jsonl", "--block_rows", "32"])
  return root


def test_the_index_command_and_a_lazy_open_read_only_indexes_and_blocks(bucket, capsys):
  from starbucks_jax.cli.index import main as index
  index(["gs://bucket/jsonl/snli/part-00000.jsonl", "--block_rows", "32"])  # written again: the same index
  assert capsys.readouterr().out == (
      "gs://bucket/jsonl/snli/part-00000.jsonl: 1470 rows, 46 blocks of 32, columns anchor, negative, positive -> "
      "gs://bucket/jsonl/snli/part-00000.jsonl.index.json\n")
  table = sources.open_table("gs://bucket/jsonl/snli/*.jsonl")
  assert type(table).__name__ == "JsonLinesShards" and len(table) == 5883
  assert table.columns == ("anchor", "negative", "positive")
  opened = table.bytes_read
  assert opened < table.total_bytes / 20, (opened, table.total_bytes)
  local = sources.open_table(str(SNLI_TRIPLETS))
  rows = [0, 5882, 999, 1000, 1470, 4000, 17]
  assert table.read(rows, ["anchor", "negative"]) == local.read(rows, ["anchor", "negative"])
  assert table.bytes_read - opened < 7 * 32 * 400  # a block of 32 short lines per row, no more
  assert sources.open_table("gs://bucket/jsonl/snli/", max_examples=100).read([99], ["positive"]) == \
      local.read([99], ["positive"])


@pytest.mark.parametrize("name,kind", [("snli", "auto"), ("groups", "auto"), ("stsb", "scored")])
def test_batches_equal_the_files_read_whole_and_hosts_read_disjoint_rows(bucket, tokenizer, name, kind):
  whole = {"snli": SNLI_TRIPLETS, "groups": QUICKSTART / "scifact_train.jsonl",
           "stsb": QUICKSTART / "stsb_train.jsonl"}[name]
  def data(source, **kw):
    return TrainData(DataConfig(source=source, kind=kind, query_max_length=32, passage_max_length=32,
                                train_group_size=4 if name == "groups" else 1), tokenizer,
                     global_batch_size=16, seed=3, **kw)
  lazy, local = data(f"gs://bucket/jsonl/{name}/*.jsonl"), data(str(whole))
  for step in (0, 1, 400):
    a, b = lazy.batch(step), local.batch(step)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), (name, step)
  hosts = [data(f"gs://bucket/jsonl/{name}/*.jsonl", process_index=i, process_count=2) for i in range(2)]
  rows = [h.host_rows(h.example_indices(5)) for h in hosts]
  assert not set(rows[0]) & set(rows[1])
  texts = [h.texts(5) for h in hosts]
  assert texts[0][0] + texts[1][0] == local.texts(5)[0]


def test_a_bad_line_is_one_error_naming_its_file_and_line_or_is_skipped(bucket):
  table = sources.open_table("gs://bucket/jsonl/bad/*.jsonl")
  table.check(TRIPLETS)
  with pytest.raises(StarbucksError, match=r"^gs://bucket/jsonl/bad/part-00002.jsonl: row 60, line not valid JSON "
                     r"\(.*\(met while training; .*data.bad_rows='skip'"):
    table.read([5, BAD_JSON], ["anchor"])
  with pytest.raises(StarbucksError, match=r"^gs://bucket/jsonl/bad/part-00002.jsonl: row 1060, column 'anchor': "
                     r"empty text \(met while training"):
    table.read([BLANK_ANCHOR], ["anchor"])
  skipping = sources.open_table("gs://bucket/jsonl/bad/", bad_rows="skip")
  skipping.check(TRIPLETS)
  good = sources.open_table(str(SNLI_TRIPLETS))
  assert skipping.read([5, BAD_JSON, BLANK_ANCHOR], ["anchor"]) == good.read([5, BAD_JSON + 1, BLANK_ANCHOR + 1],
                                                                              ["anchor"])
  with pytest.raises(StarbucksError, match=r"^gs://bucket/jsonl/bad/part-00002.jsonl: row 60, line not valid JSON"):
    table.check_every_row(TRIPLETS)


def test_a_stale_or_partial_index_is_refused_and_an_unindexed_bucket_file_is_copied_whole(bucket, caplog):
  storage.upload_tree(bucket / "snli", "gs://bucket/stale")
  for path, _ in storage.matching_files("gs://bucket/jsonl/snli/*.index.json", "index"):
    storage.as_path(path.replace("/jsonl/snli/", "/stale/")).write_bytes(storage.as_path(path).read_bytes())
  storage.as_path("gs://bucket/stale/part-00001.jsonl").write_text((bucket / "snli" / "part-00000.jsonl").read_text())
  with pytest.raises(StarbucksError, match=r"^gs://bucket/stale/part-00001.jsonl changed since its line index was "
                     r"written \(\d+ bytes then, \d+ now\); write it again with python -m starbucks_jax.index "):
    sources.open_table("gs://bucket/stale/*.jsonl")
  storage.as_path("gs://bucket/stale/part-00001.jsonl.index.json").unlink()
  with pytest.raises(StarbucksError, match=r"^gs://bucket/stale/part-00001.jsonl: no line index, while other shards"):
    sources.open_table("gs://bucket/stale/*.jsonl")
  with caplog.at_level(logging.WARNING, logger="starbucks_jax"):
    whole = sources.open_table("gs://bucket/jsonl/plain/*.jsonl")
  assert type(whole).__name__ == "ConcatTable" and len(whole) == 5883 and whole.bytes_read is None
  assert any("read whole: each host first downloads every byte" in r.getMessage() and "starbucks_jax.index" in
             r.getMessage() for r in caplog.records)


def test_the_check_command_reads_every_indexed_line(bucket):
  bad = subprocess.run([sys.executable, "-m", "starbucks_jax.check", "--config", str(REPO / "configs" / "quickstart.py"),
                        "--config.data.source=gs://bucket/jsonl/bad/*.jsonl"], capture_output=True, text=True)
  errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
  assert bad.returncode == 2 and len(errors) == 1 and errors[0].startswith(
      "error: gs://bucket/jsonl/bad/part-00002.jsonl: row 60, line not valid JSON"), bad.stderr[-2000:]
  from starbucks_jax.cli.check import main
  reports = main(["--config", str(REPO / "configs" / "quickstart.py"), "--config.data.source=gs://bucket/jsonl/snli/"])
  assert [(r.rows, r.kind) for r in reports] == [(5883, "triplets")] and reports[0].bytes_read > 0


def _write_array_records(folder, rows: list, shards: int) -> None:
  from array_record.python import array_record_module
  folder.mkdir(parents=True, exist_ok=True)
  for k, part in enumerate(_parts(rows, shards)):
    writer = array_record_module.ArrayRecordWriter(str(folder / f"part-{k:05d}.array_record"), "group_size:1")
    for row in part:
      writer.write(row.encode() if isinstance(row, str) else row)
    writer.close()


def test_array_record_shards_in_a_bucket_read_as_the_jsonl_file(gcs, tmp_path, tokenizer):
  pytest.importorskip("array_record")
  lines = SNLI_TRIPLETS.read_text().splitlines()
  _write_array_records(tmp_path / "snli", lines, 3)
  lines[BLANK_ANCHOR] = json.dumps(dict(json.loads(lines[BLANK_ANCHOR]), anchor=""))
  _write_array_records(tmp_path / "bad", lines[:BAD_JSON] + [b"\xff not json"] + lines[BAD_JSON + 1:], 3)
  storage.upload_tree(tmp_path / "snli", "gs://bucket/ar/snli")
  storage.upload_tree(tmp_path / "bad", "gs://bucket/ar/bad")
  table = sources.open_table("gs://bucket/ar/snli/")
  assert type(table).__name__ == "ArrayRecordShards" and len(table) == 5883
  assert not list((storage.cache_root() / "gs" / "bucket").glob("ar/**/*.array_record"))  # nothing copied
  local = sources.open_table(str(SNLI_TRIPLETS))
  assert table.read([0, 5882, 1961, 4000], ["anchor", "negative"]) == local.read([0, 5882, 1961, 4000],
                                                                                ["anchor", "negative"])
  lazy = TrainData(DataConfig(source="gs://bucket/ar/snli/*.array_record"), tokenizer, global_batch_size=16, seed=3)
  whole = TrainData(DataConfig(source=str(SNLI_TRIPLETS)), tokenizer, global_batch_size=16, seed=3)
  a, b = lazy.batch(7), whole.batch(7)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  bad = sources.open_table("gs://bucket/ar/bad/*.array_record")
  bad.check(TRIPLETS)
  with pytest.raises(StarbucksError, match=r"^gs://bucket/ar/bad/part-00001.array_record: row 1040, record is not "
                     r"a JSON object \(UnicodeDecodeError"):
    bad.read([BAD_JSON], ["anchor"])
  with pytest.raises(StarbucksError, match=r"^gs://bucket/ar/bad/part-00001.array_record: row 1040, record is not"):
    bad.check_every_row(TRIPLETS)


def test_a_tfds_array_record_data_set_in_a_bucket(gcs, tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")

  class StarbucksBucketPairs(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {"anchor": tfds.features.Text(), "positive": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(40):
        yield i, {"anchor": f"question {i}", "positive": f"answer {i}"}

  StarbucksBucketPairs(data_dir=str(tmp_path / "tfds"), file_format="array_record").download_and_prepare()
  storage.upload_tree(tmp_path / "tfds", "gs://bucket/tfds")
  remote = sources.open_table("tfds:starbucks_bucket_pairs", tfds_data_dir="gs://bucket/tfds")
  local = sources.open_table("tfds:starbucks_bucket_pairs", tfds_data_dir=str(tmp_path / "tfds"))
  assert len(remote) == 40 and remote.read(range(40), ["anchor", "positive"]) == local.read(range(40),
                                                                                          ["anchor", "positive"])
