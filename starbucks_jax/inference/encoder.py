"""Encoding texts with a pretrained or trained model at any (layer, dim) size.

    enc = Encoder.from_pretrained("path/to/hf_folder")                # or a training workdir [, step=N]
    vectors = enc.encode(texts, layer=4, dim=128)                     # [len(texts), 128] float32
    per_layer = enc.encode_layers(texts, layers=(2, 4, 6))           # one pass, every layer asked for
    same = enc.encode(texts, layer=4, dim=128, packing=True)          # texts end to end in rows
    queries = enc.encode(texts, prompt=enc.prompts.get("query"))      # prompt + text, as sentence-transformers

Texts are sorted by length and padded to a few bucket lengths (`bucket_lengths`), with a fixed batch
size, so at most one compiled shape exists per bucket.

With `packing=True` they are laid end to end in rows instead (`data/packing.pack`: attention within a
text, positions restarting in each, pooling per text), so few pad tokens are computed, and a call compiles
one shape (`packed_passes`): rows of its longest text's bucket length, at most batch_size x max_length
tokens per forward pass (the bucketed path's largest batch), and a fixed number of texts per pass. Each
text's vectors are those of the padded path, up to float32 rounding. The shape follows the texts'
lengths and count, so separate calls may compile separate shapes: give one call many texts.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from starbucks_jax.data.packing import first_fit, pack
from starbucks_jax.data.prompts import check, with_prompt
from starbucks_jax.errors import StarbucksError
from starbucks_jax.hf.load import load_tokenizer
from starbucks_jax.model import pooling as pooling_lib
from starbucks_jax.model.config import EncoderConfig
from starbucks_jax.model.dense_head import apply_dense_head
from starbucks_jax.model.registry import family_of, pooling_or_default
from starbucks_jax.pairs import check_pair
from starbucks_jax.runtime import workdir

log = logging.getLogger(__name__)

SHOW_PROGRESS_FROM_BATCHES = 8  # the progress bar appears from this many batches on


def bucket_lengths(max_length: int, smallest: int = 12) -> list[int]:
  """12, 16, 24, 32, 48, 64, 96, ... below `max_length`, then `max_length` itself.

  Steps of x1.5 and x4/3 pad real text less than powers of two (measured on STS-B and MS MARCO
  passages), for under twice the number of compiled shapes. The 12 is for sentences, most of whose
  batches have 15 tokens or fewer (BENCHMARKS.md, "Results (CPU, bfloat16)": the padding of each choice).
  """
  buckets, length = [], 8
  while length < max_length:
    buckets += [b for b in (length, length * 3 // 2) if smallest <= b < max_length]
    length *= 2
  return buckets + [max_length]


def padded_length(longest: int, max_length: int) -> int:
  """The bucket a batch whose longest text has `longest` tokens is padded to."""
  return next(b for b in bucket_lengths(max_length) if b >= longest)


@functools.partial(jax.jit, static_argnames=("config", "num_layers", "layers", "pooling", "dtype", "num_texts"))
def pooled_layers(params, input_ids, attention_mask, segment_ids=None, position_ids=None, *, config, num_layers,
                  layers, pooling, dtype, num_texts=None):
  """{layer: [batch, hidden] pooled vectors} of one compiled forward pass that stops at `num_layers`; of packed
  rows (`segment_ids`, `position_ids`, `num_texts`: `data/packing.py`), [num_texts, hidden], one per text; through
  the model's Dense modules where it has them (`model/dense_head.py`), so that the cut follows them."""
  out = family_of(config).apply(params, input_ids, attention_mask, config=config, num_layers=num_layers, dtype=dtype,
                                segment_ids=segment_ids, position_ids=position_ids, num_texts=num_texts)
  return {n: apply_dense_head(params, out.pooled(n, pooling)) for n in layers}


def packed_passes(lengths: Sequence[int], length: int, budget: int) -> tuple[list[np.ndarray], int]:
  """(the texts of each forward pass, the rows of the fullest pass) that pack texts of these `lengths` into
  rows of `length` tokens, at most `budget` tokens per pass.

  Pass c of C takes every C-th text of the longest-first order from the c-th on: every pass holds the same
  mix of long and short texts (short ones fill the rows' ends) and about the same tokens (pass 0 holds at
  most one text, and one longest text's tokens, more than any other), so one row count fits them all with
  little to spare and the last pass is no emptier than the others. C starts at the least count the tokens
  allow and grows until the fullest pass fits the budget. The rows are the fullest pass's, not the
  budget's, so that a few texts cost a few rows."""
  lengths = np.asarray(lengths)
  most_rows = max(1, budget // length)
  order = np.argsort(-lengths, kind="stable")
  count = min(len(lengths), math.ceil(lengths.sum() / (most_rows * length)))
  while True:
    passes = [order[c::count] for c in range(count)]
    rows = max(first_fit(lengths[texts], length)[2] for texts in passes)
    if rows <= most_rows:  # at the latest when every pass is one text
      return passes, rows
    count = min(len(lengths), max(count + 1, math.ceil(count * rows / most_rows)))


class Encoder:
  """A model, its tokenizer and its default pooling, ready to encode text; `prompts`: the model's
  sentence-transformers prompts ({"query": ..., "document": ...}: a folder's, or a run's), for callers to pick."""

  def __init__(self, config: EncoderConfig, params: dict, tokenizer, *, default_pooling: str | None = None,
               max_length: int = 512, dtype=jnp.float32, prompts: Mapping[str, str] | None = None):
    self.config = config
    self.prompts = dict(prompts or {})
    self.params = params
    self.tokenizer = tokenizer
    self.default_pooling = pooling_or_default(default_pooling, config)
    self.max_length = min(max_length, config.max_text_length)
    self.dtype = dtype

  @classmethod
  def from_pretrained(cls, name_or_path: str | os.PathLike, *, step: int | None = None, dtype=jnp.float32,
                      max_length: int | None = None) -> "Encoder":
    """A Hugging Face folder or hub name, or a training workdir at its newest checkpoint (or `step`).

    Pooling and max length default to the folder's sentence-transformers settings (or the run's), else
    the model family's default pooling and the model's position limit."""
    source = workdir.resolve(name_or_path, step=step)
    config, serving = source.config(), source.serving()
    params, saved_step = source.load_params()
    if saved_step is not None:
      log.info("encoding with %s at step %d", source.workdir, saved_step)
    if max_length is None:
      max_length = serving.max_seq_length or config.max_text_length
    return cls(config, params, load_tokenizer(source.model_dir), default_pooling=pooling_or_default(serving.pooling, config),
               max_length=max_length, dtype=dtype, prompts=serving.prompts)

  def encode(self, texts: Sequence[str], *, layer: int | None = None, dim: int | None = None,
             pooling: str | None = None, normalize: bool = False, batch_size: int = 32,
             max_length: int | None = None, show_progress: bool | None = None, packing: bool = False,
             prompt: str | None = None) -> np.ndarray:
    """[len(texts), dim] float32: layer `layer`'s pooled output cut to its first `dim` coordinates.

    `prompt`: put before every text, as `SentenceTransformer.encode(prompt=...)` (its tokens count in
    max_length); a model trained with prompts embeds queries with `self.prompts["query"]`, say."""
    layer = self.config.num_hidden_layers if layer is None else layer
    dim = self.config.hidden_size if dim is None else dim
    check_pair(self.config, layer, dim)
    layer, dim = int(layer), int(dim)
    pooled = self.encode_layers(texts, layers=(layer,), pooling=pooling, batch_size=batch_size,
                                max_length=max_length, show_progress=show_progress, packing=packing,
                                prompt=prompt)[layer]
    return np.asarray(pooling_lib.cut(pooled, dim, normalize), dtype=np.float32)

  def encode_layers(self, texts: Sequence[str], *, layers: Sequence[int], pooling: str | None = None,
                    batch_size: int = 32, max_length: int | None = None, show_progress: bool | None = None,
                    packing: bool = False, prompt: str | None = None) -> dict[int, np.ndarray]:
    """{layer: [len(texts), hidden] float32} from one forward pass that stops at max(layers).

    `packing`: texts end to end in rows rather than one padded row each (module docstring); the same
    vectors. `prompt`: as `encode`'s."""
    pooling = pooling_lib.pooling_kind(pooling or self.default_pooling).name
    for n in layers:
      check_pair(self.config, n, 1)
    layers = tuple(sorted(set(int(n) for n in layers)))
    if batch_size < 1:
      raise StarbucksError(f"batch_size must be at least 1, got {batch_size}")
    max_length = min(max_length or self.max_length, self.config.max_text_length)
    texts = with_prompt(None if prompt is None else check(prompt, "prompt"), checked_texts(texts))
    if not texts:
      return {n: np.zeros((0, self.config.hidden_size), np.float32) for n in layers}

    ids = self.tokenizer(texts, truncation=True, max_length=max_length, padding=False,
                         return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    batches, inputs = (self._packed(ids, batch_size, max_length) if packing
                       else self._padded(ids, batch_size, max_length))
    results = {n: np.zeros((len(texts), self.config.hidden_size), np.float32) for n in layers}
    if show_progress is None:
      show_progress = len(batches) >= SHOW_PROGRESS_FROM_BATCHES
    for batch in tqdm(batches, desc="encoding", unit="batch", disable=not show_progress):
      pooled = pooled_layers(self.params, **inputs(batch), config=self.config, num_layers=layers[-1], layers=layers,
                             pooling=pooling, dtype=self.dtype)
      for n in layers:
        results[n][batch] = np.asarray(pooled[n][:len(batch)])
    return results

  def _padded(self, ids: list, batch_size: int, max_length: int):
    """(the texts of each batch, batch -> pooled_layers' inputs): batch_size texts a batch, longest first
    (early failures, tight padding), padded to their bucket length."""
    order = np.argsort([-len(x) for x in ids], kind="stable")

    def inputs(batch):
      length = padded_length(max(len(ids[i]) for i in batch), max_length)
      input_ids = np.full((batch_size, length), self.config.pad_token_id, np.int32)
      attention_mask = np.zeros((batch_size, length), np.int32)
      for row, i in enumerate(batch):
        input_ids[row, :len(ids[i])] = ids[i]
        attention_mask[row, :len(ids[i])] = 1
      return {"input_ids": input_ids, "attention_mask": attention_mask}
    return [order[start:start + batch_size] for start in range(0, len(ids), batch_size)], inputs

  def _packed(self, ids: list, batch_size: int, max_length: int):
    """(the texts of each forward pass, pass -> pooled_layers' inputs): packed rows of one shape (module
    docstring); a pass with fewer texts than the fullest leaves its last text numbers empty."""
    empty = next((i for i, x in enumerate(ids) if not x), None)
    if empty is not None:  # BERT-like tokenizers always add [CLS] and [SEP]; others may give no token
      raise StarbucksError(f"texts[{empty}] has no tokens; packed encoding needs at least one per text")
    length = padded_length(max(len(x) for x in ids), max_length)  # every text fits a row
    passes, rows = packed_passes([len(x) for x in ids], length, batch_size * max_length)
    log.info("packed encoding: %d texts, forward passes of %d rows x %d tokens and %d texts, %d of them (%.2fx the "
             "real tokens)", len(ids), rows, length, len(passes[0]), len(passes),
             len(passes) * rows * length / sum(map(len, ids)))

    def inputs(texts):
      packed = pack({"input_ids": [ids[i] for i in texts]}, {"input_ids": self.config.pad_token_id},
                    np.arange(len(texts)), length=length, rows=rows)
      return {**{name: packed[name] for name in ("input_ids", "attention_mask", "segment_ids", "position_ids")},
              "num_texts": len(passes[0])}
    return passes, inputs


def checked_texts(texts: Sequence[str]) -> list[str]:
  """The texts as a list; one string, or an item that is not a string, is an error naming it."""
  if isinstance(texts, str):
    raise StarbucksError("texts must be a sequence of strings, not one string")
  texts = list(texts)
  wrong = next((i for i, text in enumerate(texts) if not isinstance(text, str)), None)
  if wrong is not None:
    raise StarbucksError(f"texts[{wrong}] is {type(texts[wrong]).__name__} {texts[wrong]!r:.40}, not a string")
  return texts
