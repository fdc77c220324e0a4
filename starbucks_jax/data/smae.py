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

Packed (`packing=True`, `packing.py`): the texts laid end to end in R rows of `pack_length` tokens (text i
of the global batch has segment id i), the same arrays plus segment_ids and position_ids [R,
pack_length], and text_lengths int32 [b]. R is fixed for the run (`pack_rows`, or the most the first
batches need); a batch that needs more takes a few more rows, a new shape. With `pack_groups` k > 1
(micro-batches) text i goes to group i mod k, numbered as in a batch of B / k (`packing.py`).

Padding positions hold the pad id in both id arrays. L is the smallest bucket (default: 16, 32, 64, ...,
max_length) that holds the longest row, or max_length with `fixed_lengths` (the default when
process_count > 1, so that every host's arrays have one shape).

Randomness: every random choice of an example (its window, its masks, its replacements) comes from one
generator, `np.random.default_rng([seed, step, position])`, position being the example's index in the
global batch. So `batch(step)` is a pure function of (seed, step): a resumed run is bit-identical, and
two hosts' batches are the halves of a single host's.

Order: a table (local files, hf:, tfds:) is validated whole up front and read by random access in
`batching.EpochOrder`'s order, and this host takes its share of each global batch. A stream
(`streaming=True`: hf: or local files, `text_stream.py`) is never downloaded or checked whole: it is
shuffled with a buffer, split between hosts, and read forward, a new epoch when it ends; this host's
batch `step` is rows [step * b, (step + 1) * b) of its share.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np

from starbucks_jax import config_blocks
from starbucks_jax.data import packing, sources
from starbucks_jax.data.batching import EpochOrder, HostBatches, bucket_list, pad_rows
from starbucks_jax.data.checks import TEXT
from starbucks_jax.data.masking import IGNORE, bert_replace, random_crop, whole_word_masks
from starbucks_jax.data.text_stream import TextStream, missing_column
from starbucks_jax.errors import StarbucksError

log = logging.getLogger(__name__)

# The arrays of an SMAE batch; "decoder_*" only feed the MAE decoder (mode "smae").
BATCH_KEYS = ("input_ids", "attention_mask", "labels", "decoder_input_ids", "decoder_labels")


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
    packing: lay texts end to end in rows of `pack_length` tokens instead of one padded row each.
    pack_length: tokens per packed row; None: max_length.
    pack_rows: packed rows per host and batch (with grad_accum_steps: per micro-batch);
      None: estimated from the first batches.
  """
  source: str = ""
  split: str = "train"
  text_column: str = "text"
  max_length: int = 512
  encoder_mask_rate: float = 0.2
  decoder_mask_rate: float = 0.4
  streaming: bool = False
  shuffle_buffer: int = 10000
  tfds_data_dir: str | None = None
  max_examples: int | None = None
  packing: bool = False
  pack_length: int | None = None
  pack_rows: int | None = None

  @property
  def row_length(self) -> int:
    """Tokens per packed row."""
    return self.pack_length or self.max_length

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
    packing.check_settings(self.pack_length, self.pack_rows)
    if self.pack_length is not None and self.pack_length < self.max_length:
      raise StarbucksError(f"data.pack_length {self.pack_length} is shorter than data.max_length "
                           f"{self.max_length}, the longest text")
    if self.streaming and self.source.strip().startswith("tfds:"):
      raise StarbucksError(f"data.streaming is for hf: and local sources, not {self.source.strip()}: TFDS "
                           f"sources are read by random access (set data.streaming to False)")

  @classmethod
  def from_config_dict(cls, cd) -> "TextDataConfig":
    """From an ml_collections ConfigDict (or any mapping) with some of this class's fields."""
    return config_blocks.from_config_dict(cls, cd, "data")


class TextData(HostBatches):
  """Masked pre-training batches of raw text, any step's on demand; see the module docstring."""

  def __init__(self, config: TextDataConfig, tokenizer, *, global_batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1, buckets: Sequence[int] | None = None,
               fixed_lengths: bool | None = None, row_multiple: int = 1, pack_groups: int = 1):
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
      row_multiple: packed rows per host are a multiple of this (the host's devices share them).
      pack_groups: packed batches come in this many groups, one per micro-batch (`packing.py`).

    Raises:
      StarbucksError: naming the problem (a file, a column, a row, a batch size, the tokenizer).
    """
    super().__init__(global_batch_size=global_batch_size, seed=seed, process_index=process_index,
                     process_count=process_count, fixed_lengths=fixed_lengths, pack_groups=pack_groups)
    for name in ("cls_token", "sep_token", "pad_token", "mask_token"):
      if getattr(tokenizer, f"{name}_id", None) is None:
        raise StarbucksError(f"the tokenizer has no {name.replace('_', ' ')} ({name}_id is None); masked-LM "
                             f"pre-training needs [CLS], [SEP], [PAD] and [MASK]")
    self.config = config
    self.tokenizer = tokenizer
    self.buckets = bucket_list(buckets, config.max_length)
    self.special_tokens = frozenset(tokenizer.all_special_tokens)
    self.vocab_size = len(tokenizer)  # random replacements are drawn from the whole vocabulary, as in HF

    self.table = self.stream = self.order = None
    if config.streaming:
      self._open_stream()
    else:
      self._open_table()
    self.row_multiple = row_multiple
    self.pack_rows = (packing.run_rows(config.pack_rows, self.estimate_pack_rows, row_multiple, config.row_length,
                                       self.pack_groups)
                      if config.packing else None)

  def _open_stream(self) -> None:
    config = self.config
    self.num_examples, self.steps_per_epoch = None, None
    self.stream = TextStream(config, seed=self.seed, process_index=self.process_index,
                             process_count=self.process_count)
    self.name = self.stream.name
    if self.stream.reported_size:  # the hub's count of the split's rows sets the length of an epoch
      self.steps_per_epoch = max(1, self.stream.reported_size // self.global_batch_size)
      log.info("%s: the source reports %d rows: %d steps per epoch", self.name, self.stream.reported_size,
               self.steps_per_epoch)
    log.info("%s: streaming text, shuffled through a buffer of %d rows, %d texts per step",
             self.name, config.shuffle_buffer, self.global_batch_size)

  def _open_table(self) -> None:
    config = self.config
    self.table = sources.open_table(config.source, split=config.split, tfds_data_dir=config.tfds_data_dir,
                                    max_examples=config.max_examples, file_builders=sources.TEXT_FILE_BUILDERS)
    self.name = self.table.name
    for part in self.table.parts():
      if config.text_column not in part.columns:
        raise StarbucksError(missing_column(part.name, config.text_column, part.columns))
    self.table.check({config.text_column: TEXT})
    self.num_examples = len(self.table)
    if self.num_examples < self.global_batch_size:
      raise StarbucksError(f"{self.name} has {self.num_examples} texts, fewer than one global batch of "
                           f"{self.global_batch_size}")
    self.order = EpochOrder(self.seed, self.num_examples, self.global_batch_size)
    self.steps_per_epoch = self.order.steps_per_epoch
    log.info("%s: %d texts, %d steps per epoch of %d", self.name, self.num_examples, self.steps_per_epoch,
             self.global_batch_size)

  def example_indices(self, step: int) -> np.ndarray:
    """The row indices of global batch `step`, all hosts' rows, in batch order (not when streaming)."""
    if self.stream is not None:
      raise ValueError("a streamed source has no row indices")
    return self.order.indices(step)

  def texts(self, step: int) -> list[str]:
    """This host's texts of global batch `step`, before tokenizing."""
    if step < 0:
      raise ValueError(f"step must be non-negative, got {step}")
    b = self.local_batch_size
    if self.stream is not None:
      return self.stream.texts(int(step) * b, b)
    rows = self.host_rows(self.example_indices(step))
    return self.table.read(rows, [self.config.text_column])[self.config.text_column]

  def _content_ids(self, texts: list[str]) -> list[list[int]]:
    return self.tokenizer(texts, add_special_tokens=False, return_attention_mask=False,
                          return_token_type_ids=False, verbose=False)["input_ids"]

  def estimate_pack_rows(self, steps: int = 16) -> int:
    """The most packed rows this host needs in the first `steps` batches (a later batch that needs more
    grows by a few rows, a new shape: `packing.pack`; hosts that differ agree on the most each step:
    `training/loop.py`). No margin: a few extra compiles cost less than spare rows in every step."""
    most = 1
    for step in range(steps if self.steps_per_epoch is None else min(steps, self.steps_per_epoch)):
      lengths = [min(len(ids), self.config.max_length - 2) + 2 for ids in self._content_ids(self.texts(step))]
      most = max(most, packing.rows_needed(lengths, self.config.row_length, groups=self.pack_groups,
                                           group_of=self._text_groups()))
    return min(most, self.local_batch_size // self.pack_groups)

  def _text_groups(self) -> np.ndarray:
    """The packing group of each text of a host's batch."""
    return packing.group_of_example(np.arange(self.local_batch_size), self.pack_groups)

  def row_pads(self) -> dict[str, int]:
    """Packed batches: the padding value of each [rows, length] array (for `packing.pad_to_rows`)."""
    pad = self.tokenizer.pad_token_id
    return {"input_ids": pad, "labels": IGNORE, "decoder_input_ids": pad, "decoder_labels": IGNORE}

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This host's rows of global batch `step`, masked and padded or packed (see the module docstring)."""
    content = self._content_ids(self.texts(step))
    first = self.process_index * self.local_batch_size
    rows = [self.example(ids, np.random.default_rng([self.seed, int(step), first + i]))
            for i, ids in enumerate(content)]
    if self.config.packing:
      return self._pack(rows, first)
    longest = max(len(r["input_ids"]) for r in rows)
    length = self.config.max_length if self.fixed_lengths else next(b for b in self.buckets if b >= longest)
    pad = self.tokenizer.pad_token_id
    out = {}
    out["input_ids"], out["attention_mask"] = pad_rows([r["input_ids"] for r in rows], length, pad)
    out["labels"] = pad_rows([r["labels"] for r in rows], length, IGNORE)[0]
    out["decoder_input_ids"] = pad_rows([r["decoder_input_ids"] for r in rows], length, pad)[0]
    out["decoder_labels"] = pad_rows([r["decoder_labels"] for r in rows], length, IGNORE)[0]
    return out

  def _pack(self, examples: list[dict], first: int) -> dict[str, np.ndarray]:
    columns = ("input_ids", "labels", "decoder_input_ids", "decoder_labels")
    out = packing.pack({c: [e[c] for e in examples] for c in columns}, self.row_pads(),
                       packing.group_text_id(first + np.arange(len(examples)), self.pack_groups),
                       length=self.config.row_length, rows=self.pack_rows, row_multiple=self.row_multiple,
                       groups=self.pack_groups, group_of=self._text_groups())
    out["text_lengths"] = np.asarray([len(e["input_ids"]) for e in examples], np.int32)
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
