"""Weights & Biases tracking of a training run (`config.wandb`), beside metrics.jsonl and TensorBoard.

Off while `config.wandb.project` is empty. The run's id is kept in `workdir/wandb_run_id.txt`, so a
resumed run (after a preemption, on another pod) continues the same W&B run. A resumed run computes
exactly what the interrupted one did, so the steps it logs again carry the same values; W&B keeps the
first of each step. `mode="offline"` writes the run to disk for `wandb sync` later (clusters without
network); W&B writes its files into `wandb/` in the workdir when that is local, else beside the cache of
`storage.py` (`~/.cache/starbucks_jax/wandb`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import urllib.parse
import uuid

from starbucks_jax import storage
from starbucks_jax.errors import StarbucksError

log = logging.getLogger(__name__)

RUN_ID_FILE = "wandb_run_id.txt"
MODES = ("online", "offline", "disabled")


@dataclasses.dataclass(frozen=True)
class WandbConfig:
  """Weights & Biases logging (`config.wandb`).

  Attributes:
    project: the W&B project; empty: no W&B logging.
    entity: the team or user (empty: W&B's default for the logged-in user).
    name: the run's display name (empty: W&B picks one).
    tags: the run's tags.
    mode: "online", "offline" (written to disk, `wandb sync` later) or "disabled".
  """
  project: str = ""
  entity: str = ""
  name: str = ""
  tags: tuple[str, ...] = ()
  mode: str = "online"

  def __post_init__(self):
    if self.mode not in MODES:
      raise StarbucksError(f"wandb.mode must be one of {', '.join(MODES)}, got {self.mode!r}")

  @property
  def enabled(self) -> bool:
    return bool(self.project)

  def check(self) -> None:
    """Refuses a W&B run that cannot start, before anything compiles."""
    if not self.enabled:
      return
    try:
      import wandb  # noqa: F401 pylint: disable=unused-import,import-outside-toplevel
    except ImportError:
      raise StarbucksError("config.wandb.project is set, and wandb is not installed (pip install wandb, or "
                           "pip install 'starbucks_jax[wandb]')") from None
    if self.mode == "online" and not _has_api_key():
      raise StarbucksError("config.wandb.mode is online and no W&B API key is set (run `wandb login` or set "
                           "WANDB_API_KEY; or log to disk with --config.wandb.mode=offline and `wandb sync` later)")


def _has_api_key() -> bool:
  """Whether W&B will find a key: WANDB_API_KEY, or the ~/.netrc entry `wandb login` writes for its host."""
  import netrc
  if os.environ.get("WANDB_API_KEY"):
    return True
  host = urllib.parse.urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
  try:
    return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
  except (OSError, netrc.NetrcParseError):
    return False


def start(config: WandbConfig, workdir, run_config: dict):
  """The W&B run of this workdir (the same one again on a resume), or None when W&B is off."""
  if not config.enabled:
    return None
  import wandb  # pylint: disable=import-outside-toplevel
  id_file = storage.as_path(workdir) / RUN_ID_FILE
  if id_file.is_file():
    run_id = id_file.read_text().strip()
  else:
    run_id = uuid.uuid4().hex[:12]  # W&B's own ids are short lowercase letters and digits too
    id_file.write_text(run_id + "\n")
  directory = storage.cache_root().parent if storage.is_remote(workdir) else storage.as_path(workdir)
  try:
    run = wandb.init(project=config.project, entity=config.entity or None, name=config.name or None,
                     tags=list(config.tags) or None, id=run_id, resume="allow", dir=str(directory),
                     mode=config.mode, config=run_config)
  except Exception as e:  # noqa: BLE001 - W&B raises its own kinds (usage, communication, auth)
    raise StarbucksError(f"the W&B run could not start: {type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0]}") from None
  log.info("W&B run %s (%s mode) in project %s", run_id, config.mode, config.project)
  return run
