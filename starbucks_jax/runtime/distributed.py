"""Multi-process start: which process this is, and `jax.distributed.initialize` before any JAX work.

The same train command runs alone or as one of N processes. Where N and the coordinator come from, in
order:

1. Explicit variables (`launch/local_cpu.sh` sets them; any other launcher can):
   STARBUCKS_COORDINATOR=host:port, STARBUCKS_NUM_PROCESSES=N, STARBUCKS_PROCESS_ID=i, and optionally
   STARBUCKS_LOCAL_DEVICE_IDS=0,1 (the accelerators this process uses).
2. SLURM (`launch/slurm_gpu.sbatch`): inside `srun` with more than one task, the process id is
   SLURM_PROCID, N is SLURM_NTASKS and the coordinator is the first node of the step's node list, on
   port STARBUCKS_COORDINATOR_PORT (default 12000 + job id mod 20000, so that jobs sharing a node differ).
   With several tasks on a node each takes the GPU of its SLURM_LOCALID, unless SLURM already narrowed
   CUDA_VISIBLE_DEVICES to one GPU.
3. A Cloud TPU VM (libtpu installed): `jax.distributed.initialize()` with no arguments, which reads the
   pod's topology from the TPU metadata.
4. STARBUCKS_DISTRIBUTED=auto: the same, for JAX's other detected clusters (Open MPI, Kubernetes);
   STARBUCKS_DISTRIBUTED=0 turns all of this off.

Otherwise the run is a single process. CPU processes exchange data through gloo. A process waits
STARBUCKS_INIT_TIMEOUT seconds (default 300) for the others before it gives up with an error.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import re
import socket
import time

from starbucks_jax.errors import StarbucksError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Cluster:
  """What `jax.distributed.initialize` is given; None fields are left to JAX's own detection."""
  source: str                              # "explicit" | "slurm" | "tpu" | "auto"
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: tuple[int, ...] | None = None


def first_host(nodelist: str) -> str:
  """The first node of a SLURM node list: "gpu-[007-009,12],cpu1" -> "gpu-007"."""
  match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
  if not match or not match.group(1):
    raise StarbucksError(f"cannot read the SLURM node list {nodelist!r}")
  prefix, ranges = match.group(1), match.group(2)
  if ranges is None:
    return prefix
  return prefix + ranges.split(",")[0].split("-")[0]  # zero padding is kept: "007"


def _int(env, name: str) -> int:
  try:
    return int(env[name])
  except (KeyError, ValueError):
    raise StarbucksError(f"environment variable {name}={env.get(name)!r} must be an integer") from None


def _tasks_on_this_node(env) -> int:
  per_node = env.get("SLURM_NTASKS_PER_NODE") or env.get("SLURM_STEP_TASKS_PER_NODE") or ""
  match = re.match(r"\d+", per_node)
  if match:
    return int(match.group(0))
  nodes = int(env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES") or 1)
  return max(1, _int(env, "SLURM_NTASKS") // max(nodes, 1))


def cluster_from_env(env=None) -> Cluster | None:
  """The cluster this process belongs to, from its environment; None for a single process."""
  env = os.environ if env is None else env
  switch = env.get("STARBUCKS_DISTRIBUTED", "").lower()
  if switch in ("0", "false", "off", "no"):
    return None
  if "STARBUCKS_COORDINATOR" in env:
    num, pid = _int(env, "STARBUCKS_NUM_PROCESSES"), _int(env, "STARBUCKS_PROCESS_ID")
    if not 0 <= pid < num:
      raise StarbucksError(f"STARBUCKS_PROCESS_ID={pid} is not in 0..{num - 1} (STARBUCKS_NUM_PROCESSES={num})")
    ids = env.get("STARBUCKS_LOCAL_DEVICE_IDS")
    local_ids = tuple(int(i) for i in ids.split(",")) if ids else None
    return Cluster("explicit", env["STARBUCKS_COORDINATOR"], num, pid, local_ids)
  if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS") or 1) > 1 and "SLURM_PROCID" in env:
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
      raise StarbucksError("SLURM_NTASKS > 1 but no SLURM node list is set (SLURM_STEP_NODELIST / SLURM_JOB_NODELIST)")
    port = int(env.get("STARBUCKS_COORDINATOR_PORT") or 12000 + _int(env, "SLURM_JOB_ID") % 20000)
    local_ids = None
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
    if _tasks_on_this_node(env) > 1 and len(visible) != 1:
      local_ids = (_int(env, "SLURM_LOCALID"),)  # one process per GPU
    return Cluster("slurm", f"{first_host(nodelist)}:{port}", _int(env, "SLURM_NTASKS"),
                   _int(env, "SLURM_PROCID"), local_ids)
  if switch == "auto":
    return Cluster("auto")
  if importlib.util.find_spec("libtpu") is not None and env.get("JAX_PLATFORMS", "") in ("", "tpu"):
    return Cluster("tpu")
  return None


def wait_for_coordinator(cluster: Cluster, timeout: float) -> None:
  """Waits until process 0's coordinator accepts connections. JAX aborts the whole process (no Python
  error) when it cannot register, so an unreachable address is reported here, by name, instead."""
  host, _, port = cluster.coordinator_address.rpartition(":")
  deadline = time.monotonic() + timeout
  while True:
    try:
      with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
        return
    except (OSError, ValueError) as e:
      if time.monotonic() > deadline or isinstance(e, ValueError):
        raise StarbucksError(f"the coordinator {cluster.coordinator_address} (from the {cluster.source} environment) "
                             f"did not answer within {timeout:g} s ({e}); is process 0 running there?") from None
      time.sleep(1)


def initialize(env=None) -> Cluster | None:
  """Joins the cluster described by the environment (once per process); returns it, or None."""
  env = os.environ if env is None else env
  cluster = cluster_from_env(env)
  if cluster is None:
    return None
  import jax
  if jax.distributed.is_initialized():
    return cluster
  # CPU processes need a collectives implementation to exchange data; accelerators bring their own.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {k: v for k, v in dict(coordinator_address=cluster.coordinator_address,
                                  num_processes=cluster.num_processes, process_id=cluster.process_id,
                                  local_device_ids=cluster.local_device_ids).items() if v is not None}
  log.info("joining a %s cluster: %s", cluster.source, kwargs or "detected by JAX")
  # How long to wait for the other processes (JAX's default is 300 s).
  timeout = int(env.get("STARBUCKS_INIT_TIMEOUT", 300))
  if cluster.coordinator_address and cluster.process_id:
    wait_for_coordinator(cluster, timeout)
  try:
    jax.distributed.initialize(**kwargs, initialization_timeout=timeout)
  except Exception as e:  # a wrong address or a missing peer: say which settings were used
    raise StarbucksError(f"jax.distributed.initialize({kwargs}) from the {cluster.source} environment failed: "
                         f"{' '.join(str(e).split())[:500]}") from None
  log.info("process %d of %d, %d local and %d global devices", jax.process_index(), jax.process_count(),
           jax.local_device_count(), jax.device_count())
  return cluster
