"""Encoding texts with a pretrained or trained model at any (layer, dim) size.

    enc = Encoder.from_pretrained("path/to/hf_folder")                # or a training workdir [, step=N]
    vectors = enc.encode(texts, layer=4, dim=128)                     # [len(texts), 128] float32
    per_layer = enc.encode_layers(texts, layers=(2, 4, 6))           # one pass, every layer asked for

Texts are sorted by length and padded to a few bucket lengths (`bucket_lengths`), with a fixed batch
size, so at most one compiled shape exists per bucket.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from starbucks_jax.errors import StarbucksError
from starbucks_jax.hf.load import load_tokenizer
from starbucks_jax.model import pooling as pooling_lib
from starbucks_jax.model.config import EncoderConfig
from starbucks_jax.model.registry import family_of
from starbucks_jax.pairs import check_pair
from starbucks_jax.runtime import workdir

log = logging.getLogger(__name__)

SHOW_PROGRESS_FROM_BATCHES = 8  # the progress bar appears from this many batches on


def bucket_lengths(max_length: int, smallest: int = 12) -> list[int]:
  """12, 16, 24, 32, 48, 64, 96, ... below `max_length`, then `max_length` itself.

  Steps of x1.5 and x4/3 pad real text about a quarter less than powers of two (measured on STS-B and
  MS MARCO passages), for under twice the number of compiled shapes. The 12 is for sentences: 29 of the
  32 batches of 64 of 2000 sorted STS-B sentences have 15 tokens or fewer; with 16 as the smallest
  bucket they padded to 1.56x the real tokens, with 12 to 1.30x (with 8 and 12, 1.26x, but one more
  shape to compile in every evaluation). MS MARCO passages: 1.24x either way.
  """
  buckets, length = [], 8
  while length < max_length:
    buckets += [b for b in (length, length * 3 // 2) if smallest <= b < max_length]
    length *= 2
  return buckets + [max_length]


def padded_length(longest: int, max_length: int) -> int:
  """The bucket a batch whose longest text has `longest` tokens is padded to."""
  return next(b for b in bucket_lengths(max_length) if b >= longest)


@functools.partial(jax.jit, static_argnames=("config", "num_layers", "layers", "pooling", "dtype"))
def pooled_layers(params, input_ids, attention_mask, *, config, num_layers, layers, pooling, dtype):
  """{layer: [batch, hidden] pooled vectors} of one compiled forward pass that stops at `num_layers`."""
  out = family_of(config).apply(params, input_ids, attention_mask, config=config, num_layers=num_layers, dtype=dtype)
  return {n: out.pooled(n, pooling) for n in layers}


class Encoder:
  """A model, its tokenizer and its default pooling, ready to encode text."""

  def __init__(self, config: EncoderConfig, params: dict, tokenizer, *, default_pooling: str = "cls",
               max_length: int = 512, dtype=jnp.float32):
    self.config = config
    self.params = params
    self.tokenizer = tokenizer
    self.default_pooling = default_pooling
    self.max_length = min(max_length, config.max_text_length)
    self.dtype = dtype

  @classmethod
  def from_pretrained(cls, name_or_path: str | os.PathLike, *, step: int | None = None, dtype=jnp.float32,
                      max_length: int | None = None) -> "Encoder":
    """A Hugging Face folder or hub name, or a training workdir at its newest checkpoint (or `step`).

    Pooling and max length default to the folder's sentence-transformers settings (or the run's), else
    CLS and the model's position limit."""
    source = workdir.resolve(name_or_path, step=step)
    config, serving = source.config(), source.serving()
    params, saved_step = source.load_params()
    if saved_step is not None:
      log.info("encoding with %s at step %d", source.workdir, saved_step)
    if max_length is None:
      max_length = serving.max_seq_length or config.max_text_length
    return cls(config, params, load_tokenizer(source.model_dir), default_pooling=serving.pooling or "cls",
               max_length=max_length, dtype=dtype)

  def encode(self, texts: Sequence[str], *, layer: int | None = None, dim: int | None = None,
             pooling: str | None = None, normalize: bool = False, batch_size: int = 32,
             max_length: int | None = None, show_progress: bool | None = None) -> np.ndarray:
    """[len(texts), dim] float32: layer `layer`'s pooled output cut to its first `dim` coordinates."""
    layer = self.config.num_hidden_layers if layer is None else layer
    dim = self.config.hidden_size if dim is None else dim
    check_pair(self.config, layer, dim)
    layer, dim = int(layer), int(dim)
    pooled = self.encode_layers(texts, layers=(layer,), pooling=pooling, batch_size=batch_size,
                                max_length=max_length, show_progress=show_progress)[layer]
    return np.asarray(pooling_lib.cut(pooled, dim, normalize), dtype=np.float32)

  def encode_layers(self, texts: Sequence[str], *, layers: Sequence[int], pooling: str | None = None,
                    batch_size: int = 32, max_length: int | None = None,
                    show_progress: bool | None = None) -> dict[int, np.ndarray]:
    """{layer: [len(texts), hidden] float32} from one forward pass that stops at max(layers)."""
    pooling = pooling or self.default_pooling
    if pooling not in pooling_lib.POOLINGS:
      raise StarbucksError(f"pooling must be one of {', '.join(pooling_lib.POOLINGS)}, got {pooling!r}")
    for n in layers:
      check_pair(self.config, n, 1)
    layers = tuple(sorted(set(int(n) for n in layers)))
    if batch_size < 1:
      raise StarbucksError(f"batch_size must be at least 1, got {batch_size}")
    max_length = min(max_length or self.max_length, self.config.max_text_length)
    if isinstance(texts, str):
      raise StarbucksError("texts must be a sequence of strings, not one string")
    texts = list(texts)
    wrong = next((i for i, text in enumerate(texts) if not isinstance(text, str)), None)
    if wrong is not None:
      raise StarbucksError(f"texts[{wrong}] is {type(texts[wrong]).__name__} {texts[wrong]!r:.40}, not a string")
    if not texts:
      return {n: np.zeros((0, self.config.hidden_size), np.float32) for n in layers}

    ids = self.tokenizer(texts, truncation=True, max_length=max_length, padding=False,
                         return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    order = np.argsort([-len(x) for x in ids], kind="stable")  # longest first: early failures, tight padding
    results = {n: np.zeros((len(texts), self.config.hidden_size), np.float32) for n in layers}
    starts = range(0, len(texts), batch_size)
    if show_progress is None:
      show_progress = len(starts) >= SHOW_PROGRESS_FROM_BATCHES
    for start in tqdm(starts, desc="encoding", unit="batch", disable=not show_progress):
      rows = order[start:start + batch_size]
      length = padded_length(max(len(ids[i]) for i in rows), max_length)
      input_ids = np.full((batch_size, length), self.config.pad_token_id, np.int32)
      attention_mask = np.zeros((batch_size, length), np.int32)
      for row, i in enumerate(rows):
        input_ids[row, :len(ids[i])] = ids[i]
        attention_mask[row, :len(ids[i])] = 1
      pooled = pooled_layers(self.params, input_ids, attention_mask, config=self.config,
                              num_layers=layers[-1], layers=layers, pooling=pooling, dtype=self.dtype)
      for n in layers:
        results[n][rows] = np.asarray(pooled[n][:len(rows)])
    return results
