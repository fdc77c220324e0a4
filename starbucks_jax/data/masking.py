"""Whole-word masks, BERT's 80/10/10 replacement and random crops for SMAE pre-training, in numpy.

The algorithm is that of ielab/Starbucks `smae/data.py` (`MaeDataCollatorForWholeWordMask`): one shuffled
walk over a text's WordPiece words picks the decoder's masked words and, among them, the encoder's, so
the encoder mask is a subset of the decoder mask. Each masked position is then replaced as in BERT
(transformers' `DataCollatorForLanguageModeling.torch_mask_tokens`), separately for the encoder and the
decoder. Every random choice comes from the numpy Generator passed in, so a caller that seeds one
generator per example gets the same masks on any host and after any restart.

A text's token count n includes [CLS] and [SEP] (as the official code counts); at most
`num_to_predict(rate, n)` of its tokens are masked. That count never decreases with n, so
`num_to_predict(rate, padded_length)` bounds the masked tokens of every row of a padded batch.
"""

from __future__ import annotations

from typing import Collection, Sequence

import numpy as np

IGNORE = -100  # the label of a position that is not predicted
MASK_SHARE = 0.8  # of the masked positions: replaced by [MASK]
RANDOM_SHARE = 0.5  # of the masked positions not replaced by [MASK]: replaced by a random token


def num_to_predict(rate: float, num_tokens: int) -> int:
  """How many of a text's `num_tokens` tokens (with [CLS] and [SEP]) are masked at `rate`: at least 1."""
  return max(1, int(round(num_tokens * rate)))


def word_groups(tokens: Sequence[str], special_tokens: Collection[str]) -> list[list[int]]:
  """The positions of each whole word: a "##" piece joins the word before it; special tokens are skipped."""
  groups = []
  for i, token in enumerate(tokens):
    if token in special_tokens:
      continue
    if groups and token.startswith("##"):
      groups[-1].append(i)
    else:
      groups.append([i])
  return groups


def whole_word_masks(tokens: Sequence[str], special_tokens: Collection[str], encoder_rate: float,
                     decoder_rate: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Bool masks [len(tokens)] of the encoder's and the decoder's masked positions, whole words only.

  The words are shuffled and walked once. A word is skipped when it would take the positions masked so
  far past max(enc_n, dec_n) (enc_n, dec_n: `num_to_predict` of each rate); otherwise it goes to the
  decoder if it fits within dec_n, and to the encoder too if it also fits within enc_n. The walk stops
  when max(enc_n, dec_n) positions are masked. So neither mask exceeds its count and the encoder's is a
  subset of the decoder's. A mask falls short of its count only when the words it was offered were too
  long for what was left: the decoder is offered every word until it is full; the encoder only the
  decoder's words. With encoder_rate > decoder_rate the encoder is capped by the decoder as well (as in
  the official code); training configs require encoder_rate <= decoder_rate.
  """
  n = len(tokens)
  encoder_n, decoder_n = num_to_predict(encoder_rate, n), num_to_predict(decoder_rate, n)
  limit = max(encoder_n, decoder_n)
  encoder, decoder = np.zeros(n, bool), np.zeros(n, bool)
  groups = word_groups(tokens, special_tokens)
  covered = encoder_count = decoder_count = 0
  for k in rng.permutation(len(groups)):
    if covered >= limit:
      break
    word = groups[k]
    if covered + len(word) > limit:  # a whole word or nothing: try a shorter one
      continue
    covered += len(word)
    if decoder_count + len(word) <= decoder_n:
      decoder[word] = True
      decoder_count += len(word)
      if encoder_count + len(word) <= encoder_n:
        encoder[word] = True
        encoder_count += len(word)
  return encoder, decoder


def bert_replace(ids: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *, mask_token_id: int,
                 vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(inputs, labels), int32 like `ids`: the masked positions replaced as in BERT, and their targets.

  Of the positions where `mask` is true, each becomes [MASK] with probability 0.8; of the rest, each
  becomes a token drawn uniformly from [0, vocab_size) with probability 0.5; the others keep their
  token. labels hold the original token at masked positions and -100 elsewhere.
  """
  ids = np.asarray(ids)
  mask = np.asarray(mask, bool)
  if mask.shape != ids.shape:
    raise ValueError(f"mask shape {mask.shape} differs from ids shape {ids.shape}")
  labels = np.where(mask, ids, IGNORE).astype(np.int32)
  inputs = ids.astype(np.int32)  # a copy
  positions = np.flatnonzero(mask)
  to_mask = rng.random(positions.size) < MASK_SHARE
  to_random = ~to_mask & (rng.random(positions.size) < RANDOM_SHARE)
  random_ids = rng.integers(vocab_size, size=positions.size)
  flat = inputs.reshape(-1)  # a view: writes go to inputs
  flat[positions[to_mask]] = mask_token_id
  flat[positions[to_random]] = random_ids[to_random]
  return inputs, labels


def random_crop(ids, max_tokens: int, rng: np.random.Generator):
  """`ids` when it has at most max_tokens; otherwise a window of max_tokens at a uniformly drawn start."""
  if max_tokens < 1:
    raise ValueError(f"max_tokens must be positive, got {max_tokens}")
  if len(ids) <= max_tokens:
    return ids
  start = int(rng.integers(len(ids) - max_tokens + 1))
  return ids[start:start + max_tokens]
