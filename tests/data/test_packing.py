"""Packed rows: the layout (`data/packing.py`) and packed SRL and SMAE batches from real text.

Every text of a packed batch must come back whole from its segment, with positions restarting at 0, and
the same texts, in the same global numbering, as the unpacked batch of the same step and host.
"""

import numpy as np
import pytest

from starbucks_jax.data import packing
from starbucks_jax.data.masking import IGNORE
from starbucks_jax.data.smae import TextData, TextDataConfig
from starbucks_jax.data.srl import DataConfig, TrainData
from starbucks_jax.errors import StarbucksError
from tests.helpers import REPO

SNLI = REPO / "data" / "quickstart" / "snli_triplets.jsonl"
STSB = REPO / "data" / "quickstart" / "stsb_train.jsonl"

pytestmark = pytest.mark.usefixtures("datasets_cache")


def texts_of(batch: dict, column: str = "input_ids") -> dict[int, tuple]:
  """{text id: its tokens} read back from a packed batch, checking each segment is contiguous."""
  out = {}
  for row_ids, row_values, row_positions in zip(batch["segment_ids"], batch[column], batch["position_ids"]):
    for text in sorted(set(row_ids.tolist()) - {packing.PAD_SEGMENT}):
      where = np.flatnonzero(row_ids == text)
      assert np.array_equal(where, np.arange(where[0], where[0] + len(where)))  # one contiguous span
      assert np.array_equal(row_positions[where], np.arange(len(where)))       # positions restart
      assert text not in out  # a text lives in one row
      out[text] = tuple(row_values[where].tolist())
  return out


def unpadded(ids: np.ndarray, mask: np.ndarray) -> list[tuple]:
  return [tuple(row[m > 0].tolist()) for row, m in zip(ids, mask)]


def test_first_fit_decreasing_fills_rows_and_keeps_every_text_whole():
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 33, size=200).tolist()
  texts = [list(range(100 * i, 100 * i + n)) for i, n in enumerate(lengths)]
  batch = packing.pack({"input_ids": texts}, {"input_ids": 0}, list(range(200)), length=32, rows=1, row_multiple=4)
  assert texts_of(batch) == {i: tuple(t) for i, t in enumerate(texts)}
  assert batch["segment_ids"].shape[1] == 32 and packing.packed_rows(batch) % 4 == 0
  real = int(batch["attention_mask"].sum())
  assert real == sum(lengths)
  assert packing.packed_rows(batch) * 32 < 1.1 * real + 4 * 32  # first-fit decreasing wastes little
  assert np.all((batch["segment_ids"] == packing.PAD_SEGMENT) == (batch["attention_mask"] == 0))
  # A fixed row count is kept when the texts fit, and padded rows can be added for other hosts.
  fixed = packing.pack({"input_ids": texts[:10]}, {"input_ids": 0}, list(range(10)), length=32, rows=12)
  assert packing.packed_rows(fixed) == 12
  grown = packing.pad_to_rows(fixed, 16, {"input_ids": 0})
  assert packing.packed_rows(grown) == 16 and texts_of(grown) == texts_of(fixed)
  with pytest.raises(ValueError):
    packing.first_fit([33], 32)


def test_packed_groups_hold_the_unpacked_micro_batches_on_every_host(tokenizer):
  """pack_groups 2 over two hosts: the global rows' strided split (the step's, `training/step.py`) hands
  micro-batch m exactly the unpacked micro-batch m's texts (queries m, m + 2, ... of the global batch,
  then their passages), numbered as a batch of its own."""
  config = dict(source=str(SNLI), query_max_length=32, passage_max_length=32)
  ref = TrainData(DataConfig(**config, same_length=False), tokenizer, global_batch_size=16, seed=3).batch(4)
  hosts = [TrainData(DataConfig(**config, packing=True, pack_length=64), tokenizer, global_batch_size=16, seed=3,
                     process_index=i, process_count=2, row_multiple=2, pack_groups=2) for i in (0, 1)]
  batches = [host.batch(4) for host in hosts]
  rows = max(packing.packed_rows(b) for b in batches)
  batches = [packing.pad_to_rows(b, rows, hosts[0].row_pads(), groups=2) for b in batches]
  merged = {k: np.concatenate([b[k] for b in batches]) for k in ("input_ids", "segment_ids", "position_ids")}
  queries = unpadded(ref["query_input_ids"], ref["query_attention_mask"])
  passages = unpadded(ref["passage_input_ids"], ref["passage_attention_mask"])
  for m in (0, 1):
    group = {k: packing.split_rows(v, 2)[m] for k, v in merged.items()}
    expected = queries[m::2] + [p for j in range(m, 16, 2) for p in passages[2 * j:2 * j + 2]]
    assert texts_of(group) == dict(enumerate(expected))
  with pytest.raises(StarbucksError, match="split into 3 equal parts"):
    TrainData(DataConfig(**config, packing=True), tokenizer, global_batch_size=16, seed=3, pack_groups=3)


def test_packed_srl_batches_hold_the_unpacked_texts_under_global_ids(tokenizer):
  """Two hosts' packed batches together hold exactly the single-host unpacked batch's texts: queries
  numbered 0..B-1, passages B.. in query-major order, whichever host packed them."""
  config = dict(source=str(SNLI), query_max_length=32, passage_max_length=32)
  plain = TrainData(DataConfig(**config, same_length=False), tokenizer, global_batch_size=16, seed=3)
  hosts = [TrainData(DataConfig(**config, packing=True, pack_length=64), tokenizer, global_batch_size=16, seed=3,
                     process_index=i, process_count=2, row_multiple=2) for i in (0, 1)]
  for step in (0, 5):
    ref = plain.batch(step)
    expected = unpadded(ref["query_input_ids"], ref["query_attention_mask"])
    expected += unpadded(ref["passage_input_ids"], ref["passage_attention_mask"])
    found = {}
    for host in hosts:
      batch = host.batch(step)
      assert batch["input_ids"].shape == (host.pack_rows, 64) and host.pack_rows % 2 == 0
      assert batch["query_lengths"].shape == (8,) and batch["passage_lengths"].shape == (16,)
      found.update(texts_of(batch))
    assert found == dict(enumerate(expected))
    again = TrainData(DataConfig(**config, packing=True, pack_length=64), tokenizer, global_batch_size=16, seed=3,
                      process_index=1, process_count=2, row_multiple=2).batch(step)
    assert all(np.array_equal(again[k], hosts[1].batch(step)[k]) for k in again)  # a pure function of the step
  # Packing is the point: fewer tokens than one row per text at the max length (what two hosts pad to).
  assert hosts[0].pack_rows * 64 < 0.7 * 24 * 32


def test_packed_scored_pairs_keep_their_labels(tokenizer):
  data = TrainData(DataConfig(source=str(STSB), packing=True), tokenizer, global_batch_size=8, seed=0)
  plain = TrainData(DataConfig(source=str(STSB)), tokenizer, global_batch_size=8, seed=0)
  assert np.array_equal(data.batch(2)["labels"], plain.batch(2)["labels"])


def test_packed_smae_batches_hold_the_unpacked_texts_masks_and_labels(tokenizer):
  config = dict(source=str(SNLI), text_column="anchor", max_length=64)
  plain = TextData(TextDataConfig(**config), tokenizer, global_batch_size=16, seed=1).batch(4)
  packed_data = TextData(TextDataConfig(**config, packing=True), tokenizer, global_batch_size=16, seed=1)
  packed = packed_data.batch(4)
  assert packed["text_lengths"].tolist() == plain["attention_mask"].sum(1).tolist()
  mask = plain["attention_mask"]
  for column in ("input_ids", "labels", "decoder_input_ids", "decoder_labels"):
    assert texts_of(packed, column) == dict(enumerate(unpadded(plain[column], mask))), column
  assert np.all(packed["labels"][packed["attention_mask"] == 0] == IGNORE)
  assert packed["input_ids"].shape[0] == packed_data.pack_rows < 16


@pytest.mark.parametrize("config, message", [
    (dict(query_max_length=64, pack_length=32), "data.pack_length 32 is shorter than the longest text"),
    (dict(pack_rows=0), "data.pack_rows must be None or a positive integer"),
])
def test_bad_packing_settings_are_refused(config, message):
  with pytest.raises(StarbucksError, match=message):
    DataConfig(source=str(SNLI), packing=True, **config)
  with pytest.raises(StarbucksError, match="data.pack_length 8 is shorter than data.max_length 16"):
    TextDataConfig(source=str(SNLI), max_length=16, packing=True, pack_length=8)
