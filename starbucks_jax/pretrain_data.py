"""Raw-text batches for SMAE pre-training (a masked-LM encoder and a masked-autoencoder decoder).

    data = TextData(TextDataConfig(source="hf:HuggingFaceFW/fineweb:sample-10BT", streaming=True),
                    tokenizer, global_batch_size=256, seed=0, process_index=jax.process_index(),
                    process_count=jax.process_count())
    batch = data.batch(step)  # this host's rows of global batch number `step`

The data side of ielab/Starbucks `smae/data.py`. A batch holds b = global_batch_size / process_count
texts, each tokenized without special tokens, cut to a random window of max_length - 2 tokens when
longer, and framed by [CLS] and [SEP]. Whole words are masked for the encoder and (a superset) for the
decoder, and the masked positions are replaced as in BERT, separately for each (see `masking`):

    input_ids, attention_mask          int32 [b, L]   the encoder's input; the mask covers the text
    labels                             int32 [b, L]   the original token where the encoder's input is
                                                      masked, -100 elsewhere (padding included)
    decoder_input_ids, decoder_labels  int32 [b, L]   the same for the decoder's mask

Padding positions hold the pad id in both id arrays. L is the smallest bucket (default: 16, 32, 64, ...,
max_length) that holds the longest row, or max_length with `fixed_lengths` (the default when
process_count > 1, so that every host's arrays have one shape).

Randomness: every random choice of an example (its window, its masks, its replacements) comes from one
generator, `np.random.default_rng([seed, step, position])`, position being the example's index in the
global batch. So `batch(step)` is a pure function of (seed, step): a resumed run is bit-identical, and
two hosts' batches are the halves of a single host's.

Order: a table (local files, hf:, tfds:) is validated whole up front and read by random access in
TrainData's order: epoch e is `data.epoch_order(seed, e, num_examples)`, global batch `step` is slice
`step % steps_per_epoch` of epoch `step // steps_per_epoch`, and this host takes its share of it. A
stream (`streaming=True`: hf: or local files) is never downloaded or checked whole: it is shuffled with
a buffer, split between hosts, and read forward, a new epoch when it ends; this host's batch `step` is
rows [step * b, (step + 1) * b) of its share. A later step than the next one skips forward to it, an
earlier one restarts the stream and skips to it (logged), so any step can still be asked for, at the cost
of reading the rows before it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Mapping, Sequence

import numpy as np

from starbucks_jax import data_sources
from starbucks_jax.data import bucket_list, check_batch_split, data_config_from_dict, epoch_order, pad_rows
from starbucks_jax.data_checks import TEXT, value_problem
from starbucks_jax.errors import StarbucksError
from starbucks_jax.masking import IGNORE, bert_replace, random_crop, whole_word_masks

log = logging.getLogger(__name__)

KEYS = ("input_ids", "attention_mask", "labels", "decoder_input_ids", "decoder_labels")


@dataclasses.dataclass(frozen=True)
class TextDataConfig:
  """Where pre-training text comes from and how it is masked; built from `config.data`.

  Attributes:
    source: local file path(s), comma-separated, .jsonl/.json/.csv/.parquet/.txt (.txt: one text a
      line, in column "text"); "hf:NAME[:CONFIG]", a hub data set or local dataset folder; or
      "tfds:NAME[/CONFIG][:VERSION]", a TFDS data set prepared in ArrayRecord format.
    split: the split of a hub or TFDS source.
    text_column: the column holding the text.
    max_length: tokens per text with [CLS] and [SEP]; longer texts are cut to a random window.
    encoder_mask_rate: the share of a text's tokens masked in the encoder's input.
    decoder_mask_rate: the same for the decoder; at least encoder_mask_rate, since the decoder's
      masked words include the encoder's.
    streaming: read an hf: source (or local files) as a stream, without downloading or checking the
      whole set first.
    shuffle_buffer: streaming only: the rows of the buffer the stream is shuffled through.
    tfds_data_dir: where TFDS data sets are prepared (TFDS's default when None).
    max_examples: use only the first this many rows (quick runs).
  """
  source: str
  split: str = "train"
  text_column: str = "text"
  max_length: int = 128
  encoder_mask_rate: float = 0.2
  decoder_mask_rate: float = 0.4
  streaming: bool = False
  shuffle_buffer: int = 10000
  tfds_data_dir: str | None = None
  max_examples: int | None = None

  def __post_init__(self):
    if not isinstance(self.source, str) or not self.source.strip():
      raise StarbucksError("data.source is not set: give a file path, hf:NAME or tfds:NAME")
    if not isinstance(self.text_column, str) or not self.text_column:
      raise StarbucksError(f"data.text_column must be a column name, got {self.text_column!r}")
    for name, least in (("max_length", 3), ("shuffle_buffer", 1)):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < least:  # 3: [CLS], a token, [SEP]
        raise StarbucksError(f"data.{name} must be an integer of at least {least}, got {value!r}")
    rates = (self.encoder_mask_rate, self.decoder_mask_rate)
    if (any(isinstance(r, bool) or not isinstance(r, (int, float)) for r in rates)
        or not 0 < self.encoder_mask_rate <= self.decoder_mask_rate < 1):
      raise StarbucksError(f"mask rates must satisfy 0 < data.encoder_mask_rate <= data.decoder_mask_rate "
                           f"< 1 (the decoder's masked words include the encoder's), got "
                           f"encoder_mask_rate={self.encoder_mask_rate!r}, "
                           f"decoder_mask_rate={self.decoder_mask_rate!r}")
    if self.max_examples is not None and (not isinstance(self.max_examples, int) or self.max_examples < 1):
      raise StarbucksError(f"data.max_examples must be None or a positive integer, got {self.max_examples!r}")
    if self.streaming and self.source.strip().startswith("tfds:"):
      raise StarbucksError(f"data.streaming is for hf: and local sources, not {self.source.strip()}: TFDS "
                           f"sources are read by random access (set data.streaming to False)")

  @classmethod
  def from_config_dict(cls, cd) -> "TextDataConfig":
    """From an ml_collections ConfigDict (or any mapping) with some of this class's fields."""
    return data_config_from_dict(cls, cd)


class TextData:
  """Masked pre-training batches of raw text, any step's on demand; see the module docstring."""

  def __init__(self, config: TextDataConfig, tokenizer, *, global_batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1, buckets: Sequence[int] | None = None,
               fixed_lengths: bool | None = None):
    """Opens the text; every user error of a table surfaces here, before training compiles.

    Args:
      config: the text's source, its length and the mask rates.
      tokenizer: a Hugging Face WordPiece tokenizer (fast, ideally) with [CLS], [SEP], [PAD] and [MASK].
      global_batch_size: texts per step over all hosts.
      seed: with the step, fixes the order, the windows and the masks.
      process_index: this host's index (`jax.process_index()`).
      process_count: the number of hosts (`jax.process_count()`); must divide global_batch_size.
      buckets: lengths to pad to (default: 16, 32, 64, ...); max_length is always added.
      fixed_lengths: pad every batch to max_length; default True when process_count > 1, so that all
        hosts' arrays have the same shape.

    Raises:
      StarbucksError: naming the problem (a file, a column, a row, a batch size, the tokenizer).
    """
    check_batch_split(global_batch_size, process_index, process_count)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
      raise StarbucksError(f"seed must be a non-negative integer, got {seed!r}")
    for name in ("cls_token", "sep_token", "pad_token", "mask_token"):
      if getattr(tokenizer, f"{name}_id", None) is None:
        raise StarbucksError(f"the tokenizer has no {name.replace('_', ' ')} ({name}_id is None); masked-LM "
                             f"pre-training needs [CLS], [SEP], [PAD] and [MASK]")
    self.config = config
    self.tokenizer = tokenizer
    self.seed = int(seed)
    self.global_batch_size = int(global_batch_size)
    self.process_index = int(process_index)
    self.process_count = int(process_count)
    self.local_batch_size = self.global_batch_size // self.process_count
    self.fixed_lengths = self.process_count > 1 if fixed_lengths is None else bool(fixed_lengths)
    self.buckets = bucket_list(buckets, config.max_length)
    self.special_tokens = frozenset(tokenizer.all_special_tokens)
    self.vocab_size = len(tokenizer)  # random replacements are drawn from the whole vocabulary, as in HF
    self._order = (-1, None)

    if config.streaming:
      self.table, self.num_examples, self.steps_per_epoch = None, None, None
      self.stream = _TextStream(config, seed=self.seed, process_index=self.process_index,
                                process_count=self.process_count)
      self.name = self.stream.name
      if self.stream.reported_size:  # the hub's count of the split's rows sets the length of an epoch
        self.steps_per_epoch = max(1, self.stream.reported_size // self.global_batch_size)
        log.info("%s: the source reports %d rows: %d steps per epoch", self.name, self.stream.reported_size,
                 self.steps_per_epoch)
      log.info("%s: streaming text, shuffled through a buffer of %d rows, %d texts per step",
               self.name, config.shuffle_buffer, self.global_batch_size)
      return
    self.stream = None
    self.table = data_sources.open_table(config.source, split=config.split,
                                         tfds_data_dir=config.tfds_data_dir, max_examples=config.max_examples,
                                         file_builders=data_sources.TEXT_FILE_BUILDERS)
    self.name = self.table.name
    for part in self.table.parts():
      if config.text_column not in part.columns:
        raise StarbucksError(_missing_column(part.name, config.text_column, part.columns))
    self.table.check({config.text_column: TEXT})
    self.num_examples = len(self.table)
    if self.num_examples < self.global_batch_size:
      raise StarbucksError(f"{self.name} has {self.num_examples} texts, fewer than one global batch of "
                           f"{self.global_batch_size}")
    self.steps_per_epoch = self.num_examples // self.global_batch_size
    log.info("%s: %d texts, %d steps per epoch of %d", self.name, self.num_examples, self.steps_per_epoch,
             self.global_batch_size)

  def example_indices(self, step: int) -> np.ndarray:
    """The row indices of global batch `step`, all hosts' rows, in batch order (not when streaming)."""
    if self.stream is not None:
      raise ValueError("a streamed source has no row indices")
    if step < 0:
      raise ValueError(f"step must be non-negative, got {step}")
    epoch, position = divmod(int(step), self.steps_per_epoch)
    if self._order[0] != epoch:
      self._order = (epoch, epoch_order(self.seed, epoch, self.num_examples))
    # A copy: callers may change it, the cached order must not.
    return self._order[1][position * self.global_batch_size:(position + 1) * self.global_batch_size].copy()

  def texts(self, step: int) -> list[str]:
    """This host's texts of global batch `step`, before tokenizing."""
    if step < 0:
      raise ValueError(f"step must be non-negative, got {step}")
    b = self.local_batch_size
    if self.stream is not None:
      return self.stream.texts(int(step) * b, b)
    rows = self.example_indices(step)[self.process_index * b:(self.process_index + 1) * b]
    return self.table.read(rows, [self.config.text_column])[self.config.text_column]

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This host's rows of global batch `step`, masked and padded (see the module docstring)."""
    texts = self.texts(step)
    content = self.tokenizer(texts, add_special_tokens=False, return_attention_mask=False,
                             return_token_type_ids=False, verbose=False)["input_ids"]
    first = self.process_index * self.local_batch_size
    rows = [self.example(ids, np.random.default_rng([self.seed, int(step), first + i]))
            for i, ids in enumerate(content)]
    longest = max(len(r["input_ids"]) for r in rows)
    length = self.config.max_length if self.fixed_lengths else next(b for b in self.buckets if b >= longest)
    pad = self.tokenizer.pad_token_id
    out = {}
    out["input_ids"], out["attention_mask"] = pad_rows([r["input_ids"] for r in rows], length, pad)
    out["labels"] = pad_rows([r["labels"] for r in rows], length, IGNORE)[0]
    out["decoder_input_ids"] = pad_rows([r["decoder_input_ids"] for r in rows], length, pad)[0]
    out["decoder_labels"] = pad_rows([r["decoder_labels"] for r in rows], length, IGNORE)[0]
    return out

  def example(self, content_ids: Sequence[int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One text's unpadded arrays (the batch's keys but attention_mask) from its ids without specials.

    The draws, in order: the window (only when the text is too long), the word shuffle, the encoder's
    replacements, the decoder's.
    """
    t = self.tokenizer
    window = random_crop(list(content_ids), self.config.max_length - 2, rng)
    ids = np.asarray([t.cls_token_id, *window, t.sep_token_id], np.int32)
    encoder_mask, decoder_mask = whole_word_masks(
        t.convert_ids_to_tokens(ids.tolist()), self.special_tokens, self.config.encoder_mask_rate,
        self.config.decoder_mask_rate, rng)
    out = {}
    out["input_ids"], out["labels"] = bert_replace(ids, encoder_mask, rng, mask_token_id=t.mask_token_id,
                                                   vocab_size=self.vocab_size)
    out["decoder_input_ids"], out["decoder_labels"] = bert_replace(
        ids, decoder_mask, rng, mask_token_id=t.mask_token_id, vocab_size=self.vocab_size)
    return out


def _missing_column(name: str, column: str, columns: Sequence[str]) -> str:
  return (f"{name}: has no column {column!r} (data.text_column); its columns are {sorted(columns)}")


class _TextStream:
  """This host's share of a shuffled stream of texts, epoch after epoch, read forward from any row."""

  def __init__(self, config: TextDataConfig, *, seed: int, process_index: int, process_count: int):
    self.column = config.text_column
    self.host = f"host {process_index} of {process_count}"
    self.dataset, self.name = _open_stream(config)
    self.reported_size = _reported_size(self.dataset, config.split)
    if config.max_examples is not None:
      self.dataset = self.dataset.take(config.max_examples)
      self.reported_size = min(self.reported_size or config.max_examples, config.max_examples)
    features = getattr(self.dataset, "features", None)  # None when the source does not declare them
    if features is not None and self.column not in features:
      raise StarbucksError(_missing_column(self.name, self.column, list(features)))
    from datasets.distributed import split_dataset_by_node  # pylint: disable=import-outside-toplevel
    self.dataset = split_dataset_by_node(self.dataset.shuffle(seed=seed, buffer_size=config.shuffle_buffer),
                                         rank=process_index, world_size=process_count)
    self._rows = None  # the iterator of the current epoch; None before the first read
    self._position = 0  # rows of this host's share read so far, over all epochs
    self._epoch = 0
    self._in_epoch = 0  # rows of the current epoch read so far

  def texts(self, start: int, count: int) -> list[str]:
    """Rows [start, start + count) of this host's share, counted over the epochs one after another."""
    if self._rows is None or start < self._position:
      self._start_epoch(0)
      self._position = 0
    if start > self._position:
      log.info("%s: skipping %d streamed rows (%s) to reach row %d", self.name, start - self._position,
               self.host, start)
      while self._position < start:
        self._next_row()
    return [self._text(self._next_row()) for _ in range(count)]

  def _start_epoch(self, epoch: int) -> None:
    self._epoch, self._in_epoch = epoch, 0
    self.dataset.set_epoch(epoch)  # a new shuffle for each epoch
    self._rows = iter(self.dataset)

  def _next_row(self):
    while True:
      try:
        row = next(self._rows)
      except StopIteration:
        if self._in_epoch == 0:
          raise StarbucksError(f"{self.name}: the stream holds no rows for {self.host}") from None
        self._start_epoch(self._epoch + 1)
        continue
      self._position += 1
      self._in_epoch += 1
      return row

  def _text(self, row: Mapping) -> str:
    where = (f"{self.name}: streamed row {self._in_epoch} of epoch {self._epoch} ({self.host}, after "
             f"shuffling)")
    if self.column not in row:
      raise StarbucksError(_missing_column(where, self.column, list(row)))
    problem = value_problem(row[self.column], TEXT)
    if problem:
      raise StarbucksError(f"{where}, column {self.column!r}: {problem}")
    return row[self.column]


def _reported_size(dataset, split: str) -> int | None:
  """The split's row count when the source declares one (a hub data set's card may), else None."""
  try:
    return int(dataset.info.splits[split].num_examples) or None
  except (AttributeError, KeyError, TypeError, ValueError):
    return None


def _open_stream(config: TextDataConfig):
  """(a `datasets.IterableDataset`, its name for messages) for an hf: source or local files."""
  import datasets  # pylint: disable=import-outside-toplevel
  source = config.source.strip()
  if source.startswith("hf:"):
    name, _, subset = source[3:].partition(":")
    try:
      dataset = datasets.load_dataset(name, subset or None, split=config.split, streaming=True)
    except Exception as e:  # pylint: disable=broad-except
      raise StarbucksError(f"{source}: cannot stream split {config.split!r}: {e}") from e
    return dataset, f"{source} split {config.split}"
  files = data_sources.local_files(source, data_sources.TEXT_FILE_BUILDERS)
  builders = sorted({builder for _, builder in files})
  if len(builders) > 1:
    raise StarbucksError(f"{source}: streamed files must all have one format, got {', '.join(builders)}")
  name = ", ".join(path for path, _ in files)
  try:
    dataset = datasets.load_dataset(builders[0], data_files=[os.path.abspath(p) for p, _ in files],
                                    split="train", streaming=True)
  except Exception as e:  # pylint: disable=broad-except
    raise StarbucksError(f"{name}: cannot be streamed as {builders[0]}: {type(e).__name__}: {e}") from e
  return dataset, name
