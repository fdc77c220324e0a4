"""Dropout whose mask is a hash of (key, element index), not a stream of PRNG bits.

Why: on CPU, `jax.random.bernoulli` is slow per element (threefry, or XLA's RngBitGenerator for "rbg"
keys), and BERT drops out 3.5 [tokens x hidden] tensors a layer: a large part of a MiniLM SRL step
(bench/profile_step.py; BENCHMARKS.md, "Profile first, then change", change 1). Here each element's
32 random bits are the murmur3 finaliser applied twice to its (row, position-in-row) index mixed with
two 32-bit seeds drawn once per call from the layer's key. That is a handful of integer ops fused into the elementwise kernel that applies the mask.

Properties: the mask is a pure function of (key, shape), like jax.random's, so runs stay reproducible
and resumed runs bit-identical; it depends on each element's global index, so it is the same however
the array is sharded; and given `row_ids` (each row's index in the whole batch) it is the same however
the batch is split into chunks (GradCache encodes a batch chunk by chunk, twice, and must drop the same
elements as one pass over the whole batch would). The keep probability is exactly 1 - round(rate 2^32) / 2^32, and kept values are
scaled by its inverse (a multiply, not a divide), so the expectation is unchanged.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def _fmix32(h: jnp.ndarray) -> jnp.ndarray:
  """murmur3's 32-bit finaliser: every input bit flips each output bit with probability ~1/2."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def hash_bits(key: jax.Array, shape: tuple, row_ids: jnp.ndarray | None = None) -> jnp.ndarray:
  """uint32 bits of `shape`, one per element, from the element's index and two seeds drawn from `key`.

  `row_ids` [shape[0]]: the index each row (axis 0) stands for; None: 0, 1, 2, ...
  """
  seeds = jax.random.bits(key, (2,), jnp.uint32)
  if len(shape) == 0:
    return _fmix32(_fmix32(seeds[0]) ^ seeds[1])
  if row_ids is None:
    rows = lax.broadcasted_iota(jnp.uint32, shape, 0)
  else:
    rows = jnp.broadcast_to(row_ids.astype(jnp.uint32).reshape((-1,) + (1,) * (len(shape) - 1)), shape)
  position = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(1, len(shape))):  # the element's index within its row, row-major
    position = position + lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
    stride *= shape[axis]
  h = _fmix32(position ^ seeds[0])
  return _fmix32(h ^ (rows * jnp.uint32(0x9E3779B9)) ^ seeds[1])


def threshold(rate: float) -> int:
  """Bits below this are dropped: round(rate * 2^32), clipped to the uint32 range."""
  return min(int(round(rate * 2 ** 32)), 2 ** 32 - 1)


def dropout(x: jnp.ndarray, rate: float, key: jax.Array, row_ids: jnp.ndarray | None = None) -> jnp.ndarray:
  """x with each element zeroed with probability ~`rate` (see threshold) and the rest scaled up; `row_ids`
  as in `hash_bits`."""
  if rate <= 0:
    return x
  if rate >= 1:
    return jnp.zeros_like(x)
  cut = threshold(rate)
  keep = hash_bits(key, x.shape, row_ids) >= jnp.uint32(cut)
  scale = 2 ** 32 / (2 ** 32 - cut)
  # Scaled in float32: a bfloat16 scale (1.109 for 1/0.9) would bias every kept value by 0.2%.
  return jnp.where(keep, (x.astype(jnp.float32) * scale).astype(x.dtype), jnp.zeros((), x.dtype))


class Dropout(nn.Module):
  """Drop-in for `flax.linen.Dropout(rate)(x, deterministic)`, drawing its key from the "dropout" stream."""
  rate: float

  @nn.compact
  def __call__(self, x: jnp.ndarray, deterministic: bool, row_ids: jnp.ndarray | None = None) -> jnp.ndarray:
    if deterministic or self.rate <= 0:
      return x
    return dropout(x, self.rate, self.make_rng("dropout"), row_ids)
