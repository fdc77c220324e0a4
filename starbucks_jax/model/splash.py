"""The TPU's fused attention kernel (Pallas splash attention) for this project's attention:
each token attending within its own segment, optionally within a sliding window and in causal order.

Which attention runs is read from the environment while a forward pass is traced (`kernel_mode`): a
setting holds for what is traced after it is made (JAX reuses a function's earlier traces), and any value
but these four is an error:

  STARBUCKS_ATTENTION=auto              the default: the kernel on a TPU backend where it applies, XLA
                                        elsewhere (layers/attention.attend's dense path, unchanged)
  STARBUCKS_ATTENTION=xla               XLA everywhere
  STARBUCKS_ATTENTION=splash            the kernel where it applies; on another backend an error (Mosaic
                                        compiles it for TPUs only)
  STARBUCKS_ATTENTION=splash-interpret  the kernel in Pallas' interpret mode, on any backend: slow, for
                                        checking it on the CPU (tests/model/test_splash_attention.py)

The kernel applies (`applies`) when the length is a multiple of 128 (its blocks' size) and attention
dropout is off (it has none); elsewhere XLA runs, silently.

Masks. The kernel reads per-token segment ids, not a dense mask: a query sees the keys of its own
segment (`splash_attention_mask.FullMask`), and in ModernBERT's local layers only those at most `window`
positions away (`LocalMask`, window on both sides). Packed rows pass their `segment_ids`; padded rows
pass the 0/1 attention mask, so text attends to exactly the text, as under the dense mask, and padding
to padding (never an empty row). Only the states at padding positions differ from XLA's (there padding
attends to the text); nothing reads them: pooling skips padding and no text token attends to it.

Sharding. XLA cannot partition a Mosaic kernel, so under a mesh whose activation rules split the example
axis (training's `runtime/sharding.activation_layout`) each device runs the kernel on its own examples
(`shard_map`); a batch those devices do not divide falls back to XLA.

The kernel does not scale queries: `segment_attention` multiplies them by head_dim ** -0.5 first.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib

from starbucks_jax.errors import StarbucksError
from starbucks_jax.model.family import ACTIVATION_AXES

ENV = "STARBUCKS_ATTENTION"
MODES = ("auto", "xla", "splash", "splash-interpret")
BLOCK = 128  # the kernel's blocks are multiples of the TPU's 128 lanes


def kernel_mode(batch: int, length: int, dropout: bool) -> Optional[bool]:
  """Whether attention over [batch, length] runs the kernel, from `STARBUCKS_ATTENTION`: None for XLA,
  else the kernel's `interpret` flag."""
  mode = os.environ.get(ENV, "auto").strip().lower() or "auto"
  if mode not in MODES:
    raise StarbucksError(f"{ENV}={os.environ[ENV]!r} is not one of {', '.join(MODES)}")
  backend = jax.default_backend()
  if mode == "splash" and backend != "tpu":
    raise StarbucksError(f"{ENV}=splash compiles the kernel for a TPU, and the backend is {backend}; "
                         f"splash-interpret runs it in Pallas' interpret mode on any backend")
  if mode == "xla" or (mode == "auto" and backend != "tpu") or not applies(batch, length, dropout):
    return None
  return mode == "splash-interpret"


def applies(batch: int, length: int, dropout: bool) -> bool:
  """Whether the kernel can compute this attention: whole blocks, no dropout, the batch split evenly
  over the devices of the mesh in force (if any)."""
  return length % BLOCK == 0 and not dropout and batch % _batch_devices() == 0


def segment_attention(q, k, v, segment_ids, *, window: Optional[int] = None, causal: bool = False,
                      scale: Optional[float] = None, interpret: bool = False):
  """Softmax attention of q over k, v ([batch, length, heads, head_dim]) where a query and a key share a
  segment id (`segment_ids` [batch, length]), with `window` at most `window` positions apart, and with
  `causal` the key at or before the query; the scores scaled by `scale` (default head_dim ** -0.5)."""
  batch, length, heads, head_dim = q.shape
  kernel = _kernel(length, heads, window, causal, interpret)
  scale = head_dim ** -0.5 if scale is None else scale
  heads_first = lambda x: jnp.swapaxes(x, 1, 2)  # the kernel takes [heads, length, head_dim] per example

  def one(q, k, v, ids):
    return kernel(q, k, v, segment_ids=kernel_lib.SegmentIds(q=ids, kv=ids))

  def run(q, k, v, ids):
    scaled = q * jnp.asarray(scale, q.dtype)
    return heads_first(jax.vmap(one)(heads_first(scaled), heads_first(k), heads_first(v), ids))

  axes = _batch_axes()
  if axes is not None:
    spec = jax.sharding.PartitionSpec(axes)
    # Each device's examples are independent: nothing for shard_map's replication checks to verify.
    run = jax.shard_map(run, in_specs=(spec,) * 4, out_specs=spec, check_vma=False)
  return run(q, k, v, segment_ids.astype(jnp.int32))


@functools.lru_cache(maxsize=None)
def _kernel(length: int, heads: int, window: Optional[int], causal: bool, interpret: bool):
  """The kernel for one shape, window, order and mode: building it walks the mask block by block in numpy."""
  shape = (length, length)
  if window is not None:
    one = mask_lib.LocalMask(shape, (window, 0 if causal else window), offset=0)
  else:
    one = mask_lib.CausalMask(shape) if causal else mask_lib.FullMask(shape)
  block = next(size for size in (512, 256, BLOCK) if length % size == 0)  # 512: MaxText's default
  sizes = kernel_lib.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                                block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block,
                                block_kv_dq=block)
  # Built while a function is traced, but cached across traces: its mask tables must be constants.
  with jax.ensure_compile_time_eval():
    return kernel_lib.make_splash_mha(mask_lib.MultiHeadMask([one] * heads), head_shards=1, q_seq_shards=1,
                                      block_sizes=sizes, interpret=interpret)


def _batch_axes():
  """The mesh axes the activation rules in force split the example axis over; None without a mesh or rules."""
  mesh = jax.sharding.get_abstract_mesh()
  axes = nn.logical_to_mesh_axes(ACTIVATION_AXES[:1])[0]
  return None if mesh.empty or axes is None else axes


def _batch_devices() -> int:
  axes = _batch_axes()
  if axes is None:
    return 1
  mesh = jax.sharding.get_abstract_mesh()
  return math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
