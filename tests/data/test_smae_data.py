"""SMAE pre-training batches: format, masks in the batch, crops, purity, hosts, streaming, sources, errors.

Real text comes from the shipped files: MS MARCO passages (`data/beir/msmarco-dl19-slice/corpus.jsonl`,
column text), STS-B sentences and SNLI sentences; broken rows are small files written to tmp_path.
"""

import json
import logging
import types
from pathlib import Path

import numpy as np
import pytest

from starbucks_jax.data.batching import default_buckets
from starbucks_jax.data.masking import IGNORE, num_to_predict, word_groups
from starbucks_jax.data.smae import BATCH_KEYS as KEYS, TextData, TextDataConfig
from starbucks_jax.errors import StarbucksError
from tests.helpers import REPO

DATA = REPO / "data"
MSMARCO = DATA / "beir" / "msmarco-dl19-slice" / "corpus.jsonl"
STSB = DATA / "quickstart" / "stsb_train.jsonl"
SNLI_TXT = DATA / "quickstart" / "snli_sentences.txt"


pytestmark = pytest.mark.usefixtures("datasets_cache")  # conftest.py: Arrow caches under tmp


def read_jsonl(path: Path) -> list[dict]:
  # split("\n"), not splitlines(): MS MARCO passages hold other line separators (U+2028) inside strings.
  return [json.loads(line) for line in path.read_text().split("\n") if line]


def write_jsonl(path: Path, rows) -> str:
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def make(tokenizer, source, *, global_batch_size=16, seed=0, process_index=0, process_count=1,
         buckets=None, fixed_lengths=None, max_length=128, **config):
  """Text batches of `source`, 128 tokens unless `max_length` says otherwise."""
  return TextData(TextDataConfig(source=str(source), max_length=max_length, **config), tokenizer,
                  global_batch_size=global_batch_size, seed=seed, process_index=process_index,
                  process_count=process_count, buckets=buckets, fixed_lengths=fixed_lengths)


@pytest.fixture(scope="module")
def passages(tokenizer):
  """All 5,000 MS MARCO passages (480 longer than 126 tokens), 256 texts a step."""
  return make(tokenizer, MSMARCO, global_batch_size=256)


def original_ids(batch: dict, row: int) -> list[int]:
  """A row's unmasked ids: the label where the encoder's input is masked, the input elsewhere."""
  n = int(batch["attention_mask"][row].sum())
  ids, labels = batch["input_ids"][row, :n], batch["labels"][row, :n]
  return np.where(labels != IGNORE, labels, ids).tolist()


def assert_consistent_batch(tokenizer, data: TextData, batch: dict, texts: list[str], max_length: int):
  """Every row: its text's (cropped) ids, masks nested, whole words, no special masked, counts in bounds.

  Returns the number of rows whose encoder / decoder mask falls more than 1 short of num_to_predict.
  """
  assert set(batch) == set(KEYS)
  b, length = batch["input_ids"].shape
  assert b == len(texts) and all(v.shape == (b, length) and v.dtype == np.int32 for v in batch.values())
  specials = set(tokenizer.all_special_tokens)
  content = tokenizer(texts, add_special_tokens=False)["input_ids"]
  far_short = np.zeros(2, int)
  for row in range(b):
    mask = batch["attention_mask"][row]
    n = int(mask.sum())
    assert np.array_equal(mask, (np.arange(length) < n).astype(np.int32))
    for key in ("input_ids", "decoder_input_ids"):
      assert np.all(batch[key][row, n:] == tokenizer.pad_token_id)
    ids = original_ids(batch, row)
    decoder_masked = batch["decoder_labels"][row] != IGNORE
    np.testing.assert_array_equal(np.where(decoder_masked[:n], batch["decoder_labels"][row, :n],
                                           batch["decoder_input_ids"][row, :n]), ids)  # one text, both sides
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id and n <= max_length
    window, full = ids[1:-1], content[row]
    assert len(window) == min(len(full), max_length - 2)
    assert any(full[s:s + len(window)] == window for s in range(len(full) - len(window) + 1))
    encoder_masked = batch["labels"][row] != IGNORE
    assert not (encoder_masked & ~decoder_masked).any()
    for labels in (batch["labels"][row], batch["decoder_labels"][row]):
      assert labels[0] == labels[n - 1] == IGNORE and np.all(labels[n:] == IGNORE)  # [CLS], [SEP], [PAD]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert not any(encoder_masked[i] or decoder_masked[i] for i, t in enumerate(tokens) if t in specials)
    for masked in (encoder_masked, decoder_masked):
      assert all(len(set(masked[g].tolist())) == 1 for g in word_groups(tokens, specials))
    for k, (masked, rate) in enumerate(((encoder_masked, data.config.encoder_mask_rate),
                                        (decoder_masked, data.config.decoder_mask_rate))):
      wanted = num_to_predict(rate, n)
      assert masked.sum() <= wanted <= num_to_predict(rate, length)
      far_short[k] += wanted - masked.sum() > 1
  return far_short


def test_batches_of_real_text_hold_masked_whole_words(tokenizer, passages):
  """1,024 passages: each row is its passage (cropped), masked as `masking` says; see test_masking."""
  far_short, rows = np.zeros(2, int), 0
  for step in range(4):
    batch = passages.batch(step)
    assert batch["input_ids"].shape[1] in default_buckets(128)
    far_short += assert_consistent_batch(tokenizer, passages, batch, passages.texts(step), 128)
    rows += len(batch["input_ids"])
  print(f"\n{rows} passages: encoder more than 1 short of num_to_predict in {far_short[0]}, decoder in "
        f"{far_short[1]}")
  assert rows >= 1000 and far_short.sum() <= rows // 100


def test_texts_follow_the_epoch_order(tokenizer, passages):
  rows = read_jsonl(MSMARCO)
  assert passages.num_examples == 5000 and passages.steps_per_epoch == 19
  for step in (0, 20):
    epoch, position = divmod(step, 19)
    expected = np.random.default_rng([0, epoch]).permutation(5000)[position * 256:(position + 1) * 256]
    np.testing.assert_array_equal(passages.example_indices(step), expected)
    assert passages.texts(step) == [rows[i]["text"] for i in expected]


def test_replacements_are_80_10_10_in_the_batch(tokenizer, passages):
  counts = np.zeros(3)
  for step in range(4):
    batch = passages.batch(step)
    for inputs, labels in ((batch["input_ids"], batch["labels"]),
                           (batch["decoder_input_ids"], batch["decoder_labels"])):
      masked = labels != IGNORE
      to_mask = inputs[masked] == tokenizer.mask_token_id
      kept = inputs[masked] == labels[masked]
      counts += [to_mask.sum(), kept.sum(), (~to_mask & ~kept).sum()]
  assert counts.sum() > 40_000
  share = counts / counts.sum()
  assert abs(share[0] - 0.8) < 0.02 and abs(share[1] - 0.1) < 0.02 and abs(share[2] - 0.1) < 0.02


def test_long_texts_get_random_windows(tokenizer):
  data = make(tokenizer, MSMARCO, global_batch_size=32, max_examples=32, max_length=16)
  assert data.steps_per_epoch == 1  # every step holds the same 32 passages, in a new order
  starts = {}
  full = {text: tokenizer(text, add_special_tokens=False)["input_ids"] for text in data.texts(0)}
  for step in range(12):
    batch, texts = data.batch(step), data.texts(step)
    assert batch["input_ids"].shape == (32, 16) and batch["attention_mask"].all()
    assert_consistent_batch(tokenizer, data, batch, texts, 16)
    for row, text in enumerate(texts):
      window = original_ids(batch, row)[1:-1]
      starts.setdefault(text, set()).add(next(s for s in range(len(full[text])) if
                                              full[text][s:s + 14] == window))
  long = [t for t in full if len(full[t]) > 40]
  assert len(long) > 20 and all(len(starts[t]) > 6 for t in long)


def test_a_batch_is_a_pure_function_of_seed_and_step(tokenizer, passages):
  first = passages.batch(5)
  passages.batch(0), passages.batch(40)  # other steps and epochs in between
  again = make(tokenizer, MSMARCO, global_batch_size=256)
  for batch in (passages.batch(5), again.batch(5)):
    assert all(np.array_equal(first[k], batch[k]) for k in KEYS)
  # Another step or seed masks the same texts anew: here every step holds the same 32 passages.
  small = {seed: make(tokenizer, MSMARCO, global_batch_size=32, max_examples=32, seed=seed)
           for seed in (0, 1)}
  runs = [(small[0], 0), (small[0], 1), (small[1], 0)]
  masks = []
  for data, step in runs:
    batch, rows = data.batch(step), np.argsort(data.example_indices(step))  # rows in example order
    masks.append((batch["decoder_labels"] != IGNORE)[rows])
  for other in masks[1:]:
    assert sum(not np.array_equal(masks[0][i], other[i]) for i in range(32)) >= 30


def test_two_hosts_together_give_the_single_host_batch(tokenizer):
  single = make(tokenizer, STSB, text_column="sentence1", global_batch_size=32, fixed_lengths=True)
  hosts = [make(tokenizer, STSB, text_column="sentence1", global_batch_size=32, process_index=k,
                process_count=2) for k in range(2)]
  assert all(h.fixed_lengths and h.local_batch_size == 16 for h in hosts)
  for step in (0, 7, single.steps_per_epoch + 1):
    whole, halves = single.batch(step), [h.batch(step) for h in hosts]
    for key in KEYS:
      assert halves[0][key].shape == halves[1][key].shape == (16, 128)
      np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])


def test_streaming_reaches_any_step_and_wraps_into_new_epochs(tokenizer, tmp_path, caplog):
  rows = [{"text": s} for s in SNLI_TXT.read_text().splitlines()[:20]]
  source = write_jsonl(tmp_path / "stream.jsonl", rows)
  walked = make(tokenizer, source, global_batch_size=8, streaming=True, shuffle_buffer=16)
  assert walked.num_examples is None and walked.steps_per_epoch is None
  batches = [walked.batch(step) for step in range(4)]  # 32 rows: over an epoch and a half
  texts = [walked.texts(step) for step in range(4)]  # asks for earlier steps: a restart, same texts
  assert sorted(texts[0] + texts[1] + texts[2][:4]) == sorted(r["text"] for r in rows)  # epoch 0
  assert texts[2][4:] + texts[3] != (texts[0] + texts[1])[:12]  # epoch 1: shuffled anew
  for step, batch in enumerate(batches):
    assert_consistent_batch(tokenizer, walked, batch, texts[step], 128)
  direct = make(tokenizer, source, global_batch_size=8, streaming=True, shuffle_buffer=16)
  with caplog.at_level(logging.INFO, logger="starbucks_jax.data"):
    third = direct.batch(3)
  assert any("skipping 24 streamed rows" in r.getMessage() for r in caplog.records)
  assert all(np.array_equal(third[k], batches[3][k]) for k in KEYS)
  assert all(np.array_equal(direct.batch(1)[k], batches[1][k]) for k in KEYS)  # backwards: a restart


def test_streaming_hosts_share_the_stream(tokenizer, tmp_path):
  lines = SNLI_TXT.read_text().splitlines()[:64]
  source = write_jsonl(tmp_path / "stream.jsonl", [{"text": s} for s in lines])
  hosts = [make(tokenizer, source, global_batch_size=16, streaming=True, process_index=k, process_count=2)
           for k in range(2)]
  texts = [h.texts(0) + h.texts(1) + h.texts(2) + h.texts(3) for h in hosts]
  assert not set(texts[0]) & set(texts[1]) and len(set(texts[0]) | set(texts[1])) == 64
  assert hosts[0].batch(2)["input_ids"].shape == hosts[1].batch(2)["input_ids"].shape == (8, 128)


def test_txt_source_one_text_a_line(tokenizer):
  lines = SNLI_TXT.read_text().splitlines()
  data = make(tokenizer, SNLI_TXT, global_batch_size=64)
  assert data.num_examples == 200 and data.steps_per_epoch == 3
  assert data.texts(1) == [lines[i] for i in data.example_indices(1)]
  assert_consistent_batch(tokenizer, data, data.batch(1), data.texts(1), 128)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory) -> Path:
  """A tiny TFDS text data set prepared in ArrayRecord format, which needs no TensorFlow."""
  tfds = pytest.importorskip("tensorflow_datasets")
  folder = tmp_path_factory.mktemp("tfds")
  lines = SNLI_TXT.read_text().splitlines()[:40]

  class StarbucksTestText(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {"text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      yield from ((i, {"text": line}) for i, line in enumerate(lines))

  StarbucksTestText(data_dir=str(folder), file_format="array_record").download_and_prepare()
  return folder


def test_tfds_text(tokenizer, tfds_dir):
  data = make(tokenizer, "tfds:starbucks_test_text", tfds_data_dir=str(tfds_dir), global_batch_size=8)
  assert data.num_examples == 40 and data.steps_per_epoch == 5
  texts = data.texts(2)
  assert all(isinstance(t, str) for t in texts) and set(texts) <= set(SNLI_TXT.read_text().splitlines())
  assert_consistent_batch(tokenizer, data, data.batch(2), texts, 128)
  with pytest.raises(StarbucksError, match="streaming is for hf: and local sources"):
    make(tokenizer, "tfds:starbucks_test_text", tfds_data_dir=str(tfds_dir), streaming=True)


def test_missing_text_column_names_the_columns(tokenizer, tmp_path):
  with pytest.raises(StarbucksError, match=r"stsb_train.jsonl: has no column 'text' \(data.text_column\); "
                                           r"its columns are \['score', 'sentence1', 'sentence2'\]"):
    make(tokenizer, STSB)
  source = write_jsonl(tmp_path / "s.jsonl", [{"body": "a text"}] * 20)
  with pytest.raises(StarbucksError, match=r"s.jsonl: has no column 'text' .*\['body'\]"):
    make(tokenizer, source, streaming=True).batch(0)


@pytest.mark.parametrize("value,problem", [("  ", "empty text"), (None, r"missing \(null\)")])
def test_blank_text_rows_are_named(tokenizer, tmp_path, value, problem):
  rows = [{"text": f"sentence number {i}"} for i in range(20)]
  rows[6]["text"] = value
  source = write_jsonl(tmp_path / "bad.jsonl", rows)
  with pytest.raises(StarbucksError, match=f"bad.jsonl: row 7, column 'text': {problem}"):
    make(tokenizer, source)
  stream = make(tokenizer, source, streaming=True, global_batch_size=20, shuffle_buffer=1)
  with pytest.raises(StarbucksError, match=rf"bad.jsonl: streamed row 7 of epoch 0 \(host 0 of 1, after "
                                           rf"shuffling\), column 'text': {problem}"):
    stream.batch(0)


def test_blank_line_of_a_txt_file_is_named(tokenizer, tmp_path):
  lines = SNLI_TXT.read_text().splitlines()[:20]
  lines[11] = ""
  (tmp_path / "lines.txt").write_text("\n".join(lines) + "\n")
  with pytest.raises(StarbucksError, match="lines.txt: row 12, column 'text': empty text"):
    make(tokenizer, tmp_path / "lines.txt")


@pytest.mark.parametrize("changes,message", [
    ({"encoder_mask_rate": 0.5, "decoder_mask_rate": 0.3}, "0 < data.encoder_mask_rate <= "
                                                          "data.decoder_mask_rate < 1"),
    ({"encoder_mask_rate": 0.0}, "encoder_mask_rate=0.0"),
    ({"decoder_mask_rate": 1.0}, "decoder_mask_rate=1.0"),
    ({"max_length": 2}, "data.max_length must be an integer of at least 3, got 2"),
    ({"shuffle_buffer": 0}, "data.shuffle_buffer must be an integer of at least 1"),
    ({"source": " "}, "data.source is not set"),
])
def test_bad_config_values_are_named(changes, message):
  with pytest.raises(StarbucksError, match=message.replace("(", r"\(").replace(")", r"\)")):
    TextDataConfig(**{"source": str(SNLI_TXT), **changes})


@pytest.mark.parametrize("size,count,message", [
    (256, 1, "snli_sentences.txt has 200 texts, fewer than one global batch of 256"),
    (33, 2, "global batch size 33 is not divisible by the 2 processes"),
])
def test_batch_sizes_are_checked(tokenizer, size, count, message):
  with pytest.raises(StarbucksError, match=message):
    make(tokenizer, SNLI_TXT, global_batch_size=size, process_count=count)


def test_missing_file_and_tokenizer_without_mask_are_named(tokenizer):
  with pytest.raises(StarbucksError, match="nowhere/text.txt does not exist"):
    make(tokenizer, "nowhere/text.txt")
  with pytest.raises(StarbucksError, match="nowhere/text.txt does not exist"):
    make(tokenizer, "nowhere/text.txt", streaming=True)
  no_mask = types.SimpleNamespace(cls_token_id=101, sep_token_id=102, pad_token_id=0, mask_token_id=None)
  with pytest.raises(StarbucksError, match="the tokenizer has no mask token"):
    make(no_mask, SNLI_TXT)


def test_config_from_config_dict():
  import ml_collections
  cd = ml_collections.ConfigDict({"source": "hf:HuggingFaceFW/fineweb:sample-10BT", "streaming": True,
                                  "max_length": 256, "max_examples": None, "tfds_data_dir": None})
  assert TextDataConfig.from_config_dict(cd) == TextDataConfig(
      source="hf:HuggingFaceFW/fineweb:sample-10BT", streaming=True, max_length=256)
  with pytest.raises(StarbucksError, match=r"unknown field\(s\) kind, mask_rate"):
    TextDataConfig.from_config_dict({"source": "x.txt", "kind": "text", "mask_rate": 0.3})
  with pytest.raises(StarbucksError, match="source is not set"):
    TextDataConfig.from_config_dict({"max_length": 64})


def test_hub_streaming_passes_name_config_split_and_shuffles(tokenizer, monkeypatch):
  import datasets
  calls = []
  lines = SNLI_TXT.read_text().splitlines()[:40]

  def fake_load_dataset(name, config=None, **kwargs):
    calls.append((name, config, kwargs))
    rows = lambda: ({"text": t, "id": i} for i, t in enumerate(lines))
    return datasets.IterableDataset.from_generator(rows)

  monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
  data = make(tokenizer, "hf:someone/web:sample", split="validation", streaming=True, global_batch_size=8,
              shuffle_buffer=8)
  assert calls == [("someone/web", "sample", {"split": "validation", "streaming": True})]
  texts = data.texts(0) + data.texts(1) + data.texts(2) + data.texts(3) + data.texts(4)
  assert sorted(texts) == sorted(lines) and texts != lines
