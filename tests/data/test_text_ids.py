"""Text identities for clean negatives (`data/text_ids.py`): with `data.clean_negatives`, each query and
passage of a batch (padded or packed, on one host or two, split into micro-batches) carries the hash of
the exact text the model reads, and each query those of every positive its row lists; equal texts get
equal ids and different texts different ones; without the setting the batch is what it was, key for key
and byte for byte."""

import jax.numpy as jnp
import numpy as np
import pytest

from starbucks_jax.data.srl import DataConfig, TrainData
from starbucks_jax.data.text_ids import text_id, text_ids
from starbucks_jax.losses.batch import SrlBatch, micro_batches
from tests.data.test_srl_data import SNLI, tevatron_rows, write_jsonl
from tests.helpers import REPO

pytestmark = pytest.mark.usefixtures("datasets_cache")
IDS = {"query_text_ids", "passage_text_ids", "labelled_positive_ids"}
SCIFACT = REPO / "data" / "quickstart" / "scifact_train.jsonl"


def data(tokenizer, source=SNLI, hosts=(0, 1), **fields):
  index, count = hosts
  return TrainData(DataConfig(source=str(source), query_max_length=32, passage_max_length=32, **fields), tokenizer,
                   global_batch_size=16, seed=0, process_index=index, process_count=count)


def test_ids_hash_the_texts_equal_texts_alike():
  assert text_id("a cat") == text_id("a cat") != text_id("a cat ")
  assert text_ids(["x", "y", "x"]).dtype == np.int32 and text_ids(["x", "y", "x"])[0] == text_ids(["x"])[0]


@pytest.mark.parametrize("packing", [False, True])
def test_the_data_gives_each_text_its_id_and_nothing_else_changes(tokenizer, packing):
  clean, plain = data(tokenizer, clean_negatives=True, packing=packing), data(tokenizer, packing=packing)
  seen = {}
  for step in range(6):
    batch, default = clean.batch(step), plain.batch(step)
    assert set(batch) == set(default) | IDS and not IDS & set(default)
    for key, value in default.items():
      assert np.array_equal(batch[key], value), key
    queries, passages, _ = clean.texts(step)
    assert batch["query_text_ids"].tolist() == text_ids(queries).tolist()
    assert batch["passage_text_ids"].tolist() == text_ids(passages).tolist()
    assert batch["labelled_positive_ids"].tolist() == text_ids(passages[::2])[:, None].tolist()  # its one positive
    for text, value in zip(queries + passages, batch["query_text_ids"].tolist() + batch["passage_text_ids"].tolist()):
      seen.setdefault(text, set()).add(value)
  assert all(len(values) == 1 for values in seen.values())  # one id a text, in every batch
  assert len({next(iter(v)) for v in seen.values()}) == len(seen)  # and none shared by two texts here


def test_repeated_texts_get_one_id(tokenizer, tmp_path):
  """Triplets whose odd rows repeat the even rows' anchor and positive: equal ids where the texts are equal."""
  from tests.data.test_srl_data import snli_rows
  rows = []
  for row in snli_rows(8):
    rows += [row, dict(row, negative=row["negative"] + " !")]
  source = write_jsonl(tmp_path / "repeats.jsonl", rows)
  batch = data(tokenizer, source, clean_negatives=True).batch(0)
  queries, passages, _ = data(tokenizer, source).texts(0)
  for i in range(16):
    for k in range(16):
      assert (batch["query_text_ids"][i] == batch["query_text_ids"][k]) == (queries[i] == queries[k])
  for i in range(32):
    for k in range(32):
      assert (batch["passage_text_ids"][i] == batch["passage_text_ids"][k]) == (passages[i] == passages[k])
  assert len(set(queries)) == 8 and len(set(passages)) == 24  # 8 positives twice, 16 different negatives


def test_two_hosts_ids_and_micro_batches_keep_each_texts_id(tokenizer, tmp_path):
  source = write_jsonl(tmp_path / "groups.jsonl", tevatron_rows(48))
  whole = data(tokenizer, source, clean_negatives=True, train_group_size=3).batch(1)
  halves = [data(tokenizer, source, hosts=(i, 2), clean_negatives=True, train_group_size=3).batch(1) for i in (0, 1)]
  assert whole["labelled_positive_ids"].shape == (16, 2)  # every 8th row lists a second positive
  for key in IDS:
    assert np.array_equal(np.concatenate([h[key] for h in halves]), whole[key])
  parts = micro_batches({k: jnp.asarray(v) for k, v in whole.items()}, 2)
  for k in range(2):  # micro-batch k: queries k, k + 2, ...; each with its 3 passages
    assert np.array_equal(parts["query_text_ids"][k], whole["query_text_ids"][k::2])
    passages = whole["passage_text_ids"].reshape(16, 3)[k::2].ravel()
    assert np.array_equal(parts["passage_text_ids"][k], passages)

  labelled = micro_batches({k: jnp.asarray(v) for k, v in whole.items()}, 2)["labelled_positive_ids"]
  assert np.array_equal(labelled[1], whole["labelled_positive_ids"][1::2])


@pytest.mark.parametrize("packing", [False, True])
def test_each_query_carries_every_positive_its_row_lists(tokenizer, packing):
  """SciFact claims citing several abstracts: each query's labelled positives are its row's every positive
  (as the model reads it: title, text, prompt), padded with the last to the table's most (5); the mask from
  the batch then holds every candidate with such a text but the query's own slot, in the batches where they
  turn up."""
  import json
  rows = [json.loads(line) for line in SCIFACT.read_text().splitlines()]
  clean = TrainData(DataConfig(source=str(SCIFACT), clean_negatives=True, train_group_size=8, passage_max_length=32,
                               passage_prompt="doc: ", packing=packing), tokenizer, global_batch_size=16, seed=0)
  assert clean.labelled_width == 5
  other_positives = 0
  for step in range(12):
    batch = clean.batch(step)
    _, passages, _ = clean.texts(step)
    mask = np.asarray(SrlBatch.of({k: jnp.asarray(v) for k, v in batch.items()}).false_negatives(8))
    for i, row in enumerate(clean.example_indices(step).tolist()):
      texts = ["doc: " + (f"{p['title'].strip()} {p['text']}" if (p.get("title") or "").strip() else p["text"])
               for p in rows[row]["positive_passages"]]
      listed = batch["labelled_positive_ids"][i].tolist()
      distinct = list(dict.fromkeys(text_ids(texts).tolist()))
      assert listed == (distinct + distinct[-1:] * 5)[:5] and passages[i * 8] in texts
      for j, passage in enumerate(passages):
        if j != i * 8 and passage in texts:
          assert mask[i, j], (step, i, j)
          other_positives += passage != passages[i * 8]
  assert other_positives > 0  # some turned up
