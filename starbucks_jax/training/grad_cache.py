"""GradCache: the loss and gradients of a whole contrastive batch, with the encoder's activations of one
chunk at a time (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup"), for every SRL schedule.

A contrastive loss couples every query with every passage of the batch, so the batch cannot simply be
split (`grad_accum_steps` splits it and takes negatives from within each micro-batch: another
objective). But the loss reads the encoder only through the pooled vectors, which are small. So, in one
jitted function:

  1. encode each side of the batch (queries, passages) chunk by chunk, keeping only the pooled vectors of
     every layer the loss reads (no activations are kept for a backward pass);
  2. compute the full-batch loss on those vectors, and its gradient with respect to them;
  3. encode each chunk again and back-propagate its share of that gradient (a vector-Jacobian product),
     summing the parameter gradients over the chunks.

Step 3 repeats step 1's forward pass, so dropout must drop the same elements both times and as one pass
over the whole batch would: every chunk passes its rows' indices in the whole batch (`row_ids`) to the
encoder, and our dropout masks are a hash of (key, row index, position) (`model/dropout.py`). The loss
and gradients then equal the plain step's up to float32 summation order.

Chunk k of a side holds rows k, k + count, k + 2 count, ... (count = rows / chunk rows): a strided split
keeps each device's share of every chunk on that device, as `losses/batch.micro_batches` does.

Packed batches (`data.packing`) come packed in one group per chunk (`data/packing.py`): chunk k is queries
k, k + count, ... and their passages, in rows of their own, so a chunk is one encoder pass over its rows
(`_packed_value_and_grad`); its pooled vectors are put back in the batch's order for the loss.

The batch is read as `losses/batch.SrlBatch`. A task's step settings opt in with `grad_cache` (a
`GradCacheConfig`, or None) and provide `passes(srl_batch, rng)` -> ([[Side, ...] per encoder pass], the
loss's rng), `encode(params, tokens, dropout_rng, row_ids)` -> {layer: [texts, hidden]}, and
`pooled_loss([pooled of each side], srl_batch, rng)` -> (loss, metrics) (the batch for its labels and text
ids: clean negatives' mask is of the whole batch, `losses/negatives.py`), the same functions its plain loss is
made of (`tasks/srl.py`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from starbucks_jax.data import packing
from starbucks_jax.errors import StarbucksError
from starbucks_jax.losses.batch import SrlBatch
from starbucks_jax.model.tokens import Tokens


@dataclasses.dataclass(frozen=True)
class GradCacheConfig:
  """GradCache for SRL (`config.grad_cache`); off while query_chunk is 0.

  Attributes:
    query_chunk: queries (CoSENT: first sentences) encoded at once; must divide batch_size.
    passage_chunk: passages (CoSENT: second sentences) encoded at once; must divide batch_size x
      train_group_size. 0: the query chunk's passages (query_chunk x train_group_size), so that when
      queries and passages are padded alike each chunk is one encoder pass over both.
  Each chunk is split over the mesh's data x fsdp devices, so both must be multiples of their number.
  """
  query_chunk: int = 0
  passage_chunk: int = 0

  def __post_init__(self):
    for name in ("query_chunk", "passage_chunk"):
      if getattr(self, name) < 0:
        raise StarbucksError(f"grad_cache.{name} must be >= 0 (0: off), got {getattr(self, name)}")
    if self.passage_chunk and not self.query_chunk:
      raise StarbucksError("grad_cache.passage_chunk is set but grad_cache.query_chunk is 0; GradCache is on "
                           "when query_chunk is set")

  @property
  def enabled(self) -> bool:
    return self.query_chunk > 0

  def chunk_rows(self, group_size: int) -> tuple[int, int]:
    """(query rows, passage rows) per chunk, with `group_size` passages per query."""
    return self.query_chunk, self.passage_chunk or self.query_chunk * group_size

  def check(self, queries: int, group_size: int, devices: int) -> None:
    """Raises unless the chunks divide the batch's `queries` and `queries x group_size` passages and
    split evenly over `devices` (the mesh's data x fsdp)."""
    query_chunk, passage_chunk = self.chunk_rows(group_size)
    for name, chunk, rows, what in (("query_chunk", query_chunk, queries, "batch_size"),
                                    ("passage_chunk", passage_chunk, queries * group_size,
                                     "the passages of a batch (batch_size x train_group_size)")):
      if rows % chunk:
        raise StarbucksError(f"grad_cache.{name} {chunk} does not divide {what}, {rows}")
      if chunk % devices:
        raise StarbucksError(f"grad_cache.{name} {chunk} must be a multiple of the mesh's {devices} data x fsdp "
                             "devices (each chunk is split over them)")

  def describe(self, group_size: int) -> str:
    query, passage = self.chunk_rows(group_size)
    return f"GradCache in chunks of {query} queries and {passage} passages"


@dataclasses.dataclass(frozen=True)
class Side:
  """One encoder input of a batch (its queries, or its passages).

  Attributes:
    input_ids, attention_mask: [rows, length].
    dropout_rng: the key of this side's encoder pass.
    first_row: the index of its row 0 in its encoder pass (queries and passages encoded in one pass
      number their rows on from the queries').
    chunk_rows: rows per GradCache chunk (None when GradCache is off).
  """
  input_ids: jax.Array
  attention_mask: jax.Array
  dropout_rng: jax.Array
  first_row: int
  chunk_rows: int | None = None

  @property
  def rows(self) -> int:
    return self.input_ids.shape[0]

  def chunks(self) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(input ids, attention mask, row ids), each [chunks, chunk rows, ...]."""
    count = self.rows // self.chunk_rows
    row_ids = self.first_row + jnp.arange(self.rows, dtype=jnp.int32)
    return split(self.input_ids, count), split(self.attention_mask, count), split(row_ids, count)


def split(x: jax.Array, count: int) -> jax.Array:
  """[rows, ...] -> [count, rows / count, ...]; chunk k holds rows k, k + count, k + 2 count, ..."""
  x = packing.split_rows(x, count)
  # The chunk's rows stay split over the batch axes (a no-op outside training's activation layout).
  return nn.with_logical_constraint(x, (None, "activation_batch") + (None,) * (x.ndim - 2))


def merge(x: jax.Array) -> jax.Array:
  """The inverse of `split`: [count, rows / count, ...] -> [rows, ...]."""
  return jnp.swapaxes(x, 0, 1).reshape((-1,) + x.shape[2:])


def _in_loop(params: Any, chunk: Any) -> tuple[Any, Any]:
  """`params` and `chunk` as one value that XLA must treat as new in every iteration of a chunk loop.

  The encoder's work on the parameters alone (FSDP's all-gather of each layer's weights, their cast to the
  compute dtype) does not depend on the chunk, so XLA's loop-invariant code motion would lift it out of the
  loop and hold every layer's gathered weights for the whole loop: more memory than the plain step at 4B
  and 8B (BENCHMARKS.md, "Qwen3 at real sizes"). Tied to the chunk by an optimization barrier, it stays in
  the loop body, one layer's weights at a time."""
  return jax.lax.optimization_barrier((params, chunk))


def _chunked_passes(passes: list[list[Side]]) -> list[list[Side]]:
  """The task's encoder passes, each encoded chunk by chunk: chunk k of a pass is chunk k of each of its
  sides, one after the other. Sides of one pass that are cut into different numbers of chunks (an explicit
  passage_chunk) are encoded apart; their row ids keep their dropout masks what the one pass drew."""
  out = []
  for sides in passes:
    if len({side.rows // side.chunk_rows for side in sides}) == 1:
      out.append(sides)
    else:
      out.extend([side] for side in sides)
  return out


def _chunks(sides: list[Side]) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(input ids, attention mask, row ids) of one pass, each [chunks, rows per chunk, ...]."""
  return tuple(jnp.concatenate(parts, axis=1) for parts in zip(*(side.chunks() for side in sides)))


def _pooled(settings, params, sides: list[Side]) -> list[dict[int, jax.Array]]:
  """Step 1: every layer's pooled vectors of one pass's sides, a chunk at a time, keeping no activations."""
  def encode(chunk):
    loop_params, (input_ids, attention_mask, row_ids) = _in_loop(params, chunk)
    return settings.encode(loop_params, Tokens.padded(input_ids, attention_mask), sides[0].dropout_rng, row_ids)

  pooled = jax.lax.map(encode, _chunks(sides))  # {layer: [chunks, rows per chunk, hidden]}
  out, start = [], 0
  for side in sides:
    out.append({layer: merge(v[:, start:start + side.chunk_rows]) for layer, v in pooled.items()})
    start += side.chunk_rows
  return out


def _backprop(settings, params, sides: list[Side], cotangents: list[dict[int, jax.Array]], grads: Any) -> Any:
  """Step 3: `grads` plus the parameter gradient of <pooled vectors, cotangents> over one pass's chunks."""
  count = sides[0].rows // sides[0].chunk_rows

  def add_chunk(total, chunk):
    loop_params, (input_ids, attention_mask, row_ids, cotangent) = _in_loop(params, chunk)
    tokens = Tokens.padded(input_ids, attention_mask)
    _, vjp = jax.vjp(lambda p: settings.encode(p, tokens, sides[0].dropout_rng, row_ids), loop_params)
    (chunk_grads,) = vjp(cotangent)
    return jax.tree.map(jnp.add, total, chunk_grads), None

  cotangent_chunks = {layer: jnp.concatenate([split(c[layer], count) for c in cotangents], axis=1)
                      for layer in cotangents[0]}
  grads, _ = jax.lax.scan(add_chunk, grads, _chunks(sides) + (cotangent_chunks,))
  return grads


def value_and_grad(settings, params, batch: dict, rng: jax.Array):
  """((loss, metrics), gradients w.r.t. params) of the whole batch, as `jax.value_and_grad(settings.loss,
  has_aux=True)` gives them, with one chunk's activations at a time."""
  srl = SrlBatch.of(batch)
  if srl.passes[0].tokens.packed:  # chunks of whole packing groups, not of rows
    return _packed_value_and_grad(settings, params, srl, rng)
  task_passes, loss_rng = settings.passes(srl, rng)
  passes = _chunked_passes(task_passes)
  pooled = [vectors for sides_of_pass in passes for vectors in _pooled(settings, params, sides_of_pass)]
  loss_of_pooled = lambda pooled: settings.pooled_loss(pooled, srl, loss_rng)
  (loss, metrics), cotangents = jax.value_and_grad(loss_of_pooled, has_aux=True)(pooled)
  grads, start = jax.tree.map(jnp.zeros_like, params), 0
  for sides_of_pass in passes:
    grads = _backprop(settings, params, sides_of_pass, cotangents[start:start + len(sides_of_pass)], grads)
    start += len(sides_of_pass)
  return (loss, metrics), grads


def _packed_value_and_grad(settings, params, srl: SrlBatch, rng: jax.Array):
  """`value_and_grad` of packed rows: chunk k is packing group k (`data/packing.py`), queries k, k + count,
  ... and their passages, in rows of their own. Its pooled vectors come out numbered within the group
  (queries, then each query's passages) and are put back in the batch's order for the loss."""
  dropout_rng, loss_rng = jax.random.split(rng)  # as the plain packed step (`tasks/srl.compute_loss`)
  (text_pass,) = srl.passes
  tokens, (queries, passages) = text_pass.tokens, text_pass.side_texts
  count, group = queries // settings.grad_cache.query_chunk, passages // queries
  per_chunk = queries // count  # queries of a chunk
  chunks = {k: split(getattr(tokens, k), count) for k in ("input_ids", "attention_mask", "segment_ids", "position_ids")}
  chunks["row_ids"] = split(jnp.arange(tokens.shape[0], dtype=jnp.int32), count)  # the same dropout in both passes

  def encode(p, chunk):
    chunk_tokens = Tokens.packed_rows(chunk["input_ids"], chunk["attention_mask"], chunk["segment_ids"],
                                      chunk["position_ids"], num_texts=(queries + passages) // count)
    return settings.encode(p, chunk_tokens, dropout_rng, chunk["row_ids"])

  def to_batch_order(v):  # [count, chunk texts, hidden] -> ([queries, hidden], [passages, hidden])
    chunk_passages = v[:, per_chunk:].reshape(count, per_chunk, group, v.shape[-1])
    return merge(v[:, :per_chunk]), jnp.swapaxes(chunk_passages, 0, 1).reshape(passages, v.shape[-1])

  def to_chunk_order(query, passage):  # the inverse of to_batch_order
    chunk_passages = jnp.swapaxes(passage.reshape(per_chunk, count, group, passage.shape[-1]), 0, 1)
    return jnp.concatenate([split(query, count), chunk_passages.reshape(count, per_chunk * group, -1)], axis=1)

  pooled = jax.lax.map(lambda chunk: encode(*_in_loop(params, chunk)), chunks)
  by_side = {layer: to_batch_order(v) for layer, v in pooled.items()}
  pooled = [{layer: v[0] for layer, v in by_side.items()}, {layer: v[1] for layer, v in by_side.items()}]
  loss_of_pooled = lambda pooled: settings.pooled_loss(pooled, srl, loss_rng)
  (loss, metrics), (query_cot, passage_cot) = jax.value_and_grad(loss_of_pooled, has_aux=True)(pooled)
  cotangents = {layer: to_chunk_order(query_cot[layer], passage_cot[layer]) for layer in query_cot}

  def add_chunk(total, chunk_and_cotangent):
    loop_params, (chunk, cotangent) = _in_loop(params, chunk_and_cotangent)
    _, vjp = jax.vjp(lambda p: encode(p, chunk), loop_params)
    (chunk_grads,) = vjp(cotangent)
    return jax.tree.map(jnp.add, total, chunk_grads), None

  grads, _ = jax.lax.scan(add_chunk, jax.tree.map(jnp.zeros_like, params), (chunks, cotangents))
  return (loss, metrics), grads
