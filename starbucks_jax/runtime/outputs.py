"""Files and folders the commands write: checked before the work, written whole or not at all.

`check_file_output` / `check_folder_output` run before anything is loaded or computed: the path must not
be a folder (a file) or a file (a folder), and something must be creatable where it goes (tried for real
in the nearest folder that exists, with a probe that is removed again; nothing else is created), so
`/proc/x` or a read-only folder is refused at once.
`write_file` writes through a temporary file beside the target and renames it into place, so an old
file is replaced only by a complete new one; a full disk or any other failure becomes one plain error.
In a bucket (`gs://...`, `storage.py`) the checks are the store's (credentials, server, bucket, a probe
object written and removed), and a file is one object, which appears whole or not at all.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Callable

from starbucks_jax import storage
from starbucks_jax.errors import StarbucksError


def os_problem(e: OSError) -> str:
  """A plain reason for a failed write: "the disk is full", "permission denied", ..."""
  if e.errno == errno.ENOSPC:
    return "the disk is full"
  return (e.strerror or str(e)).lower()


def _probe(path: Path, what: str, shown: Path) -> None:
  """Creates and removes a probe folder in the nearest existing folder on the way to `path`; messages name
  `shown`, the output as the user wrote it."""
  folder = path.absolute()
  while not folder.exists():
    folder = folder.parent
  if not folder.is_dir():
    raise StarbucksError(f"{what} {shown} cannot be created: {folder} is a file")
  try:
    os.rmdir(tempfile.mkdtemp(dir=folder, prefix=".starbucks_probe_"))
  except OSError as e:
    raise StarbucksError(f"{what} {shown} cannot be written: {os_problem(e)}") from None


def check_file_output(path, what: str = "--output"):
  """Refuses a file output that is a folder or that cannot be created; returns it as a Path (an
  `epath.Path` in a bucket)."""
  if storage.is_remote(path):
    storage.check_store(path, what)
    storage.check_writable(storage.as_path(path).parent, what)
    if storage.as_path(path).is_dir():
      raise StarbucksError(f"{what} {path} is a folder; give a file name")
    return storage.as_path(path)
  path = Path(path)
  if path.is_dir():
    raise StarbucksError(f"{what} {path} is a folder; give a file name")
  if path.exists() and not path.is_file():
    return path  # a device or a pipe: written as is (a full one is reported when written)
  _probe(path.parent, what, path)
  return path


def check_folder_output(path, what: str = "--output"):
  """Refuses a folder output that is a file or that cannot be created; returns it as a Path (an
  `epath.Path` in a bucket)."""
  if storage.is_remote(path):
    storage.check_writable(path, what)
    if storage.as_path(path).is_file():
      raise StarbucksError(f"{what} {path} exists and is a file, not a folder")
    return storage.as_path(path)
  path = Path(path)
  if path.exists() and not path.is_dir():
    raise StarbucksError(f"{what} {path} exists and is a file, not a folder")
  _probe(path, what, path)
  return path


def write_file(path, write: Callable, what: str = "output") -> None:
  """Calls `write(binary file)` on a temporary file beside `path`, then renames it to `path` (in a bucket:
  writes the object, which appears when complete)."""
  if storage.is_remote(path):
    try:
      with storage.as_path(path).open("wb") as f:
        write(f)
    except Exception as e:  # noqa: BLE001 - gcsfs and aiohttp raise many kinds; all mean "not written"
      raise StarbucksError(f"cannot write {what} {path}: {type(e).__name__}: {' '.join(str(e).split())[:300]}") \
          from None
    return
  path = Path(path)
  try:
    if path.exists() and not path.is_file():  # a device or a pipe cannot be renamed onto
      with open(path, "wb") as f:
        write(f)
      return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
      with os.fdopen(handle, "wb") as f:
        write(f)
      os.chmod(staging, 0o666 & ~UMASK)  # mkstemp makes it 0600; a written file is usually 0644
      os.replace(staging, path)
    finally:
      if os.path.exists(staging):
        os.unlink(staging)
  except OSError as e:
    raise StarbucksError(f"cannot write {what} {path}: {os_problem(e)}") from None


def _read_umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


UMASK = _read_umask()  # read once, at import: os.umask cannot be read without setting it
