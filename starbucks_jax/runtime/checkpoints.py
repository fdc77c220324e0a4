"""Orbax checkpoints of a training run: `workdir/checkpoints/<step>/{params,opt_state,train_meta}`,
written asynchronously, the newest K kept. (The rest of a workdir: `workdir.py`.)

Each checkpoint is committed atomically by Orbax (written under a temporary name, renamed when
complete; in a bucket, marked finished by a commit file), so a half-written step is never listed. Once a
save has finished, process 0 records the size and the CRC-32 of every file of it (in a bucket: the
CRC32C the store computed itself, so nothing is read back) in `<step>/starbucks_files.json`, on a
background thread (the training goes on meanwhile; `wait()` finishes the records). A restore first checks those files, so a
truncated, deleted or overwritten file (even one whose size did not change) is reported by name. A
damaged newest checkpoint is moved to `workdir/damaged_checkpoints/` (kept, not deleted) and the run
resumes from the one before it.

Readers of a workdir that is being trained (`restore_params`: export, evaluate, encode, init_from) see only
finished steps, and when the step they picked is removed under them (the run keeps the newest K), they
read the newest again. Only the run holding the workdir's lease (`lease.py`) saves.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import zlib

import jax
import numpy as np
import orbax.checkpoint as ocp

from starbucks_jax import storage
from starbucks_jax.errors import StarbucksError
from starbucks_jax.runtime import lease

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "damaged_checkpoints"
FILES_MANIFEST = "starbucks_files.json"
COMMIT_FILE = "commit_success.txt"  # Orbax's mark of a finished step in a bucket
CRC_CHUNK = 8 << 20  # bytes read at a time while checksumming


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """When a run saves (`config.checkpoint`): every `every_steps` steps and at the end, the newest `keep`
  kept; `async_save` writes in the background while training goes on. `lease_timeout_s`: a workdir's lease
  (`lease.py`) not renewed for this long is a crashed run's, and the next run takes it over; long enough
  to ride out a stalled store, short enough that a restart after a lost host does not wait long."""
  every_steps: int = 1000
  keep: int = 3
  async_save: bool = True
  lease_timeout_s: float = 300.0

  def __post_init__(self):
    if self.every_steps < 1 or self.keep < 1:
      raise StarbucksError("checkpoint.every_steps and checkpoint.keep must be at least 1")
    if not 0 < self.lease_timeout_s < float("inf"):
      raise StarbucksError(f"checkpoint.lease_timeout_s must be a positive number of seconds, got "
                           f"{self.lease_timeout_s}")


class RunCheckpoints:
  """The checkpoints of one run: save every `every_steps` steps (and when forced), keep the newest
  `keep`, restore any of them. Saves run in the background; `wait()` blocks until they are on disk."""

  def __init__(self, workdir, *, every_steps: int, keep: int, async_save: bool = True):
    self.every_steps = max(every_steps, 1)
    self.workdir = storage.absolute(workdir)
    self._unrecorded: list[int] = []  # saved steps whose file manifest is not written yet
    self._recorder = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint_crc")
    self._recording: list[concurrent.futures.Future] = []
    # Orbax may save at every step; `save` decides (Orbax alone would also save the very first step).
    options = ocp.CheckpointManagerOptions(save_interval_steps=1, max_to_keep=keep,
                                           enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(self.workdir / CHECKPOINT_DIR, options=options,
                                         item_names=("params", "opt_state", "train_meta"))

  def restore_newest(self, template) -> tuple[object, int]:
    """(state, step) from the newest readable checkpoint, or (template, 0) when there is none.

    A damaged checkpoint is moved aside with a warning and the next older one is tried; when none is
    left, a StarbucksError names the damaged file.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    for i, step in enumerate(steps):
      try:
        check_files(self.workdir, step)
        return self.restore(step, template), step
      except Exception as e:  # noqa: BLE001 - Orbax and TensorStore raise many kinds; all mean "unreadable"
        problem = str(e) if isinstance(e, StarbucksError) else \
            f"checkpoint {self.workdir / CHECKPOINT_DIR / str(step)} cannot be read: {' '.join(str(e).split())[:400]}"
        if i + 1 == len(steps):
          raise StarbucksError(f"{problem}; there is no older checkpoint to resume from (move "
                               f"{self.workdir / CHECKPOINT_DIR / str(step)} away to start from scratch)") from None
        moved = self._set_aside(step)
        log.warning("%s; resuming from the checkpoint at step %d instead (the damaged one is kept in %s)",
                    problem, steps[i + 1], moved)
    return template, 0

  def _set_aside(self, step: int):
    """Moves a damaged step out of Orbax's sight, so that it is neither resumed nor counted as saved."""
    target = self.workdir / DAMAGED_DIR / str(step)
    _sync(f"starbucks_damaged_{step}_read")
    if jax.process_index() == 0:
      suffix = 0
      while target.exists():
        suffix += 1
        target = self.workdir / DAMAGED_DIR / f"{step}.{suffix}"
      target.parent.mkdir(parents=True, exist_ok=True)
      storage.move_tree(self.workdir / CHECKPOINT_DIR / str(step), target)
    _sync(f"starbucks_damaged_{step}_moved")
    storage.refresh(self.workdir)
    self.manager.reload()
    return target

  def save(self, state, step: int, *, force: bool = False) -> bool:
    """Starts saving `state` (a TrainState at `step`) if that step is due; returns whether it did.

    The caller passes the step it counts on the host, so a step that saves nothing neither waits for
    the device (reading `state.step` would) nor lists the checkpoint folder.
    """
    if not (force or step % self.every_steps == 0) or step in self.manager.all_steps():
      return False
    lease.check_writer(self.workdir)  # a run whose lease was taken over writes nothing more
    self._record_finished()
    meta = {"step": step, "skipped_steps": int(state.skipped_steps),
            "rng": np.asarray(jax.random.key_data(state.rng)).tolist()}
    started = self.manager.save(step, force=True, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state.params), opt_state=ocp.args.StandardSave(state.opt_state),
        train_meta=ocp.args.JsonSave(meta)))
    self._unrecorded.append(step)
    return started

  def _record_finished(self) -> None:
    """Starts writing the file manifest of every save that has finished (waiting for the one in flight);
    the files are read and checksummed on a background thread."""
    if not self._unrecorded:
      return
    self.manager.wait_until_finished()
    if jax.process_index() == 0:
      self._recording += [self._recorder.submit(record_files, self.workdir, step) for step in self._unrecorded]
    self._unrecorded = []

  def restore(self, step: int, template):
    """The TrainState saved at `step`, laid out like `template` (shapes, dtypes and shardings)."""
    abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract(template.params)),
        opt_state=ocp.args.StandardRestore(abstract(template.opt_state)),
        train_meta=ocp.args.JsonRestore()))
    meta = restored["train_meta"]
    if meta["step"] != step:
      raise StarbucksError(f"checkpoint {step} says it is step {meta['step']}; the workdir is damaged")
    rng = jax.random.wrap_key_data(np.asarray(meta["rng"], np.uint32))
    return template.replace(step=np.int32(step), params=restored["params"], opt_state=restored["opt_state"],
                            rng=rng, skipped_steps=np.int32(meta["skipped_steps"]))

  def wait(self) -> None:
    """Blocks until every save is on disk and its file manifest written."""
    self.manager.wait_until_finished()
    self._record_finished()
    for future in self._recording:
      future.result()
    self._recording = []


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def step_dir(workdir, step: int):
  return storage.absolute(workdir) / CHECKPOINT_DIR / str(step)


def file_crc32(path) -> int:
  crc = 0
  with storage.as_path(path).open("rb") as f:
    while chunk := f.read(CRC_CHUNK):
      crc = zlib.crc32(chunk, crc)
  return crc


def _checksum(path) -> dict:
  """{"crc32c": the store's own} for an object in a bucket (nothing is read back), else {"crc32": ours}."""
  stored = storage.stored_checksum(path)
  return {"crc32c": stored} if stored else {"crc32": file_crc32(path)}


def record_files(workdir, step: int) -> None:
  """Writes `<step>/starbucks_files.json`: the size and checksum of every file of a finished checkpoint."""
  directory = step_dir(workdir, step)
  try:
    files = {name: {"size": storage.size_of(directory / name), **_checksum(directory / name)}
             for name in storage.files_under(directory) if name != FILES_MANIFEST}
    text = json.dumps({"step": step, "files": files}, indent=1) + "\n"
    if storage.is_remote(directory):  # an object appears whole or not at all
      (directory / FILES_MANIFEST).write_text(text)
      return
    staging = directory / (FILES_MANIFEST + ".tmp")
    staging.write_text(text)
    staging.rename(directory / FILES_MANIFEST)
  except FileNotFoundError:  # removed meanwhile by Orbax's keep-the-newest-K
    return


def check_files(workdir, step: int, items: tuple[str, ...] | None = None) -> None:
  """Raises a StarbucksError naming the first file of checkpoint `step` that is missing, has the wrong size
  or no longer has the checksum recorded when it was saved. `items` ("params", ...) limits the check to
  those parts. A checkpoint without a manifest (killed before it was written) is left to Orbax to check."""
  directory = step_dir(workdir, step)
  manifest = directory / FILES_MANIFEST
  if not manifest.is_file():
    return
  try:
    files = json.loads(manifest.read_text())["files"]
  except (ValueError, KeyError) as e:
    raise StarbucksError(f"checkpoint file list {manifest} is damaged ({e})") from None
  for name, entry in files.items():
    if items is not None and name.split("/")[0] not in items:
      continue
    size, recorded = (entry, {}) if isinstance(entry, int) else (entry["size"], entry)  # older lists: sizes
    path = directory / name
    if not path.is_file():
      raise StarbucksError(f"checkpoint file {path} is missing")
    found = storage.size_of(path)
    if found != size:
      raise StarbucksError(f"checkpoint file {path} has {found} bytes; {size} were written "
                           "(truncated or overwritten)")
    # Checked the way it was recorded: our CRC-32 (the file is read) or the store's CRC32C (metadata only).
    if ("crc32" in recorded and file_crc32(path) != recorded["crc32"]) or \
        ("crc32c" in recorded and storage.stored_checksum(path) != recorded["crc32c"]):
      raise StarbucksError(f"checkpoint file {path} does not match the checksum recorded when it was saved "
                           "(its bytes changed since)")


def saved_steps(workdir) -> list[int]:
  """The steps of the finished checkpoints. In a bucket, Orbax writes a step in place and marks it
  finished with a commit file last (objects cannot be renamed); locally it renames a finished step into place."""
  directory = storage.as_path(workdir) / CHECKPOINT_DIR
  storage.refresh(directory)
  if not directory.is_dir():
    return []
  steps = [p for p in directory.iterdir() if p.name.isdigit() and p.is_dir()]
  if storage.is_remote(directory):
    steps = [p for p in steps if (p / COMMIT_FILE).is_file()]
  return sorted(int(p.name) for p in steps)


def restore_params(workdir, step: int | None = None):
  """The parameters saved at `step` (default: the newest finished checkpoint), as numpy arrays on the host.

  A workdir may be in training meanwhile: a newest step removed while it is read (the run keeps only the
  newest K) is not an error; the then newest is read instead."""
  newest = step is None
  for _ in range(5):
    steps = saved_steps(workdir)
    if not steps:
      raise StarbucksError(f"{workdir} has no checkpoints under {storage.as_path(workdir) / CHECKPOINT_DIR}")
    if not newest and step not in steps:
      raise StarbucksError(f"{workdir} has no checkpoint at step {step}; saved steps: "
                           f"{', '.join(map(str, steps))}")
    try:
      return _read_params(workdir, steps[-1] if newest else step)
    except StarbucksError:
      if not newest or steps[-1] in saved_steps(workdir):
        raise
      log.info("checkpoint %d of %s was removed while being read; reading the newest again", steps[-1], workdir)
  raise StarbucksError(f"{workdir}: its newest checkpoint kept being removed while it was read")


def _read_params(workdir, step: int):
  check_files(workdir, step, items=("params",))
  path = step_dir(workdir, step) / "params"
  try:
    tree = ocp.StandardCheckpointHandler().metadata(path)  # shapes and dtypes of the saved tree
    # Restore onto the host CPU, whatever mesh the run used.
    cpu = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu), tree)
    params = ocp.StandardCheckpointer().restore(path, target)
  except Exception as e:  # noqa: BLE001 - Orbax and TensorStore raise many kinds; all mean "unreadable"
    raise StarbucksError(f"checkpoint {path} cannot be read: {' '.join(str(e).split())[:400]}") from None
  return jax.tree.map(np.asarray, params), step
