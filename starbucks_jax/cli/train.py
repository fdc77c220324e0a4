"""Train a 2D Matryoshka (Starbucks) embedding model: SRL fine-tuning or SMAE pre-training.

    python -m starbucks_jax.train --config configs/quickstart.py --workdir runs/quickstart \
        [--config.optimizer.lr=1e-4 ...]
    python -m starbucks_jax.train --config configs/smae_quickstart.py --workdir runs/smae
    python -m starbucks_jax.train --config configs/quickstart.py --workdir runs/smae_srl \
        --config.init_from=runs/smae

The config's `task` ("srl" or "smae") picks the loss and the kind of data (`training/tasks/`); the loop
(`training/loop.py`) is the same for both.

The same command runs on one CPU, on many devices and on many hosts: started by a launcher
(`launch/`), each process joins the others (`runtime/distributed.py`), loads only its rows of every batch
and puts them on a mesh of `mesh.data` x `mesh.fsdp` devices (`runtime/sharding.py`). Process 0 alone logs,
evaluates and exports.

Re-running the command with the same --workdir resumes from the newest readable checkpoint: batches
depend only on (seed, step) and the RNG is in the checkpoint, so the resumed run computes exactly what
an uninterrupted one would. On SIGTERM (preemption) the run saves a checkpoint at the step it is on and
exits with status 0. At the end the model is exported to `workdir/export` as a Hugging Face /
sentence-transformers folder.

    python -m starbucks_jax.train --config configs/srl_allnli_bert_base.py --dry_run [--cpu_devices 8 \
        --config.mesh.fsdp=8]

compiles the step for the configured mesh without running it and prints the memory each device needs.

Everything a user can get wrong (the config, the pairs, the data files) is checked before anything
compiles, and checkpoints already in the workdir are never overwritten by a different run's.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

from starbucks_jax.errors import StarbucksError, run_cli


@dataclasses.dataclass(frozen=True)
class RunOptions:
  """The command line beside the config."""
  dry_run: bool = False          # compile the step for the mesh and report memory; train nothing
  cpu_devices: int | None = None  # simulate this many CPU devices (must be set before JAX starts)


def parse_flags(argv) -> tuple:
  """(config, workdir, RunOptions) from `--config FILE[:ARG] --workdir DIR [--config.key=value ...]
  [--dry_run] [--cpu_devices N]`."""
  from absl import flags
  from ml_collections import config_flags
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "an ml_collections config file", flag_values=flag_values)
  flags.DEFINE_string("workdir", None, "where checkpoints, metrics and the export go", flag_values=flag_values)
  flags.DEFINE_bool("dry_run", False, "compile the training step for the configured mesh, print parameter "
                    "and activation memory per device, and stop (nothing is written)", flag_values=flag_values)
  flags.DEFINE_integer("cpu_devices", None, "run on this many simulated CPU devices, e.g. to --dry_run a pod's "
                       "mesh on a workstation", flag_values=flag_values)
  argv = list(argv)
  for i, arg in enumerate(argv):  # name a missing config file plainly, before absl's longer report
    if arg == "--config" and i + 1 < len(argv):
      path = argv[i + 1]
    elif arg.startswith("--config="):
      path = arg.split("=", 1)[1]
    else:
      continue
    config_file = Path(path.split(":")[0])  # FILE[:ARG]
    if not config_file.is_file():
      raise StarbucksError(f"config file {config_file} does not exist")
  try:
    flag_values(["starbucks_jax.train"] + argv)
    config = flag_values.config
    if config is not None:
      config.to_dict()  # a config file that failed to load raises only when first used
  except (flags.Error, OSError, AttributeError, KeyError, TypeError, ValueError, SyntaxError) as e:
    raise StarbucksError(f"bad command line: {' '.join(str(e).split())}") from None
  if config is None:
    raise StarbucksError("--config is required (for example --config configs/quickstart.py)")
  options = RunOptions(dry_run=flag_values.dry_run, cpu_devices=flag_values.cpu_devices)
  if options.cpu_devices is not None and options.cpu_devices < 1:
    raise StarbucksError(f"--cpu_devices must be at least 1, got {options.cpu_devices}")
  if not flag_values.workdir and not options.dry_run:
    raise StarbucksError("--workdir is required")
  return config, Path(flag_values.workdir) if flag_values.workdir else None, options


def main(argv=None) -> dict:
  config, workdir, options = parse_flags(sys.argv[1:] if argv is None else argv)
  if options.cpu_devices:
    use_cpu_devices(options.cpu_devices)
  if options.dry_run:
    from starbucks_jax.training.dry_run import dry_run
    return dry_run(config)
  from starbucks_jax.training.loop import train
  return train(config, workdir)


def use_cpu_devices(count: int) -> None:
  """Makes JAX see `count` CPU devices; XLA reads the flag when its backends start, so they must not have."""
  if "jax" in sys.modules:
    from jax._src import xla_bridge
    if xla_bridge.backends_are_initialized():
      raise StarbucksError("--cpu_devices cannot take effect: JAX's devices were already set up in this process")
  os.environ["JAX_PLATFORMS"] = "cpu"
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
  os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={count}"])


def run() -> None:
  """The `starbucks-train` console script."""
  run_cli(main)
