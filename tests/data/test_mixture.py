"""Mixtures of training sources (`data/mixture.py`): the order, per-source batches, hosts, mixed batches and
the config's checks, on the shipped SNLI triplets, SciFact groups and STS-B train pairs."""

import numpy as np
import pytest

from starbucks_jax.data.mixture import MixtureOrder, mixed_rows, open_data, step_shares
from starbucks_jax.data.srl import DataConfig, TrainData
from starbucks_jax.errors import StarbucksError
from tests.helpers import REPO

DATA = REPO / "data" / "quickstart"
SOURCES = {
    "snli": dict(source=str(DATA / "snli_triplets.jsonl"), max_examples=96),
    "scifact": dict(source=str(DATA / "scifact_train.jsonl"), train_group_size=3, passage_max_length=64,
                    max_examples=48, query_prompt="{name}: {instruction}: ", instruction="find the evidence"),
    "stsb": dict(source=str(DATA / "stsb_train.jsonl"), objective="cosent", max_examples=64),
}


def mixture(tokenizer, sources=SOURCES, hosts=(0, 1), **fields):
  config = DataConfig.from_config_dict(dict(mixture=sources, query_max_length=32, passage_max_length=32, **fields))
  return open_data(config, tokenizer, global_batch_size=8, seed=3, process_index=hosts[0], process_count=hosts[1])


@pytest.fixture(scope="module")
def mixed(tokenizer):
  return mixture(tokenizer)


def test_the_order_deals_each_source_its_own_batches_in_turn():
  order = MixtureOrder(seed=5, shares=[3, 1, 2])
  epoch = [order(step) for step in range(12)]
  for k, share in enumerate([3, 1, 2]):
    within = [w for source, w in epoch if source == k]
    assert within == list(range(2 * share)), (k, within)  # each source's batches in order, none skipped
  assert [s for s, _ in epoch[:6]] != [0, 0, 0, 1, 2, 2]  # dealt at random, not source after source
  fresh = MixtureOrder(seed=5, shares=[3, 1, 2])
  assert [fresh(step) for step in (11, 0, 7)] == [epoch[11], epoch[0], epoch[7]]  # a pure function of the step
  assert [MixtureOrder(6, [3, 1, 2])(s) for s in range(6)] != epoch[:6]


def test_shares_follow_sizes_or_weights():
  assert list(step_shares([12, 3, 8], [1, 1, 1], "size")) == [12, 3, 8]
  assert list(step_shares([12, 3, 8], [1, 1, 2], "weights")) == [6, 6, 11]  # 23 steps: 5.75, 5.75, 11.5
  assert sum(step_shares([7, 5], [0.3, 0.7], "weights")) == 12
  assert mixed_rows(16, [12, 3, 8], 2) == [8, 2, 6]


def test_each_batch_is_its_sources_own_batch(mixed, tokenizer):
  from starbucks_jax.data.mixture_config import source_block
  assert mixed.source_names == ("scifact", "snli", "stsb")
  assert mixed.steps_per_epoch == 48 // 8 + 96 // 8 + 64 // 8
  assert {mixed.source_of(step) for step in range(mixed.steps_per_epoch)} == {0, 1, 2}
  alone = [TrainData(source_block(mixed.config, s), tokenizer, global_batch_size=8, seed=3) for s in mixed.sources]
  for step in range(5):
    source, within = mixed.order(step)
    assert mixed.texts(step)[:2] == alone[source].texts(within)[:2]
    expected = alone[source].batch(within)
    for key, value in mixed.batch(step).items():
      np.testing.assert_array_equal(value, expected[key])
  queries, passages, scores = mixed.texts(next(s for s in range(30) if mixed.source_of(s) == 0))
  assert all(q.startswith("scifact: find the evidence: ") for q in queries) and len(passages) == 3 * 8
  assert scores is None
  _, _, scores = mixed.texts(next(s for s in range(30) if mixed.source_of(s) == 2))
  assert scores is not None and scores.shape == (8,)


def test_a_one_source_mixture_is_the_plain_source(tokenizer):
  one = mixture(tokenizer, {"snli": SOURCES["snli"]})
  plain = TrainData(DataConfig(source=SOURCES["snli"]["source"], max_examples=96, query_max_length=32,
                               passage_max_length=32), tokenizer, global_batch_size=8, seed=3)
  for step in (0, 5, 11, 12, 30):  # on into later epochs
    assert one.texts(step) == plain.texts(step)


def test_two_hosts_read_disjoint_rows_that_make_one_hosts_batch(mixed, tokenizer):
  hosts = [mixture(tokenizer, hosts=(h, 2)) for h in (0, 1)]
  for step in range(6):
    assert hosts[0].source_of(step) == hosts[1].source_of(step) == mixed.source_of(step)
    halves = [h.texts(step) for h in hosts]
    whole = mixed.texts(step)
    assert halves[0][0] + halves[1][0] == whole[0] and halves[0][1] + halves[1][1] == whole[1]
    assert not set(halves[0][0]) & set(halves[1][0]) or len(set(whole[0])) < len(whole[0])


def test_mixed_batches_hold_every_sources_share(tokenizer):
  sources = {"snli": SOURCES["snli"], "more": dict(SOURCES["snli"], source=str(DATA / "snli_triplets.jsonl"),
                                                   max_examples=32)}
  data = mixture(tokenizer, sources, mix_sources=True)
  assert data.rows == (2, 6)  # "more" (32 rows) and "snli" (96 rows), in name order, 1:3 of 8
  batch = data.batch(0)
  assert batch["query_input_ids"].shape[0] == 8 and batch["passage_input_ids"].shape[0] == 16
  queries, passages, _ = data.texts(0)
  assert queries[:2] == data.parts[0].texts(0)[0] and queries[2:] == data.parts[1].texts(0)[0]


def test_a_scored_source_takes_clean_negatives_only_from_its_own_entry(tokenizer):
  """With the data block's clean_negatives on, the other sources' batches carry text ids and the scored one's
  none (nothing else of it changes); set in its own entry, it keeps it (the task then refuses it)."""
  ids = {"query_text_ids", "passage_text_ids", "labelled_positive_ids"}
  clean, plain = mixture(tokenizer, clean_negatives=True), mixture(tokenizer)
  assert [p.config.clean_negatives for p in clean.parts] == [True, True, False]  # scifact, snli, stsb
  for step in range(8):
    batch, default = clean.batch(step), plain.batch(step)
    assert set(batch) == set(default) | (set() if clean.source_of(step) == 2 else ids)
    for key, value in default.items():
      np.testing.assert_array_equal(batch[key], value)
  own = mixture(tokenizer, dict(SOURCES, stsb=dict(SOURCES["stsb"], clean_negatives=True)), clean_negatives=True)
  assert own.parts[2].config.clean_negatives
  assert not mixture(tokenizer, dict(SOURCES, snli=dict(SOURCES["snli"], clean_negatives=False)),
                     clean_negatives=True).parts[1].config.clean_negatives


def test_mixed_batches_join_the_sources_labelled_positives(tokenizer):
  """SNLI triplets (one positive a query) and SciFact groups (its first 48 rows list up to 2) in one batch:
  the batch's labelled positives are 2 wide, SNLI's rows padded with their one id."""
  sources = {"snli": SOURCES["snli"], "scifact": dict(SOURCES["scifact"], train_group_size=2)}
  data = mixture(tokenizer, sources, mix_sources=True, clean_negatives=True)
  batch = data.batch(0)
  widths = [part.labelled_width for part in data.parts]
  assert widths == [2, 1] and batch["labelled_positive_ids"].shape == (8, 2)
  rows = data.rows[0]
  np.testing.assert_array_equal(batch["labelled_positive_ids"][:rows], data.parts[0].batch(0)["labelled_positive_ids"])
  snli = data.parts[1].batch(0)["labelled_positive_ids"]
  np.testing.assert_array_equal(batch["labelled_positive_ids"][rows:], np.repeat(snli, 2, axis=1))
  np.testing.assert_array_equal(snli[:, 0], data.parts[1].batch(0)["passage_text_ids"][::2])


@pytest.mark.parametrize("fields, message", [
    (dict(source="x.jsonl"), "data.source and data.mixture are both set"),
    (dict(sampling="random"), "data.sampling must be one of size, weights"),
    (dict(mixture={"a": dict(source="x.jsonl", packing=True)}), "sets packing, which the sources share"),
    (dict(mixture={"a": dict(source="x.jsonl", weight=0)}), "data.mixture.a.weight must be a positive number"),
    (dict(mixture={"a": dict(kind="pairs")}), "data.mixture.a must be a block of settings with a source"),
    (dict(mixture={"a/b": dict(source="x.jsonl")}), "without '/'"),
])
def test_bad_mixtures_are_named(fields, message):
  with pytest.raises(StarbucksError, match=message):
    DataConfig.from_config_dict({"mixture": SOURCES, **fields})


def test_a_sources_unknown_field_and_bad_source_are_named(tokenizer):
  with pytest.raises(StarbucksError, match=r"config.data.mixture.snli has unknown field\(s\) colour"):
    mixture(tokenizer, {"snli": dict(SOURCES["snli"], colour="red")})
  with pytest.raises(StarbucksError, match="missing.jsonl does not exist"):
    mixture(tokenizer, {"snli": dict(SOURCES["snli"], source=str(DATA / "missing.jsonl"))})
  with pytest.raises(StarbucksError, match="mixed sources need one kind of loss and one group size"):
    mixture(tokenizer, mix_sources=True)
