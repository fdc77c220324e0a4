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

import ast
import dataclasses
import os
import re
import sys
import warnings
from pathlib import Path

from starbucks_jax.errors import StarbucksError, run_cli


@dataclasses.dataclass(frozen=True)
class RunOptions:
  """The command line beside the config."""
  dry_run: bool = False          # compile the step for the mesh and report memory; train nothing
  cpu_devices: int | None = None  # simulate this many CPU devices (must be set before JAX starts)


HELP = """usage: python -m starbucks_jax.train --config FILE[:ARG] --workdir DIR [--config.KEY=VALUE ...]
                                   [--dry_run] [--cpu_devices N]

Trains (or resumes) a 2D Matryoshka embedding model; see configs/ for the config files.

  --config FILE[:ARG]     an ml_collections config file (configs/quickstart.py); ARG goes to its get_config
  --workdir DIR           checkpoints, metrics, TensorBoard and the export go here; run again to resume
  --config.KEY=VALUE      override any setting, e.g. --config.optimizer.lr=1e-4 or
                          --config.starbucks.pairs="((2,32),(4,64))"; every setting and its default:
                          starbucks_jax/training/config.py says where each block lives
  --dry_run               compile the training step for the configured mesh, print memory per device, and
                          stop (nothing is written; --workdir is not needed)
  --cpu_devices N         run on N simulated CPU devices, e.g. to --dry_run a pod's mesh on a workstation
  -h, --help              show this message
"""


def _flag_values():
  from absl import flags
  from ml_collections import config_flags
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "an ml_collections config file", flag_values=flag_values)
  flags.DEFINE_string("workdir", None, "where checkpoints, metrics and the export go", flag_values=flag_values)
  flags.DEFINE_bool("dry_run", False, "compile the training step for the configured mesh, print parameter "
                    "and activation memory per device, and stop (nothing is written)", flag_values=flag_values)
  flags.DEFINE_integer("cpu_devices", None, "run on this many simulated CPU devices, e.g. to --dry_run a pod's "
                       "mesh on a workstation", flag_values=flag_values)
  return flag_values


def _config_file(argv: list[str]) -> Path | None:
  """The --config file named on the command line (FILE of FILE[:ARG]), or None."""
  for i, arg in enumerate(argv):
    if arg == "--config" and i + 1 < len(argv):
      return Path(argv[i + 1].split(":")[0])
    if arg.startswith("--config="):
      return Path(arg.split("=", 1)[1].split(":")[0])
  return None


def _problem(e: Exception, argv: list[str]) -> str:
  """One plain line for an error of absl or ml_collections, whose messages can be reprs of reprs."""
  text = str(e.args[0]) if e.args and not isinstance(e, SyntaxError) else str(e)
  for _ in range(3):  # unwrap quoted messages
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      break
    if not isinstance(value, str):
      break
    text = value
  lines = [line.strip() for line in text.splitlines() if line.strip()] or [type(e).__name__]
  key = (re.fullmatch(r"'?([\w.]+)'?", lines[0])
         or re.match(r"Unknown command line flag 'config\.([\w.]+)'", lines[0]))
  if key:  # an override of a key the config does not have: name it as the command line wrote it
    name = key.group(1)
    written = [a[len("--config."):].split("=")[0] for a in argv if a.startswith("--config.")]
    name = next((w for w in written if w == name or w.endswith("." + name) or name in w.split(".")), name)
    hint = " ".join(lines[1:])
    return f"unknown config key {name}" + (f"; {hint[0].lower()}{hint[1:]}" if hint else "")
  flag = re.match(r"Unknown command line flag '([\w.]+)'", lines[0])
  if flag:
    return f"unknown flag --{flag.group(1)} (python -m starbucks_jax.train --help lists them)"
  return "bad command line: " + "; ".join(lines)


def parse_flags(argv, *, workdir_required: bool = True) -> tuple:
  """(config, workdir, RunOptions) from `--config FILE[:ARG] --workdir DIR [--config.key=value ...]
  [--dry_run] [--cpu_devices N]`; `-h` / `--help` prints the usage and exits. The check command needs no
  workdir (`workdir_required=False`)."""
  from absl import flags
  argv = list(argv)
  if "-h" in argv or "--help" in argv:
    print(HELP)
    raise SystemExit(0)
  config_file = _config_file(argv)  # named plainly, before absl's longer report
  if config_file is not None and not config_file.is_file():
    raise StarbucksError(f"config file {config_file} does not exist")
  flag_values = _flag_values()
  saved_argv, sys.argv = sys.argv, ["starbucks_jax.train"] + argv  # ml_collections finds overrides in sys.argv
  try:
    with warnings.catch_warnings():  # ml_collections loads the file with the deprecated load_module()
      warnings.simplefilter("ignore", DeprecationWarning)
      flag_values(sys.argv)
      config = flag_values.config
      if config is not None:
        config.to_dict()  # a config file that failed to load raises only when first used
  except (flags.Error, OSError, AttributeError, KeyError, TypeError, ValueError, SyntaxError) as e:
    raise StarbucksError(_problem(e, argv)) from None
  finally:
    sys.argv = saved_argv
  if config is None and config_file is not None:
    raise StarbucksError(f"config file {config_file}: get_config() returned None; it must return the "
                         "ml_collections ConfigDict of the run")
  if config is None:
    raise StarbucksError("--config is required (for example --config configs/quickstart.py)")
  options = RunOptions(dry_run=flag_values.dry_run, cpu_devices=flag_values.cpu_devices)
  if options.cpu_devices is not None and options.cpu_devices < 1:
    raise StarbucksError(f"--cpu_devices must be at least 1, got {options.cpu_devices}")
  if not flag_values.workdir and not options.dry_run and workdir_required:
    raise StarbucksError("--workdir is required")
  return config, flag_values.workdir or None, options  # a path or a URL (gs://...): `storage.py` reads both


def main(argv=None) -> dict:
  config, workdir, options = parse_flags(sys.argv[1:] if argv is None else argv)
  if options.cpu_devices:
    use_cpu_devices(options.cpu_devices)
  if options.dry_run:
    from starbucks_jax.training.dry_run import dry_run
    return dry_run(config)
  from starbucks_jax.training.loop import train
  summary = train(config, workdir)
  if not summary["preempted"] and summary.get("is_main"):  # what the user got, and what to run next
    from starbucks_jax.training.run_scores import run_summary
    print("\n" + run_summary(summary, workdir, summary["pairs"]), flush=True)
  return summary


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
