"""The device mesh and how arrays are laid out on it.

The mesh is declared in the config: `mesh.data` x `mesh.fsdp` devices (-1 fills the rest; the default,
data=-1 and fsdp=1, is pure data parallelism over every device). One code path serves one device and a
pod:

- A global batch is one array whose first (example) axis is split over both axes, ("data", "fsdp"), so
  a loss that scores every query against every passage of the batch gets the other devices' passages
  from XLA's collectives, not from hand-written gathers.
- Parameters and their optimizer state follow the model family's `param_axes` (BERT's are in
  `model/bert_names.py`): each large kernel and embedding table names its dimensions (logical axes, as
  in MaxText), and `LOGICAL_RULES` maps the "embed" (hidden) dimension to the "fsdp" mesh axis. With fsdp > 1 each device holds 1/fsdp of those tensors and XLA gathers them
  layer by layer (fully sharded data parallelism); with fsdp = 1 the same rules replicate everything.
  Biases and LayerNorm vectors are small and stay replicated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from starbucks_jax.errors import StarbucksError
from starbucks_jax.model.family import ACTIVATION_AXES

log = logging.getLogger(__name__)

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
MESH_AXES = (DATA_AXIS, FSDP_AXIS)
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)  # the example axis of a batch is split over every device

# Logical axis -> mesh axis. Only the hidden dimension is sharded: it divides by the usual power-of-two
# FSDP sizes (768 = 3 x 256), where BERT's vocabulary (30522) does not.
LOGICAL_RULES = {"embed": FSDP_AXIS}


# Logical activation axes (`model/family.py`) -> mesh axes: hidden states stay split by example.
ACTIVATION_RULES = tuple(zip(ACTIVATION_AXES, (BATCH_AXES, None, None)))


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """The device mesh of a run (`config.mesh`).

  Attributes:
    data: data-parallel devices; -1 = what fsdp leaves.
    fsdp: devices that shard parameters and optimizer state (ZeRO-3 style); the batch is split over
      data x fsdp; -1 = what data leaves.
  """
  data: int = -1
  fsdp: int = 1

  def __post_init__(self):
    _check_sizes({DATA_AXIS: self.data, FSDP_AXIS: self.fsdp})


@contextlib.contextmanager
def activation_layout(mesh: Mesh):
  """While tracing under this context, the model's activation constraints take effect on `mesh`."""
  import flax.linen as nn
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(ACTIVATION_RULES):
    yield


def _check_sizes(sizes: dict[str, int]) -> None:
  if sum(size == -1 for size in sizes.values()) > 1:
    raise StarbucksError("only one of mesh.data and mesh.fsdp may be -1")
  bad = [f"mesh.{axis}={size}" for axis, size in sizes.items() if size < 1 and size != -1]
  if bad:
    raise StarbucksError(f"{', '.join(bad)}: mesh sizes must be positive or -1")


def mesh_shape(mesh_config, device_count: int) -> dict[str, int]:
  """{"data": d, "fsdp": f} with d x f = device_count; -1 (at most one axis) takes what is left.

  `mesh_config`: a MeshConfig, or anything with `data` / `fsdp` attributes (defaults -1 and 1)."""
  sizes = {axis: int(getattr(mesh_config, axis, -1 if axis == DATA_AXIS else 1)) for axis in MESH_AXES}
  _check_sizes(sizes)
  fill = [axis for axis, size in sizes.items() if size == -1]
  fixed = math.prod(size for size in sizes.values() if size != -1)
  if fill:
    if device_count % fixed:
      raise StarbucksError(f"mesh {_describe(sizes)} does not divide the {device_count} devices")
    sizes[fill[0]] = device_count // fixed
  elif fixed > device_count:
    raise StarbucksError(f"mesh {_describe(sizes)} needs {fixed} devices; there are {device_count}")
  return sizes


def _describe(sizes: dict) -> str:
  return " x ".join(f"{axis}={size}" for axis, size in sizes.items())


def make_mesh(mesh_config, devices=None) -> Mesh:
  """The mesh over `devices` (default: every device of every process, in process order)."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = mesh_shape(mesh_config, len(devices))
  used = math.prod(sizes.values())
  if used < len(devices) and jax.process_count() > 1:
    raise StarbucksError(f"mesh {_describe(sizes)} uses {used} of {len(devices)} devices; a multi-process run "
                         "must use them all")
  # Process order keeps each process's devices together, so its rows of a batch are one contiguous
  # block (what `put_batch` and the data loaders assume; `check_process_rows` verifies it).
  return Mesh(np.asarray(devices[:used]).reshape(sizes[DATA_AXIS], sizes[FSDP_AXIS]), MESH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (example) axis split over every device, the rest whole."""
  return NamedSharding(mesh, P(BATCH_AXES))


def batch_devices(mesh: Mesh) -> int:
  return mesh.shape[DATA_AXIS] * mesh.shape[FSDP_AXIS]


def check_batch_divisible(global_batch_size: int, mesh: Mesh, grad_accum_steps: int) -> None:
  per_step = batch_devices(mesh) * grad_accum_steps
  if global_batch_size % per_step:
    raise StarbucksError(f"batch_size {global_batch_size} must be divisible by the devices of the mesh "
                         f"({mesh.shape[DATA_AXIS]} data x {mesh.shape[FSDP_AXIS]} fsdp) x grad_accum_steps "
                         f"({grad_accum_steps})")


def path_name(path) -> str:
  """"encoder/layer_0/attention/query/kernel" from a tree path (dict keys only: optimizer states'
  tuple and field entries are skipped, so a moment has its parameter's name)."""
  return "/".join(str(entry.key) for entry in path if isinstance(entry, jax.tree_util.DictKey))


def logical_axes(name: str, ndim: int, param_axes) -> tuple:
  """The logical axes `param_axes` gives a parameter called `name` (unsharded when none matches)."""
  for pattern, axes in param_axes:
    if re.search(pattern, name) and len(axes) == ndim:
      return axes
  return (None,) * ndim


def spec_for(name: str, shape, mesh: Mesh, param_axes) -> P:
  """The PartitionSpec of an array called `name`; a dimension the mesh axis does not divide stays whole."""
  spec = []
  for axis, size in zip(logical_axes(name, len(shape), param_axes), shape):
    mesh_axis = LOGICAL_RULES.get(axis)
    if mesh_axis is not None and (mesh.shape[mesh_axis] == 1 or size % mesh.shape[mesh_axis]):
      mesh_axis = None  # nothing to split, or an uneven split: keep it whole
    spec.append(mesh_axis)
  return P(*spec)


def tree_shardings(tree, mesh: Mesh, param_axes):
  """NamedShardings for a tree of parameters, of a TrainState, or of anything holding them.

  `param_axes`: the model family's ((regex on a parameter path, logical axes), ...)."""
  def sharding_of(path, leaf):
    shape = getattr(leaf, "shape", ())
    return NamedSharding(mesh, spec_for(path_name(path), shape, mesh, param_axes) if len(shape) >= 2 else P())
  return jax.tree_util.tree_map_with_path(sharding_of, tree)


def bytes_per_device(tree, shardings) -> int:
  """Bytes one device holds of `tree` (arrays or ShapeDtypeStructs) laid out by `shardings`."""
  total = 0
  for leaf, sharding in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
    shard = sharding.shard_shape(leaf.shape)
    total += math.prod(shard) * np.dtype(leaf.dtype).itemsize
  return total


def gather_to_host(tree, mesh: Mesh):
  """The whole of `tree` as numpy arrays on every process (a collective: every process must call it)."""
  if all(getattr(x, "is_fully_replicated", True) for x in jax.tree.leaves(tree)):
    return jax.device_get(tree)
  return jax.device_get(jax.jit(lambda t: t, out_shardings=replicated(mesh))(tree))


def check_process_rows(mesh: Mesh, global_rows: int) -> None:
  """This process's devices must hold rows [p * b, (p + 1) * b) of a batch: the rows its loader makes."""
  local = global_rows // jax.process_count()
  indices = batch_sharding(mesh).addressable_devices_indices_map((global_rows,))
  starts = sorted(index[0].start or 0 for index in indices.values())
  stops = sorted(index[0].stop or global_rows for index in indices.values())
  expected = (jax.process_index() * local, (jax.process_index() + 1) * local)
  if (starts[0], stops[-1]) != expected:
    raise StarbucksError(f"process {jax.process_index()} holds batch rows {starts[0]}..{stops[-1]} on this mesh, "
                         f"not its loader's {expected[0]}..{expected[1]}")


def put_batch(local_batch: dict, mesh: Mesh) -> dict:
  """This process's rows of the global batch -> global arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  out = {}
  for key, value in local_batch.items():
    global_shape = (value.shape[0] * jax.process_count(),) + value.shape[1:]
    out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
  return out
