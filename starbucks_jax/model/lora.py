"""LoRA adapters as a parameter tree of their own, and how they merge into a base model's tree.

An adapter tree mirrors the base tree down to each adapted matrix, whose leaf becomes a pair:

    {"encoder": {"layer_0": {"attention": {"query": {"kernel": {"a": [in, r], "b": [r, out]}}}}}}

and the adapted model's matrix is W + scale * a @ b (scale = alpha / r; Hu et al. 2021). It is nested like
the base tree, not keyed by "/"-joined paths, so that Orbax stores it as it stores any parameter tree and
the optimizer's per-part labels and decay mask read it as they read the base.

Here, below the runtime, because every reader of a model needs the merge, not only training: a LoRA run's
checkpoints hold the adapters alone, and `runtime/workdir.ModelSource.load_params` merges them into the
base the run trained (`merged_into_base`) for encode, evaluate, export and init_from; the training step
merges them on the fly inside the loss (`training/step.py`).
"""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from starbucks_jax.errors import StarbucksError
from starbucks_jax.model.registry import family_of

PAIR = ("a", "b")


def adapted(adapters: dict) -> dict[str, dict]:
  """{"encoder/layer_0/attention/query/kernel": {"a": ..., "b": ...}} of an adapter tree."""
  pairs: dict[str, dict] = {}
  for path, value in traverse_util.flatten_dict(adapters, sep="/").items():
    matrix, _, half = path.rpartition("/")
    pairs.setdefault(matrix, {})[half] = value
  return pairs


def init_adapters(base: dict, paths, rank: int, rng: jax.Array) -> dict:
  """Adapters for the matrices at `paths` of `base` (arrays or shapes): a uniform in +-1/sqrt(in), PEFT's
  default (kaiming-uniform with a = sqrt(5)), so a run starts where PEFT's would; b zeros, so the adapted
  model starts as the base, exactly."""
  flat = traverse_util.flatten_dict(base, sep="/")
  pairs = {}
  for i, path in enumerate(sorted(paths)):
    rows, cols = flat[path].shape
    bound = 1.0 / np.sqrt(rows)
    a = jax.random.uniform(jax.random.fold_in(rng, i), (rows, rank), jnp.float32, -bound, bound)
    pairs[f"{path}/a"], pairs[f"{path}/b"] = a, jnp.zeros((rank, cols), jnp.float32)
  return traverse_util.unflatten_dict(pairs, sep="/")


def _product(a, b):
  """a @ b in float32: numpy's for host arrays (an export), else XLA's at full float32 precision (a step)."""
  if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
    return np.matmul(a.astype(np.float32), b.astype(np.float32))
  return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def merge(base: dict, adapters: dict, scale: float) -> dict:
  """The base tree with each adapted matrix W replaced by W + scale * a @ b; every other leaf is the base's."""
  flat = traverse_util.flatten_dict(base, sep="/", keep_empty_nodes=True)
  for path, pair in adapted(adapters).items():
    w = flat[path]
    flat[path] = w + (scale * _product(pair["a"], pair["b"])).astype(w.dtype)
  return traverse_util.unflatten_dict(flat, sep="/")


def fingerprint(params: dict) -> str:
  """A CRC-32 of a host tree's paths, shapes, dtypes and bytes: tells whether a base re-read later is the
  one a LoRA run started from (its checkpoints are trained against those weights only)."""
  crc = 0
  for path, value in sorted(traverse_util.flatten_dict(params, sep="/").items()):
    value = np.ascontiguousarray(value)
    crc = zlib.crc32(f"{path}:{value.shape}:{value.dtype};".encode(), crc)
    crc = zlib.crc32(value.view(np.uint8).reshape(-1).data, crc)
  return f"{crc:08x}"


def merged_into_base(adapters: dict, lora: dict, base: dict, config) -> dict:
  """A LoRA run's model: its adapters merged into its base, re-read (`base`) and cut as the run cut it.

  `lora`: the run's record (workdir/model/starbucks.json "lora": base, rank, alpha, scale, parts,
  fingerprint; `training/lora.py` writes it); `config`: the run's model config (its layer count).
  """
  missing = [part for part in lora["parts"] if part not in base]
  if missing:
    raise StarbucksError(f"the LoRA base {lora['base']} lacks {', '.join(missing)}, which the run trained with")
  base = {part: base[part] for part in lora["parts"]}
  if "encoder" in base:  # a `separate` run trains its base cut to its layers
    base["encoder"] = family_of(config).keep_layers(base["encoder"], config.num_hidden_layers)
  if fingerprint(base) != lora["fingerprint"]:
    raise StarbucksError(f"the LoRA base {lora['base']} is not the model this run's adapters were trained on "
                         "(its weights changed since the run started); its checkpoints hold only the adapters")
  return merge(base, adapters, lora["scale"])
