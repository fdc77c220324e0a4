"""Whole-word masking, 80/10/10 replacement and random crops, on real text and MiniLM's WordPiece tokenizer.

The texts are the shipped STS-B sentences, SNLI sentences and MS MARCO passages, so the tests need
nothing beside the checkout.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO
from starbucks_jax.data.masking import (IGNORE, bert_replace, num_to_predict, random_crop, whole_word_masks,
                                   word_groups)

DATA = REPO / "data"
MAX_CONTENT = 126  # max_length 128 less [CLS] and [SEP]


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
  import transformers
  return transformers.AutoTokenizer.from_pretrained(str(minilm_dir))


@pytest.fixture(scope="module")
def specials(tokenizer) -> set[str]:
  return set(tokenizer.all_special_tokens)


def read_jsonl(path: Path, column: str, n: int) -> list[str]:
  # split("\n"), not splitlines(): MS MARCO passages hold other line separators (U+2028) inside strings.
  return [json.loads(line)[column] for line in path.read_text().split("\n")[:n]]


def real_texts() -> list[str]:
  """10,949 texts: 200 SNLI and 5,749 STS-B sentences, 5,000 MS MARCO passages (480 over 126 tokens)."""
  snli = (DATA / "quickstart" / "snli_sentences.txt").read_text().splitlines()
  stsb = read_jsonl(DATA / "quickstart" / "stsb_train.jsonl", "sentence1", 5749)
  msmarco = read_jsonl(DATA / "beir" / "msmarco-dl19-slice" / "corpus.jsonl", "text", 5000)
  return snli + stsb + msmarco


@pytest.fixture(scope="module")
def real_ids(tokenizer) -> list[list[int]]:
  """The real texts' WordPiece ids, without special tokens."""
  return tokenizer(real_texts(), add_special_tokens=False, verbose=False)["input_ids"]


@pytest.fixture(scope="module")
def real_tokens(tokenizer, real_ids) -> list[list[str]]:
  """Each real text as the pre-training data frames it: [CLS], a window of up to 126 pieces, [SEP]."""
  rng = np.random.default_rng(0)
  return [[tokenizer.cls_token] + tokenizer.convert_ids_to_tokens(random_crop(x, MAX_CONTENT, rng)) +
          [tokenizer.sep_token] for x in real_ids]


def test_num_to_predict_is_round_at_least_one_and_monotone():
  assert num_to_predict(0.2, 128) == 26 and num_to_predict(0.4, 128) == 51
  assert num_to_predict(0.3, 5) == 2 and num_to_predict(0.15, 3) == 1 and num_to_predict(0.1, 2) == 1
  for rate in (0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.9):
    counts = [num_to_predict(rate, n) for n in range(1, 600)]
    assert all(a <= b for a, b in zip(counts, counts[1:]))
    assert all(c == max(1, round(rate * n)) for n, c in zip(range(1, 600), counts))


def test_word_groups_join_wordpieces_and_skip_specials(tokenizer, specials):
  tokens = ["[CLS]"] + tokenizer.tokenize("The woman is waterskiing near Kaesong.") + ["[SEP]", "[PAD]"]
  assert tokens == ["[CLS]", "the", "woman", "is", "waters", "##ki", "##ing", "near", "ka", "##eson", "##g",
                    ".", "[SEP]", "[PAD]"]
  assert word_groups(tokens, specials) == [[1], [2], [3], [4, 5, 6], [7], [8, 9, 10], [11]]
  # A piece with no word before it starts one; a piece after a special token joins the word before it
  # (the official code does the same).
  assert word_groups(["##a", "b", "[UNK]", "##c", "d"], specials) == [[0], [1, 3], [4]]


@pytest.mark.parametrize("encoder_rate,decoder_rate", [(0.2, 0.4), (0.3, 0.5), (0.15, 0.15)])
def test_mask_counts_whole_words_and_nesting_on_real_texts(real_tokens, specials, encoder_rate,
                                                           decoder_rate):
  """Counts hit round(rate * n) within 1, except where no word the walk was offered could fit.

  The decoder is offered every word until it is full, so when it falls short by s > 1 every word it left
  unmasked is longer than s (only long multi-piece words were left). The encoder is offered only the
  decoder's words (its mask must stay inside the decoder's), so when the decoder fills up on a long word
  the encoder did not take (one of 4+ pieces in a 12-token sentence, say), the encoder can fall short by
  more than 1 while one-piece words stay unmasked. Then every word of the decoder's mask outside the
  encoder's is longer than the shortfall. How often each happens is printed.
  """
  assert len(real_tokens) >= 1000
  short = {"encoder": [0, 0], "decoder": [0, 0]}  # [texts 1 short, texts more than 1 short]
  for k, tokens in enumerate(real_tokens):
    n = len(tokens)
    encoder, decoder = whole_word_masks(tokens, specials, encoder_rate, decoder_rate,
                                        np.random.default_rng([7, k]))
    assert encoder.dtype == decoder.dtype == bool and encoder.shape == decoder.shape == (n,)
    assert not (encoder & ~decoder).any()  # the encoder's masked words are the decoder's too
    assert not any(encoder[i] or decoder[i] for i, t in enumerate(tokens) if t in specials)
    groups = word_groups(tokens, specials)
    for mask in (encoder, decoder):
      assert all(len(set(mask[g].tolist())) == 1 for g in groups), "a word is partly masked"
    offered = {"decoder": groups, "encoder": [g for g in groups if decoder[g[0]]]}
    for name, mask, rate in (("decoder", decoder, decoder_rate), ("encoder", encoder, encoder_rate)):
      wanted, got = num_to_predict(rate, n), int(mask.sum())
      assert wanted == round(rate * n) or (wanted == 1 and round(rate * n) == 0)
      assert got <= wanted, (name, tokens)
      if wanted - got == 1:
        short[name][0] += 1
      if wanted - got > 1:
        short[name][1] += 1
        left = [len(g) for g in offered[name] if not mask[g[0]]]
        assert left and min(left) > wanted - got, (name, wanted, got, left, tokens)
  print(f"\nrates {encoder_rate}/{decoder_rate}, {len(real_tokens)} texts short of num_to_predict by 1 / by "
        f"more: encoder {short['encoder'][0]} / {short['encoder'][1]}, decoder {short['decoder'][0]} / "
        f"{short['decoder'][1]}")
  assert short["encoder"][1] + short["decoder"][1] <= len(real_tokens) // 200  # rare: under 0.5%


def test_masked_share_over_many_texts_is_the_rate(real_tokens, specials):
  n = encoder = decoder = 0
  for k, tokens in enumerate(real_tokens):
    e, d = whole_word_masks(tokens, specials, 0.2, 0.4, np.random.default_rng([1, k]))
    n, encoder, decoder = n + len(tokens), encoder + e.sum(), decoder + d.sum()
  assert abs(encoder / n - 0.2) < 0.005 and abs(decoder / n - 0.4) < 0.005


def test_masks_pick_different_words_for_different_generators(real_tokens, specials):
  tokens = real_tokens[0]
  masks = {tuple(whole_word_masks(tokens, specials, 0.2, 0.4, np.random.default_rng(s))[1])
           for s in range(20)}
  assert len(masks) > 10
  again = whole_word_masks(tokens, specials, 0.2, 0.4, np.random.default_rng(3))
  first = whole_word_masks(tokens, specials, 0.2, 0.4, np.random.default_rng(3))
  assert all(np.array_equal(a, b) for a, b in zip(again, first))


def test_encoder_rate_above_decoder_rate_stays_nested(real_tokens, specials):
  for k, tokens in enumerate(real_tokens[:200]):
    encoder, decoder = whole_word_masks(tokens, specials, 0.4, 0.2, np.random.default_rng(k))
    assert not (encoder & ~decoder).any() and decoder.sum() <= num_to_predict(0.2, len(tokens))


def test_bert_replace_80_10_10(tokenizer, real_ids):
  ids = np.concatenate([np.asarray(x) for x in real_ids])[:120_000]
  assert len(ids) == 120_000
  rng = np.random.default_rng(0)
  mask = rng.random(ids.shape) < 0.8
  inputs, labels = bert_replace(ids, mask, np.random.default_rng(1), mask_token_id=tokenizer.mask_token_id,
                                vocab_size=len(tokenizer))
  assert inputs.dtype == labels.dtype == np.int32 and inputs.shape == labels.shape == ids.shape
  np.testing.assert_array_equal(labels, np.where(mask, ids, IGNORE))
  np.testing.assert_array_equal(inputs[~mask], ids[~mask])  # unmasked positions are untouched
  masked = inputs[mask]
  to_mask = masked == tokenizer.mask_token_id
  kept = masked == ids[mask]
  randomized = ~to_mask & ~kept  # a random draw equal to the original token counts as kept (p = 1/30522)
  assert abs(to_mask.mean() - 0.8) < 0.01
  assert abs(randomized.mean() - 0.1) < 0.01 and abs(kept.mean() - 0.1) < 0.01
  # The random tokens are uniform over the vocabulary: mean and spread of a uniform [0, 30522).
  drawn = masked[randomized]
  assert drawn.min() >= 0 and drawn.max() < len(tokenizer)
  assert abs(drawn.mean() / len(tokenizer) - 0.5) < 0.02 and abs(drawn.std() / len(tokenizer) - 0.2887) < 0.02


def test_bert_replace_keeps_a_2d_batch_and_its_unmasked_positions():
  ids = np.arange(24, dtype=np.int32).reshape(3, 8) + 1000
  mask = np.zeros_like(ids, bool)
  mask[1, 2:5] = True
  inputs, labels = bert_replace(ids, mask, np.random.default_rng(0), mask_token_id=103, vocab_size=30522)
  assert inputs.shape == (3, 8) and np.array_equal(inputs[~mask], ids[~mask])
  assert np.array_equal(labels[mask], ids[mask]) and np.all(labels[~mask] == IGNORE)
  assert ids[1, 2] == 1010  # the input was not written to


def test_random_crop_windows_are_contiguous_and_start_uniformly(tokenizer):
  text = read_jsonl(DATA / "beir" / "msmarco-dl19-slice" / "corpus.jsonl", "text", 1)[0]
  ids = tokenizer(text, add_special_tokens=False)["input_ids"]
  assert len(ids) > 40
  assert random_crop(ids, len(ids), np.random.default_rng(0)) == ids
  starts = []
  for seed in range(2000):
    window = random_crop(ids, 14, np.random.default_rng(seed))
    assert len(window) == 14
    start = next(s for s in range(len(ids) - 13) if ids[s:s + 14] == window)
    starts.append(start)
  counts = np.bincount(starts, minlength=len(ids) - 13)
  assert len(counts) == len(ids) - 13 and counts.min() > 0  # every start, the first and last included
  expected = 2000 / len(counts)
  assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))
