"""The device mesh and how arrays are laid out on it.

The mesh is declared in the config (`config.mesh.data`, -1 = every device). A global batch is one
array sharded along its first axis over "data", so a loss that scores every query against every
passage of the batch gets the other devices' passages from XLA's collectives, not from hand-written
gathers. Parameters and optimizer state are replicated (data parallelism).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from starbucks_jax.errors import StarbucksError

DATA_AXIS = "data"


def make_mesh(mesh_config, devices=None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  data = mesh_config.get("data", -1)
  if data == -1:
    data = len(devices)
  if data < 1 or data > len(devices) or len(devices) % data:
    raise StarbucksError(f"mesh.data={mesh_config.get('data')} does not divide the {len(devices)} devices")
  return Mesh(np.asarray(devices[:data]), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (example) axis split over the data axis, the rest whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_divisible(global_batch_size: int, mesh: Mesh, grad_accum_steps: int) -> None:
  per_step = mesh.shape[DATA_AXIS] * grad_accum_steps
  if global_batch_size % per_step:
    raise StarbucksError(f"batch_size {global_batch_size} must be divisible by data-parallel devices "
                         f"({mesh.shape[DATA_AXIS]}) x grad_accum_steps ({grad_accum_steps})")


def put_batch(local_batch: dict, mesh: Mesh) -> dict:
  """This process's rows of the global batch -> global arrays sharded over the data axis."""
  sharding = batch_sharding(mesh)
  out = {}
  for key, value in local_batch.items():
    global_shape = (value.shape[0] * jax.process_count(),) + value.shape[1:]
    out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
  return out
