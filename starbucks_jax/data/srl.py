"""Training batches of pairs, triplets, scored pairs or Tevatron groups, in a resumable order.

    data = TrainData(DataConfig(source="data/quickstart/snli_triplets.jsonl"), tokenizer,
                     global_batch_size=64, seed=0, process_index=jax.process_index(),
                     process_count=jax.process_count())
    batch = data.batch(step)  # this host's rows of global batch number `step`

A batch holds b = global_batch_size / process_count queries and G passages per query, query-major:

    query_input_ids, query_attention_mask        int32 [b, Lq]
    passage_input_ids, passage_attention_mask    int32 [b * G, Lp]   row i*G: query i's positive,
                                                                     rows i*G+1 .. i*G+G-1: its negatives
    labels                                       float32 [b]         scored pairs only (the score)

G is 1 for pairs and scored pairs (query = sentence1, passage = sentence2), 2 for triplets and
`train_group_size` for Tevatron groups. Token type ids are not returned (they are all zero).

Order: `batching.EpochOrder` (a permutation per (seed, epoch); the last incomplete batch of an epoch is
dropped). A host reads and tokenizes only its own rows, by random access, so resuming at any step reads
nothing twice and `batch(step)` is a pure function of the step. Which columns hold what is the data's
schema (`schemas.py`).

Packed (`packing=True`, `packing.py`): all the batch's texts, queries then passages, laid end to end in
rows of `pack_length` tokens, each text numbered globally (query i of the global batch is text i,
passage j is text B + j, B the global batch size):

    input_ids, segment_ids, position_ids, attention_mask    int32 [R, pack_length]
    query_lengths                                           int32 [b]      tokens of each query
    passage_lengths                                         int32 [b * G]  tokens of each passage
    labels                                                  float32 [b]    scored pairs only

R is fixed for the run (`pack_rows`, or estimated from the first batches); a batch
that needs more rows takes them, a new shape. With `pack_groups` k > 1 (micro-batches, GradCache chunks)
query i and its passages go to group i mod k, numbered as in a batch of B / k (`packing.py`).

Shapes: texts are padded to the smallest bucket length that holds the batch's longest text (buckets:
powers of two from 16, then the max length), so few shapes compile. Hosts see different rows, so their
longest texts differ; bucketing on host-local rows would give hosts different shapes, which a
multi-host step cannot take. With `fixed_lengths` (the default when process_count > 1) every batch is
padded to the max lengths instead, and all hosts always agree without exchanging anything.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Mapping, Sequence

import numpy as np

from starbucks_jax import config_blocks
from starbucks_jax.data import groups as groups_lib, packing, prompts, schemas, sources
from starbucks_jax.data.mixture_config import SAMPLINGS, mixture_entries, parse_mixture
from starbucks_jax.data.batching import EpochOrder, HostBatches, bucket_list, pad_rows
from starbucks_jax.data.checks import as_passages
from starbucks_jax.data.text_ids import batch_text_ids, labelled_width
from starbucks_jax.errors import StarbucksError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where training data comes from and how it is cut; built from `config.data`.

  Attributes:
    source: local file path(s), comma-separated, .jsonl/.json/.csv/.parquet (read whole: `split` does
      not apply); "hf:NAME[:CONFIG]", a hub data set (or a local dataset folder) read with
      `datasets.load_dataset(NAME, CONFIG, split=split)`; or "tfds:NAME[/CONFIG][:VERSION]", a TFDS
      data set prepared in ArrayRecord format, read with `tfds.data_source`.
    split: the split of a hub or TFDS source.
    kind: "triplets" (anchor, positive, negative), "pairs" (anchor, positive), "scored" (sentence1,
      sentence2, score), "tevatron" (query, positive_passages[, negative_passages]), or "auto" to decide
      from the column names. "query" may replace "anchor".
    train_group_size: Tevatron only: passages per query, 1 positive and train_group_size - 1 negatives.
    query_max_length, passage_max_length: queries / passages are truncated to this many tokens, [SEP] kept.
    query_prompt, passage_prompt: put before every query / passage text, as sentence-transformers' prompts (their
      tokens count in the max lengths; "" = none; scored pairs: the query's on both; `prompts.py`); or *_prefix.
    tfds_data_dir: where TFDS data sets are prepared (TFDS's default when None).
    max_examples: use only the first this many rows (quick runs).
    same_length: pad queries and passages of a batch to one length (the larger of their two), so the
      trainer encodes both in one forward pass and compiles one step per bucket instead of one per
      (query bucket, passage bucket) pair. Turn it off when queries are much shorter than passages.
    packing: lay texts end to end in rows of `pack_length` tokens instead of one padded row each
      (module docstring); one forward pass and one shape for the run.
    pack_length: tokens per packed row; None: the larger max length. Positions restart in every text,
      so it may exceed the model's max_position_embeddings.
    pack_rows: packed rows per host and batch (or micro-batch, chunk); None: estimated from the first batches.
    mixture: several sources instead of `source`: {name: {source, weight, objective, instruction, any field
      above but the shared layout}} (`mixture.py`); each batch comes from one of them.
    sampling: a mixture's steps per source: "size" (each source's epoch) or "weights" (shares by weight).
    mix_sources: a mixture's batches hold rows of every source instead of one (one objective, one group size).
    bad_rows: a bad row of lazy shards met while training: "error" (one error naming file and row) or
      "skip" (the next good row instead). streaming: refused, saying why (`sources.STREAMING_REFUSED`).
    clean_negatives: add each text's identity and each query's labelled positives' to a batch, so that the
      loss masks in-batch false negatives (`text_ids.py`; not for scored pairs, whose CoSENT loss has no
      negatives: a mixture's scored source takes it only from its own entry, not from the data block).
  """
  source: str = ""
  split: str = "train"
  kind: str = "auto"
  train_group_size: int = 8
  query_max_length: int = 128
  passage_max_length: int = 128
  query_prompt: str = ""
  passage_prompt: str = ""
  query_prefix: str = ""
  passage_prefix: str = ""
  tfds_data_dir: str | None = None
  max_examples: int | None = None
  same_length: bool = True
  packing: bool = False
  pack_length: int | None = None
  pack_rows: int | None = None
  bad_rows: str = "error"
  streaming: bool = False
  mixture: tuple = dataclasses.field(default=(), metadata={"parse": parse_mixture, "as_config": mixture_entries})
  sampling: str = "size"
  mix_sources: bool = False
  clean_negatives: bool = False

  def __post_init__(self):
    if self.mixture and self.source:
      raise StarbucksError("data.source and data.mixture are both set: a mixture names each source's own")
    if not self.mixture and (not isinstance(self.source, str) or not self.source.strip()):
      raise StarbucksError("data.source is not set: give a file path, hf:NAME or tfds:NAME (or a data.mixture)")
    if self.sampling not in SAMPLINGS:
      raise StarbucksError(f"data.sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}")
    if self.kind != "auto" and self.kind not in schemas.KINDS:
      raise StarbucksError(f"data.kind must be auto or one of {', '.join(schemas.KINDS)}, got {self.kind!r}")
    for name, least in (("train_group_size", 1), ("query_max_length", 2), ("passage_max_length", 2)):
      value = getattr(self, name)
      if not isinstance(value, int) or value < least:  # 2 tokens: room for [CLS] and [SEP]
        raise StarbucksError(f"data.{name} must be an integer of at least {least}, got {value!r}")
    if self.max_examples is not None and (not isinstance(self.max_examples, int) or self.max_examples < 1):
      raise StarbucksError(f"data.max_examples must be None or a positive integer, got {self.max_examples!r}")
    packing.check_settings(self.pack_length, self.pack_rows)
    prompts.data_prompts(self)  # strings, and an older name agreeing with the new
    longest = max(self.query_max_length, self.passage_max_length)
    if self.pack_length is not None and self.pack_length < longest:
      raise StarbucksError(f"data.pack_length {self.pack_length} is shorter than the longest text allowed "
                           f"({longest} tokens: query_max_length, passage_max_length)")

  @property
  def row_length(self) -> int:
    """Tokens per packed row."""
    return self.pack_length or max(self.query_max_length, self.passage_max_length)

  @classmethod
  def from_config_dict(cls, cd) -> "DataConfig":
    """From an ml_collections ConfigDict (or any mapping) with some of this class's fields."""
    return config_blocks.from_config_dict(cls, cd, "data")


class TrainData(HostBatches):
  """Validated training data with random access to any step's batch; see the module docstring."""

  def __init__(self, config: DataConfig, tokenizer, *, global_batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1, buckets: Sequence[int] | None = None,
               fixed_lengths: bool | None = None, row_multiple: int = 1, pack_groups: int = 1):
    """Opens and validates the data; every user error surfaces here, before training compiles.

    Args:
      config: the data's source and shape.
      tokenizer: a Hugging Face tokenizer (fast or slow) with a pad token.
      global_batch_size: queries per step over all hosts.
      seed: with the epoch, fixes the example order and the Tevatron passage choices.
      process_index: this host's index (`jax.process_index()`).
      process_count: the number of hosts (`jax.process_count()`); must divide global_batch_size.
      buckets: lengths to pad to (default: 16, 32, 64, ...); each max length is always added.
      fixed_lengths: pad every batch to the max lengths; default True when process_count > 1, so that
        all hosts' arrays have the same shape.
      row_multiple: packed rows per host are a multiple of this (the host's devices share them).
      pack_groups: packed batches come in this many groups, one per micro-batch or chunk (`packing.py`).

    Raises:
      StarbucksError: naming the problem (a file, a column, a row, a batch size).
    """
    super().__init__(global_batch_size=global_batch_size, seed=seed, process_index=process_index,
                     process_count=process_count, fixed_lengths=fixed_lengths, pack_groups=pack_groups)
    if getattr(tokenizer, "pad_token_id", None) is None:
      raise StarbucksError("the tokenizer has no pad token")
    self.config = config
    self.tokenizer = tokenizer
    self.query_buckets = bucket_list(buckets, config.query_max_length)
    self.passage_buckets = bucket_list(buckets, config.passage_max_length)

    self.table = sources.open_table(config.source, split=config.split, tfds_data_dir=config.tfds_data_dir,
                                    max_examples=config.max_examples, bad_rows=config.bad_rows,
                                    streaming=config.streaming)
    self.schema = schemas.resolve_schema(self.table, config.kind)
    self.kind = self.schema.kind
    self.query_prompt, self.passage_prompt = prompts.data_prompts(config, scored=self.schema.score is not None)
    passage_counts = self.table.check(self.schema.checks())  # lazy shards: the rules, kept for every read
    self.num_examples = len(self.table)
    if self.num_examples < self.global_batch_size:
      raise StarbucksError(f"{self.table.name} has {self.num_examples} examples, fewer than one global "
                           f"batch of {self.global_batch_size}")
    self.group_size = self.schema.group_size(config.train_group_size)
    # Clean negatives' labelled positives a query (`text_ids.py`): Tevatron rows list several, others one.
    self.labelled_width = labelled_width(passage_counts.get(self.schema.positive)) if self.schema.passages else 1
    self.order = EpochOrder(self.seed, self.num_examples, self.global_batch_size)
    self.steps_per_epoch = self.order.steps_per_epoch
    if self.schema.passages and (not self.schema.negative or self.schema.negative in passage_counts):  # lazy: none
      self._report_fill(passage_counts.get(self.schema.negative))
    self.row_multiple = row_multiple
    self.pack_rows = (packing.run_rows(config.pack_rows, self.estimate_pack_rows, row_multiple, config.row_length,
                                       self.pack_groups) if config.packing else None)
    log.info("%s: %d %s examples, %d passage(s) per query, %d steps per epoch of %d", self.table.name,
             self.num_examples, self.kind, self.group_size, self.steps_per_epoch, self.global_batch_size)

  def resized(self, global_batch_size: int) -> "TrainData":
    """The same data in global batches of `global_batch_size` (a mixed batch's share); nothing is read again."""
    out = copy.copy(self)
    HostBatches.__init__(out, global_batch_size=global_batch_size, seed=self.seed, process_index=self.process_index,
                         process_count=self.process_count, fixed_lengths=self.fixed_lengths)
    out.order = EpochOrder(self.seed, self.num_examples, global_batch_size)
    out.steps_per_epoch = out.order.steps_per_epoch
    return out

  def _report_fill(self, negative_counts: np.ndarray | None) -> None:
    wanted = self.group_size - 1
    short = self.num_examples if negative_counts is None else int(np.sum(negative_counts < wanted))
    if wanted and short:
      log.warning("%s: %d of %d queries have fewer than %d hard negatives; their groups are filled with "
                  "positive passages of other queries, drawn at random (never the query's own "
                  "positives)", self.table.name, short, self.num_examples, wanted)

  def example_indices(self, step: int) -> np.ndarray:
    """The example (row) indices of global batch `step`, all hosts' rows, in batch order."""
    return self.order.indices(step)

  def texts(self, step: int) -> tuple[list[str], list[str], np.ndarray | None]:
    """(queries, passages, scores or None) of this host's rows of batch `step`."""
    return self._texts(step)[:3]

  def _texts(self, step: int) -> tuple[list[str], list[str], np.ndarray | None, list[list[str]]]:
    """`texts`, and each query's labelled positive texts (all its row lists; pairs, triplets: the one)."""
    rows = self.host_rows(self.example_indices(step))
    epoch = int(step) // self.steps_per_epoch
    s, scores = self.schema, None
    if s.passages:
      queries, passages, labelled = self._group_texts(rows, epoch)
    else:
      columns = [c for c in (s.query, s.positive, s.negative, s.score) if c]
      values = self.table.read(rows, columns)
      queries = values[s.query]
      passage_columns = [c for c in (s.positive, s.negative) if c]
      passages = [self.passage_prompt + values[c][i] for i in range(len(rows)) for c in passage_columns]
      if s.score:
        scores = np.asarray([float(v) for v in values[s.score]], np.float32)
      labelled = [[p] for p in passages[::self.group_size]]
    return [self.query_prompt + q for q in queries], passages, scores, labelled

  def _token_ids(self, texts: list[str], max_length: int) -> list[list[int]]:
    return self.tokenizer(texts, truncation=True, max_length=max_length, padding=False,
                          return_attention_mask=False, return_token_type_ids=False)["input_ids"]

  def estimate_pack_rows(self, steps: int = 16) -> int:
    """The most packed rows this host needs in the first `steps` batches (a later batch that needs more
    grows by a few rows, a new shape: `packing.pack`; hosts that differ agree on the most each step:
    `training/loop.py`). No margin: a few extra compiles cost less than spare rows in every step."""
    most = 1
    for step in range(min(steps, self.steps_per_epoch)):
      queries, passages, _ = self.texts(step)
      lengths = [len(x) for x in self._token_ids(queries, self.config.query_max_length)]
      lengths += [len(x) for x in self._token_ids(passages, self.config.passage_max_length)]
      most = max(most, packing.rows_needed(lengths, self.config.row_length, 1, self.pack_groups, self._text_groups()))
    return min(most, self.local_batch_size * (1 + self.group_size) // self.pack_groups)

  def _text_groups(self) -> np.ndarray:
    """The packing group of each text of a host's batch (queries, then passages): its example's."""
    queries = np.arange(self.local_batch_size)
    return packing.group_of_example(np.concatenate([queries, np.repeat(queries, self.group_size)]), self.pack_groups)

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This host's rows of global batch `step`, tokenized and padded or packed (see the module docstring)."""
    queries, passages, scores, labelled = self._texts(step)
    out = {} if scores is None else {"labels": scores}
    out.update(batch_text_ids(queries, passages, labelled, self.labelled_width) if self.config.clean_negatives else {})
    if self.config.packing:
      return {**out, **self._pack(queries, passages)}
    out["query_input_ids"], out["query_attention_mask"] = self._encode(
        queries, self.config.query_max_length, self.query_buckets)
    out["passage_input_ids"], out["passage_attention_mask"] = self._encode(
        passages, self.config.passage_max_length, self.passage_buckets)
    if self.config.same_length:
      length = max(out["query_input_ids"].shape[1], out["passage_input_ids"].shape[1])
      for side in ("query", "passage"):
        pad = length - out[f"{side}_input_ids"].shape[1]
        out[f"{side}_input_ids"] = np.pad(out[f"{side}_input_ids"], ((0, 0), (0, pad)),
                                          constant_values=self.tokenizer.pad_token_id)
        out[f"{side}_attention_mask"] = np.pad(out[f"{side}_attention_mask"], ((0, 0), (0, pad)))
    return out

  def _pack(self, queries: list[str], passages: list[str]) -> dict[str, np.ndarray]:
    query_ids = self._token_ids(queries, self.config.query_max_length)
    passage_ids = self._token_ids(passages, self.config.passage_max_length)
    # Ids as in the module docstring, within each packing group (one group: the whole batch).
    k, g = self.pack_groups, self.group_size
    queries = packing.group_text_id(self.process_index * self.local_batch_size + np.arange(len(query_ids)), k)
    text_ids = np.concatenate([queries, self.global_batch_size // k + (queries[:, None] * g + np.arange(g)).ravel()])
    out = packing.pack({"input_ids": query_ids + passage_ids}, {"input_ids": self.tokenizer.pad_token_id},
                       text_ids, length=self.config.row_length, rows=self.pack_rows, row_multiple=self.row_multiple,
                       groups=k, group_of=self._text_groups())
    out["query_lengths"] = np.asarray([len(x) for x in query_ids], np.int32)
    out["passage_lengths"] = np.asarray([len(x) for x in passage_ids], np.int32)
    return out

  def row_pads(self) -> dict[str, int]:
    """Packed batches: the padding value of each [rows, length] array (for `packing.pad_to_rows`)."""
    return {"input_ids": self.tokenizer.pad_token_id}

  def _encode(self, texts: list[str], max_length: int, buckets: list[int]) -> tuple[np.ndarray, np.ndarray]:
    ids = self._token_ids(texts, max_length)
    longest = max(len(x) for x in ids)
    length = max_length if self.fixed_lengths else next(b for b in buckets if b >= longest)
    return pad_rows(ids, length, self.tokenizer.pad_token_id)

  def _passage_text(self, passage: Mapping) -> str:
    # Tevatron's format: title + " " + text when there is a title.
    title = (passage.get("title") or "").strip()
    return self.passage_prompt + (f"{title} {passage['text']}" if title else passage["text"])

  def _group_texts(self, rows: np.ndarray, epoch: int) -> tuple[list[str], list[str], list[list[str]]]:
    """Queries, their groups (a positive, then negatives drawn by rng([seed, epoch, row])) and each query's
    labelled positives."""
    s, size = self.schema, self.group_size
    values = self.table.read(rows, [c for c in (s.query, s.positive, s.negative) if c])
    groups = []
    for i, row in enumerate(rows):
      rng = np.random.default_rng([self.seed, epoch, int(row)])
      own = as_passages(values[s.positive][i])
      negatives = as_passages(values[s.negative][i]) if s.negative else []
      picks = (rng.choice(len(negatives), size - 1, replace=False) if len(negatives) >= size - 1
               else rng.permutation(len(negatives)))
      groups.append(groups_lib.Group(int(row), rng, own, [own[rng.integers(len(own))]] +
                           [negatives[j] for j in picks]))
    groups_lib.fill([g for g in groups if len(g.passages) < size], self.table, self.schema.positive, size)
    passages = [self._passage_text(p) for g in groups for p in g.passages]
    return values[s.query], passages, [[self._passage_text(p) for p in g.own] for g in groups]
