"""Training data: schemas, batch format, order, hosts, Tevatron groups, padding, validation, sources.

Real rows come from the shipped `data/quickstart` files; Tevatron groups, broken rows and TFDS / hub
folders are small synthetic files written to tmp_path.
"""

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from starbucks_jax.data.batching import default_buckets
from starbucks_jax.data.srl import DataConfig, TrainData
from starbucks_jax.errors import StarbucksError
from tests.helpers import REPO

QUICKSTART = REPO / "data" / "quickstart"
SNLI = QUICKSTART / "snli_triplets.jsonl"
STSB = QUICKSTART / "stsb_train.jsonl"
SCIFACT = Path("/work/shared/data/retrieval/scifact-train.jsonl")  # optional: not shipped
KEYS = {"query_input_ids", "query_attention_mask", "passage_input_ids", "passage_attention_mask"}


pytestmark = pytest.mark.usefixtures("datasets_cache")  # conftest.py: Arrow caches under tmp


def read_jsonl(path) -> list[dict]:
  return [json.loads(line) for line in Path(path).read_text().splitlines()]


def write_jsonl(path: Path, rows) -> str:
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def snli_rows(n: int) -> list[dict]:
  return read_jsonl(SNLI)[:n]


def tevatron_rows(n: int = 48, negatives=lambda i: i % 4) -> list[dict]:
  """Queries from SNLI; every 8th query shares the positive 'shared', so fills must skip it for them."""
  rows = []
  for i, r in enumerate(snli_rows(n)):
    positives = [{"docid": f"p{i}", "title": f"Title {i}", "text": r["positive"]}]
    if i % 8 == 0:
      positives.append({"docid": "shared", "title": "", "text": "a passage that several queries share"})
    negs = [{"docid": f"n{i}_{k}", "title": "", "text": f"{r['negative']} variant {k}"}
            for k in range(negatives(i))]
    rows.append({"query_id": str(i), "query": r["anchor"], "positive_passages": positives,
                 "negative_passages": negs})
  return rows


def ids_of(tokenizer, text: str, max_length: int = 128) -> tuple:
  return tuple(tokenizer(text, truncation=True, max_length=max_length)["input_ids"])


def unpadded(ids: np.ndarray, mask: np.ndarray) -> list[tuple]:
  return [tuple(row[:m.sum()].tolist()) for row, m in zip(ids, mask)]


def passage_docids(tokenizer, rows) -> dict[tuple, str]:
  """{token ids of a passage's text as the batch holds it: docid}, over every passage of `rows`."""
  out = {}
  for r in rows:
    for p in r["positive_passages"] + r["negative_passages"]:
      out[ids_of(tokenizer, f"{p['title']} {p['text']}" if p["title"] else p["text"])] = p["docid"]
  return out


def make(tokenizer, source, *, global_batch_size=16, seed=0, process_index=0, process_count=1,
         buckets=None, fixed_lengths=None, same_length=False, **config):
  """Batches of `source`, queries and passages padded apart unless `same_length` says otherwise."""
  return TrainData(DataConfig(source=str(source), same_length=same_length, **config), tokenizer, global_batch_size=global_batch_size,
                   seed=seed, process_index=process_index, process_count=process_count, buckets=buckets,
                   fixed_lengths=fixed_lengths)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, str]:
  """One source per kind: shipped SNLI triplets and STS-B, synthetic pairs and Tevatron groups."""
  folder = tmp_path_factory.mktemp("kinds")
  pairs = [{"anchor": r["anchor"], "positive": r["positive"]} for r in snli_rows(64)]
  return {"triplets": str(SNLI), "scored": str(STSB), "pairs": write_jsonl(folder / "pairs.jsonl", pairs),
          "tevatron": write_jsonl(folder / "tevatron.jsonl", tevatron_rows())}


@pytest.mark.parametrize("kind,group", [("triplets", 2), ("pairs", 1), ("scored", 1), ("tevatron", 4)])
def test_detects_kind_and_builds_batches_of_the_agreed_format(tokenizer, sources, kind, group):
  data = make(tokenizer, sources[kind], train_group_size=4)
  assert (data.kind, data.group_size) == (kind, group)
  batch = data.batch(1)
  assert set(batch) == KEYS | ({"labels"} if kind == "scored" else set())
  b = 16
  assert batch["query_input_ids"].shape[0] == b and batch["passage_input_ids"].shape[0] == b * group
  for side in ("query", "passage"):
    ids, mask = batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"]
    assert ids.dtype == mask.dtype == np.int32 and ids.shape == mask.shape
    assert ids.shape[1] in default_buckets(128)
    lengths = mask.sum(1)
    assert np.array_equal(mask, (np.arange(ids.shape[1]) < lengths[:, None]).astype(np.int32))
    assert np.all(ids[mask == 0] == tokenizer.pad_token_id)
    assert np.all(ids[np.arange(len(ids)), lengths - 1] == tokenizer.sep_token_id)
  if kind == "scored":
    assert batch["labels"].dtype == np.float32 and batch["labels"].shape == (b,)


def test_query_column_may_replace_anchor(tokenizer, tmp_path):
  rows = [{"query": r["anchor"], "positive": r["positive"]} for r in snli_rows(20)]
  assert make(tokenizer, write_jsonl(tmp_path / "q.jsonl", rows)).kind == "pairs"


def test_triplet_rows_are_the_source_rows_in_order(tokenizer):
  data, rows = make(tokenizer, SNLI), read_jsonl(SNLI)
  batch = data.batch(3)
  chosen = [rows[i] for i in data.example_indices(3)]
  assert unpadded(batch["query_input_ids"], batch["query_attention_mask"]) == \
      [ids_of(tokenizer, r["anchor"]) for r in chosen]
  assert unpadded(batch["passage_input_ids"], batch["passage_attention_mask"]) == \
      [ids_of(tokenizer, r[c]) for r in chosen for c in ("positive", "negative")]


def test_scored_pairs_carry_their_scores_and_prefixes(tokenizer):
  # Scored pairs are symmetric: both sentences take the query prompt (`data/prompts.py`); prefix is its older name.
  data, rows = make(tokenizer, STSB, query_prefix="query: "), read_jsonl(STSB)
  batch = data.batch(0)
  chosen = [rows[i] for i in data.example_indices(0)]
  np.testing.assert_array_equal(batch["labels"], np.float32([r["score"] for r in chosen]))
  assert unpadded(batch["query_input_ids"], batch["query_attention_mask"]) == \
      [ids_of(tokenizer, "query: " + r["sentence1"]) for r in chosen]
  assert unpadded(batch["passage_input_ids"], batch["passage_attention_mask"]) == \
      [ids_of(tokenizer, "query: " + r["sentence2"]) for r in chosen]
  with pytest.raises(StarbucksError, match="data.passage_prompt 'passage: ' does not apply to scored pairs"):
    make(tokenizer, STSB, query_prompt="query: ", passage_prefix="passage: ")


def test_tevatron_groups_hold_own_positive_then_own_negatives(tokenizer, sources):
  rows = read_jsonl(sources["tevatron"])
  docids = passage_docids(tokenizer, rows)
  data = make(tokenizer, sources["tevatron"], train_group_size=3)
  batch = data.batch(2)
  passages = unpadded(batch["passage_input_ids"], batch["passage_attention_mask"])
  assert unpadded(batch["query_input_ids"], batch["query_attention_mask"]) == \
      [ids_of(tokenizer, rows[i]["query"]) for i in data.example_indices(2)]
  for k, i in enumerate(data.example_indices(2)):
    group = [docids[p] for p in passages[k * 3:(k + 1) * 3]]
    assert group[0] in {p["docid"] for p in rows[i]["positive_passages"]}
    own_negatives = {p["docid"] for p in rows[i]["negative_passages"]}
    if len(own_negatives) >= 2:
      assert set(group[1:]) <= own_negatives and len(set(group[1:])) == 2


def test_same_step_gives_the_same_batch_even_after_a_restart(tokenizer, sources):
  first, again = make(tokenizer, sources["tevatron"]), make(tokenizer, sources["tevatron"])
  one = first.batch(5)
  first.batch(0), first.batch(40)  # other epochs in between
  for batch in (first.batch(5), again.batch(5)):
    assert all(np.array_equal(one[k], batch[k]) for k in one)


def test_every_example_once_per_epoch_and_a_new_order_each_epoch(tokenizer):
  data = make(tokenizer, STSB, global_batch_size=64)
  spe = data.steps_per_epoch
  assert spe == 5749 // 64
  for epoch in (0, 1):
    seen = np.concatenate([data.example_indices(epoch * spe + s) for s in range(spe)])
    assert len(np.unique(seen)) == len(seen) == spe * 64 and seen.max() < 5749
    np.testing.assert_array_equal(seen, np.random.default_rng([0, epoch]).permutation(5749)[:spe * 64])
  assert not np.array_equal(data.example_indices(0), data.example_indices(spe))
  assert not np.array_equal(data.example_indices(0), make(tokenizer, STSB, global_batch_size=64,
                                                         seed=1).example_indices(0))


@pytest.mark.parametrize("kind", ["triplets", "tevatron"])
def test_two_hosts_together_give_the_single_host_batch(tokenizer, sources, kind):
  single = make(tokenizer, sources[kind], fixed_lengths=True)
  hosts = [make(tokenizer, sources[kind], process_index=k, process_count=2) for k in range(2)]
  assert all(h.fixed_lengths and h.local_batch_size == 8 for h in hosts)
  for step in (0, 3, single.steps_per_epoch + 1):
    whole, halves = single.batch(step), [h.batch(step) for h in hosts]
    assert all(np.array_equal(h.example_indices(step), single.example_indices(step)) for h in hosts)
    for key in whole:
      assert halves[0][key].shape == halves[1][key].shape
      np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])


def test_tevatron_fill_without_any_negatives(tokenizer, tmp_path, caplog):
  """SciFact-like data: no hard negatives, so every group of 8 is filled with other queries' positives."""
  rows = tevatron_rows(48, negatives=lambda i: 0)
  source = write_jsonl(tmp_path / "no_negatives.jsonl", rows)
  with caplog.at_level(logging.INFO, logger="starbucks_jax.data"):
    data = make(tokenizer, source, train_group_size=8)
  fill_lines = [r.getMessage() for r in caplog.records if "filled" in r.getMessage()]
  assert len(fill_lines) == 1 and "48 of 48 queries have fewer than 7 hard negatives" in fill_lines[0]
  docids = passage_docids(tokenizer, rows)
  again = make(tokenizer, source, train_group_size=8)
  for step in (0, 1, data.steps_per_epoch):
    batch = data.batch(step)
    np.testing.assert_array_equal(batch["passage_input_ids"], again.batch(step)["passage_input_ids"])
    passages = unpadded(batch["passage_input_ids"], batch["passage_attention_mask"])
    for k, i in enumerate(data.example_indices(step)):
      group = [docids[p] for p in passages[k * 8:(k + 1) * 8]]
      own = {p["docid"] for p in rows[i]["positive_passages"]}
      assert group[0] in own and not own & set(group[1:]) and len(set(group)) == 8
      assert all(d.startswith("p") or d == "shared" for d in group[1:])  # other queries' positives


def test_tevatron_fill_tops_up_short_groups_after_own_negatives(tokenizer, sources, caplog):
  rows = read_jsonl(sources["tevatron"])
  docids = passage_docids(tokenizer, rows)
  with caplog.at_level(logging.INFO, logger="starbucks_jax.data"):
    data = make(tokenizer, sources["tevatron"], train_group_size=4)
  short = sum(len(r["negative_passages"]) < 3 for r in rows)
  assert sum(f"{short} of 48 queries" in r.getMessage() for r in caplog.records) == 1
  batch = data.batch(0)
  passages = unpadded(batch["passage_input_ids"], batch["passage_attention_mask"])
  for k, i in enumerate(data.example_indices(0)):
    group = [docids[p] for p in passages[k * 4:(k + 1) * 4]]
    own_negatives = [p["docid"] for p in rows[i]["negative_passages"]]
    assert set(own_negatives) <= set(group[1:])  # all of a short list is used before any filler
    assert not {p["docid"] for p in rows[i]["positive_passages"]} & set(group[1:])


def test_no_fill_line_when_every_query_has_enough_negatives(tokenizer, tmp_path, caplog):
  source = write_jsonl(tmp_path / "t.jsonl", tevatron_rows(20, negatives=lambda i: 3))
  with caplog.at_level(logging.INFO, logger="starbucks_jax.data"):
    make(tokenizer, source, train_group_size=4)
  assert not [r for r in caplog.records if "filled" in r.getMessage()]


@pytest.mark.skipif(not SCIFACT.exists(), reason="SciFact is in the shared data folder, not shipped")
def test_scifact_every_query_is_filled(tokenizer, caplog):
  with caplog.at_level(logging.INFO, logger="starbucks_jax.data"):
    data = make(tokenizer, SCIFACT, global_batch_size=8, train_group_size=8, passage_max_length=64)
  assert any("809 of 809 queries" in r.getMessage() for r in caplog.records)
  assert data.batch(0)["passage_input_ids"].shape == (64, 64)


def test_padding_picks_the_smallest_bucket_that_fits(tokenizer):
  data = make(tokenizer, SNLI, global_batch_size=8)
  assert data.query_buckets == [16, 32, 64, 128]
  used = set()
  for step in range(40):
    batch = data.batch(step)
    for side in ("query", "passage"):
      longest = batch[f"{side}_attention_mask"].sum(1).max()
      width = batch[f"{side}_input_ids"].shape[1]
      assert width == min(b for b in data.query_buckets if b >= longest)
      used.add(width)
  assert len(used) > 1
  custom = make(tokenizer, SNLI, global_batch_size=8, buckets=(20, 40, 500))
  assert custom.query_buckets == [20, 40, 128]
  assert custom.batch(0)["query_input_ids"].shape[1] in (20, 40, 128)
  fixed = make(tokenizer, SNLI, global_batch_size=8, fixed_lengths=True, passage_max_length=96)
  assert fixed.batch(0)["query_input_ids"].shape[1] == 128
  assert fixed.batch(0)["passage_input_ids"].shape[1] == 96


def test_long_texts_are_cut_to_max_length_keeping_sep(tokenizer, tmp_path):
  rows = [{"anchor": "word " * 300, "positive": "short"}] * 4
  batch = make(tokenizer, write_jsonl(tmp_path / "long.jsonl", rows), global_batch_size=4,
               query_max_length=24).batch(0)
  assert batch["query_input_ids"].shape == (4, 24) and batch["query_attention_mask"].all()
  assert np.all(batch["query_input_ids"][:, -1] == tokenizer.sep_token_id)
  assert batch["passage_input_ids"].shape == (4, 16)


def test_hosts_share_shapes_by_default_and_buckets_on_one_host(tokenizer):
  assert not make(tokenizer, SNLI).fixed_lengths
  assert make(tokenizer, SNLI, process_index=1, process_count=4).batch(0)["query_input_ids"].shape == (4, 128)


@pytest.mark.parametrize("source,message", [
    ("nowhere/missing.jsonl", "nowhere/missing.jsonl does not exist"),
    (f"{SNLI},nowhere/second.jsonl", "nowhere/second.jsonl does not exist"),
])
def test_missing_files_are_named(tokenizer, source, message):
  with pytest.raises(StarbucksError, match=message):
    make(tokenizer, source)


def test_unknown_extension_empty_and_unreadable_files_are_named(tokenizer, tmp_path):
  (tmp_path / "rows.txt").write_text("a sentence\n")
  with pytest.raises(StarbucksError, match=r"rows.txt: unknown data file extension '.txt'"):
    make(tokenizer, tmp_path / "rows.txt")
  (tmp_path / "empty.jsonl").write_text("")
  with pytest.raises(StarbucksError, match=r"empty.jsonl is empty"):
    make(tokenizer, tmp_path / "empty.jsonl")
  (tmp_path / "broken.jsonl").write_text('{"anchor": "a", "positive": \n')
  with pytest.raises(StarbucksError, match=r"broken.jsonl: cannot be read as json"):
    make(tokenizer, tmp_path / "broken.jsonl")


def test_missing_columns_are_named(tokenizer):
  with pytest.raises(StarbucksError, match=r"stsb_train.jsonl: lacks column\(s\) 'anchor', 'positive', "
                                           r"'negative' needed for kind 'triplets'"):
    make(tokenizer, STSB, kind="triplets")


def test_undecidable_kind_is_reported(tokenizer, tmp_path):
  source = write_jsonl(tmp_path / "odd.jsonl", [{"premise": "a", "hypothesis": "b"}] * 20)
  with pytest.raises(StarbucksError, match=r"odd.jsonl: cannot tell the kind of data from its columns "
                                           r"\['hypothesis', 'premise'\]"):
    make(tokenizer, source)


def _good(i):
  return {"sentence1": f"first {i}", "sentence2": f"second {i}", "score": float(i % 5)}


@pytest.mark.parametrize("bad_row,changes,message", [
    (3, {"sentence1": None}, "row 3, column 'sentence1': missing \\(null\\)"),
    (2, {"sentence2": "   "}, "row 2, column 'sentence2': empty text"),
    (4, {"sentence1": 17}, "row 4, column 'sentence1': expected text, got int"),
    (5, {"score": "high"}, "row 5, column 'score': expected a number, got 'high'"),
    (6, {"score": None}, "row 6, column 'score': missing \\(null\\)"),
])
def test_malformed_rows_are_named_with_row_and_column(tokenizer, tmp_path, bad_row, changes, message):
  rows = [_good(i) for i in range(20)]
  rows[bad_row - 1].update(changes)
  with pytest.raises(StarbucksError, match="bad.jsonl: " + message):
    make(tokenizer, write_jsonl(tmp_path / "bad.jsonl", rows))


@pytest.mark.parametrize("bad_row,positives,message", [
    (7, [], "row 7, column 'positive_passages': no positive passage"),
    (2, [{"docid": "x", "title": "t", "text": ""}], "row 2, column 'positive_passages': passage 1 has a "
                                                   "missing or empty 'text'"),
])
def test_malformed_tevatron_rows_are_named(tokenizer, tmp_path, bad_row, positives, message):
  rows = tevatron_rows(20)
  rows[bad_row - 1]["positive_passages"] = positives
  with pytest.raises(StarbucksError, match=message):
    make(tokenizer, write_jsonl(tmp_path / "bad.jsonl", rows), train_group_size=2)


def test_malformed_csv_row_counts_data_rows(tokenizer, tmp_path):
  lines = ["sentence1,sentence2,score"] + [f"a {i},b {i},{i % 5}" for i in range(20)]
  lines[9] = "a 8,b 8,lots"
  (tmp_path / "bad.csv").write_text("\n".join(lines) + "\n")
  with pytest.raises(StarbucksError, match="bad.csv: row 9, column 'score': expected a number"):
    make(tokenizer, tmp_path / "bad.csv")


def test_bad_row_in_a_second_file_names_that_file(tokenizer, tmp_path):
  first = write_jsonl(tmp_path / "one.jsonl", [_good(i) for i in range(10)])
  rows = [_good(i) for i in range(10)]
  rows[4]["sentence2"] = ""
  second = write_jsonl(tmp_path / "two.jsonl", rows)
  with pytest.raises(StarbucksError, match=r"two.jsonl: row 5, column 'sentence2': empty text"):
    make(tokenizer, f"{first},{second}")


def test_several_files_and_max_examples(tokenizer, tmp_path):
  first = write_jsonl(tmp_path / "one.jsonl", [_good(i) for i in range(10)])
  second = write_jsonl(tmp_path / "two.jsonl", [_good(i) for i in range(10, 30)])
  data = make(tokenizer, f"{first}, {second}", global_batch_size=30)
  assert data.num_examples == 30
  labels = data.batch(0)["labels"]
  np.testing.assert_array_equal(labels, np.float32([i % 5 for i in data.example_indices(0)]))
  rows = [_good(i) for i in range(30)]
  rows[25]["score"] = "broken beyond max_examples"
  assert make(tokenizer, write_jsonl(tmp_path / "three.jsonl", rows), max_examples=20).num_examples == 20


@pytest.mark.parametrize("size,count,index,message", [
    (8000, 1, 0, "has 5749 examples, fewer than one global batch of 8000"),
    (33, 2, 0, "global batch size 33 is not divisible by the 2 processes"),
    (32, 2, 2, "process_index 2 is not below process_count 2"),
])
def test_batch_sizes_are_checked(tokenizer, size, count, index, message):
  with pytest.raises(StarbucksError, match=message):
    make(tokenizer, STSB, global_batch_size=size, process_count=count, process_index=index)


def test_config_from_config_dict():
  import ml_collections
  cd = ml_collections.ConfigDict({"source": str(SNLI), "kind": "triplets", "query_max_length": 32,
                                  "max_examples": None})
  assert DataConfig.from_config_dict(cd) == DataConfig(source=str(SNLI), kind="triplets", query_max_length=32)
  with pytest.raises(StarbucksError, match="unknown field\\(s\\) group_size"):
    DataConfig.from_config_dict({"source": "x.jsonl", "group_size": 4})
  with pytest.raises(StarbucksError, match="data.kind must be auto or one of"):
    DataConfig.from_config_dict({"source": "x.jsonl", "kind": "quads"})
  with pytest.raises(StarbucksError, match="source is not set"):
    DataConfig.from_config_dict({"kind": "pairs"})


def test_hub_source_reads_a_dataset_folder(tokenizer, tmp_path):
  folder = tmp_path / "hub_copy"
  folder.mkdir()
  rows = [{"anchor": r["anchor"], "positive": r["positive"]} for r in snli_rows(24)]
  write_jsonl(folder / "train.jsonl", rows)
  data = make(tokenizer, f"hf:{folder}", global_batch_size=8)
  assert (data.kind, data.num_examples, data.table.name) == ("pairs", 24, f"hf:{folder} split train")
  batch = data.batch(1)
  assert unpadded(batch["query_input_ids"], batch["query_attention_mask"]) == \
      [ids_of(tokenizer, rows[i]["anchor"]) for i in data.example_indices(1)]
  with pytest.raises(StarbucksError, match=f"hf:{folder}: cannot load split 'validation'"):
    make(tokenizer, f"hf:{folder}", split="validation")


def test_hub_source_passes_name_config_and_split(tokenizer, monkeypatch):
  import datasets
  calls = []

  def fake_load_dataset(name, config=None, **kwargs):
    calls.append((name, config, kwargs))
    return datasets.Dataset.from_list([_good(i) for i in range(12)])

  monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
  data = make(tokenizer, "hf:someone/sts:scored-config", split="validation", global_batch_size=4)
  assert calls == [("someone/sts", "scored-config", {"split": "validation"})]
  assert data.kind == "scored" and data.table.name == "hf:someone/sts:scored-config split validation"


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory) -> Path:
  """Two tiny TFDS data sets prepared in ArrayRecord format, which needs no TensorFlow."""
  tfds = pytest.importorskip("tensorflow_datasets")
  folder = tmp_path_factory.mktemp("tfds")
  triplets, groups = snli_rows(40), tevatron_rows(24)
  text = tfds.features.Text()
  passage = tfds.features.Sequence({"docid": text, "title": text, "text": text})

  class StarbucksTestTriplets(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {"anchor": text, "positive": text, "negative": text}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      yield from enumerate(triplets)

  class StarbucksTestGroups(StarbucksTestTriplets):
    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {"query_id": text, "query": text, "positive_passages": passage, "negative_passages": passage}))

    def _generate_examples(self):
      yield from enumerate(groups)

  for builder in (StarbucksTestTriplets, StarbucksTestGroups):
    builder(data_dir=str(folder), file_format="array_record").download_and_prepare()
  return folder


def test_tfds_triplets(tokenizer, tfds_dir):
  import tensorflow_datasets as tfds
  data = make(tokenizer, "tfds:starbucks_test_triplets:1.0.0", tfds_data_dir=str(tfds_dir),
              global_batch_size=8)
  assert (data.kind, data.num_examples, data.steps_per_epoch) == ("triplets", 40, 5)
  source = tfds.data_source("starbucks_test_triplets", split="train", data_dir=str(tfds_dir))
  chosen = [source[int(i)] for i in data.example_indices(2)]  # TFDS shuffles rows when it prepares them
  batch = data.batch(2)
  assert unpadded(batch["passage_input_ids"], batch["passage_attention_mask"]) == \
      [ids_of(tokenizer, r[c].decode()) for r in chosen for c in ("positive", "negative")]


def test_tfds_tevatron_groups(tokenizer, tfds_dir):
  docids = passage_docids(tokenizer, tevatron_rows(24))
  data = make(tokenizer, "tfds:starbucks_test_groups", tfds_data_dir=str(tfds_dir), global_batch_size=8,
              train_group_size=4, max_examples=16)
  assert (data.kind, data.num_examples) == ("tevatron", 16)
  batch = data.batch(0)
  groups = np.array([docids[p] for p in unpadded(batch["passage_input_ids"],
                                                 batch["passage_attention_mask"])]).reshape(8, 4)
  assert all(len(set(g)) == 4 for g in groups)


def test_tfds_unknown_dataset_is_named(tokenizer, tfds_dir):
  with pytest.raises(StarbucksError, match="tfds:no_such_set: cannot open split 'train'"):
    make(tokenizer, "tfds:no_such_set", tfds_data_dir=str(tfds_dir))
