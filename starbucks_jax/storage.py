"""Paths on a local disk or in a bucket: one layer for every file a run reads or writes.

    path = storage.as_path("gs://bucket/runs/quickstart")   # an etils.epath.Path; local paths too
    storage.check_store(path, "--workdir")                   # credentials, server, bucket: one clear error
    local = storage.local_copy("gs://bucket/models/minilm")  # for libraries that read local files only

A path with a scheme (`gs://`, or any other URL `etils.epath` / fsspec understands) is remote; anything
else is local. Remote paths go through `etils.epath` (fsspec and gcsfs underneath, as in Orbax), and
checkpoint arrays through Orbax's own TensorStore. Objects in a bucket are written whole or not at all,
so remote files need no temporary-name dance; a local file is still written through one.

What only reads local files (tokenizers, `datasets`, safetensors) is given a copy, downloaded once into
`$STARBUCKS_CACHE` (default `~/.cache/starbucks_jax/remote`) and fetched again when the object changes.

A GCS emulator is used when `STORAGE_EMULATOR_HOST` is set (gcsfs and google-cloud-storage read it);
TensorStore reads `TENSORSTORE_GCS_HTTP_URL` and array_record's GCS client `CLOUD_STORAGE_EMULATOR_ENDPOINT`
instead, which are set from it when not set already.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import socket
import tempfile
import urllib.parse

from etils import epath

from starbucks_jax.errors import StarbucksError

log = logging.getLogger(__name__)

GCS_HOST = "https://storage.googleapis.com"
CONNECT_TIMEOUT_S = 10.0
_checked: set[tuple] = set()  # (server, bucket) pairs already found usable in this process


def is_remote(path) -> bool:
  return "://" in os.fspath(path)


def as_path(path) -> epath.Path:
  """An `epath.Path` for a local path (with `~` expanded) or a URL."""
  text = os.fspath(path)
  return epath.Path(text if is_remote(text) else os.path.expanduser(text))


def absolute(path) -> epath.Path:
  """`as_path(path)`, made absolute when local (URLs are)."""
  path = as_path(path)
  return path if is_remote(path) else path.absolute()


def _filesystem(path):
  """The fsspec filesystem behind a remote path (the same instance Orbax's epath uses)."""
  import fsspec
  use_emulator_settings()
  protocol = urllib.parse.urlsplit(os.fspath(path)).scheme
  if protocol in ("gs", "gcs"):
    return fsspec.filesystem("gcs", finalize_on_close=True)  # epath's own arguments: one cached instance
  return fsspec.filesystem(protocol)


def use_emulator_settings() -> None:
  """Passes STORAGE_EMULATOR_HOST on to the clients that read their own variable: TensorStore (Orbax) and the
  C++ GCS client inside array_record, so that every reader of a run talks to the same server."""
  emulator = os.environ.get("STORAGE_EMULATOR_HOST")
  if emulator:
    url = emulator if "://" in emulator else f"http://{emulator}"
    os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", url)
    os.environ.setdefault("CLOUD_STORAGE_EMULATOR_ENDPOINT", url)
  # gcsfs asks the control API whether a bucket is hierarchical and warns when it cannot (an emulator,
  # or credentials without that permission); it then works as with any bucket.
  logging.getLogger("gcsfs").setLevel(logging.ERROR)


def check_store(path, what: str) -> None:
  """For a remote path: refuses, with one plain error, missing credentials, a storage server that cannot be
  reached, or a bucket that does not exist. Local paths pass (their own checks are in `runtime/outputs.py`)."""
  if not is_remote(path):
    return
  url = urllib.parse.urlsplit(os.fspath(path))
  if url.scheme not in ("gs", "gcs"):
    _filesystem(path)  # fsspec names a missing backend itself
    return
  use_emulator_settings()
  emulator = os.environ.get("STORAGE_EMULATOR_HOST")
  if (emulator, url.netloc) in _checked:
    return
  if not emulator:
    _check_credentials(path, what)
  endpoint = urllib.parse.urlsplit(emulator if emulator and "://" in emulator else f"http://{emulator}"
                                   if emulator else GCS_HOST)
  port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
  try:
    socket.create_connection((endpoint.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
  except OSError as e:
    raise StarbucksError(f"{what} {os.fspath(path)}: cannot reach the storage server {endpoint.hostname}:{port} "
                         f"({(e.strerror or str(e)).lower()})") from None
  try:
    _filesystem(path).info(url.netloc)
  except FileNotFoundError:
    raise StarbucksError(f"{what} {os.fspath(path)}: bucket {url.netloc} does not exist") from None
  except Exception as e:  # noqa: BLE001 - gcsfs raises HttpError, OSError, aiohttp errors: all mean "unusable"
    raise StarbucksError(f"{what} {os.fspath(path)}: bucket {url.netloc} cannot be used "
                         f"({type(e).__name__}: {' '.join(str(e).split())[:300]})") from None
  _checked.add((emulator, url.netloc))


def _check_credentials(path, what: str) -> None:
  import google.auth
  import google.auth.exceptions
  try:
    google.auth.default()
  except google.auth.exceptions.DefaultCredentialsError as e:
    raise StarbucksError(f"{what} {os.fspath(path)}: no Google Cloud credentials ({str(e).splitlines()[0]}); "
                         "run `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS "
                         "(on a TPU VM, the VM's service account is used)") from None


def check_writable(path, what: str) -> None:
  """For a remote folder: writes and removes a probe object in it (permission problems show here)."""
  check_store(path, what)
  probe = as_path(path) / f".starbucks_probe_{os.getpid()}_{os.urandom(4).hex()}"
  try:
    probe.write_bytes(b"")
    probe.unlink()
  except Exception as e:  # noqa: BLE001 - see check_store
    raise StarbucksError(f"{what} {os.fspath(path)} cannot be written: {type(e).__name__}: "
                         f"{' '.join(str(e).split())[:300]}") from None


def files_under(folder) -> list[str]:
  """Every file under `folder`, as sorted paths relative to it ("params/d/abc")."""
  folder = as_path(folder)
  if not is_remote(folder):
    return sorted(str(p.relative_to(folder)) for p in pathlib.Path(folder).rglob("*") if p.is_file())
  fs = _filesystem(folder)
  fs.invalidate_cache()  # other processes (and TensorStore) write without telling this listing cache
  root = fs._strip_protocol(os.fspath(folder)).rstrip("/")
  return sorted(name[len(root) + 1:] for name in fs.find(root))


def size_of(path) -> int:
  return int(as_path(path).stat().length)


def stored_checksum(path) -> str | None:
  """The checksum a store keeps of an object itself (GCS: its CRC32C, computed by the server on upload), so
  that a file need not be read back to be checked; None for a local file or a store without one."""
  if not is_remote(path):
    return None
  return _filesystem(path).info(os.fspath(path)).get("crc32c")


def refresh(path) -> None:
  """Forgets cached listings of a remote folder, so that what another process wrote is seen."""
  if is_remote(path):
    _filesystem(path).invalidate_cache()


def move_tree(source, target) -> None:
  """Moves a folder; in a bucket, a server-side copy then a delete (objects cannot be renamed)."""
  if not is_remote(source):
    shutil.move(os.fspath(source), os.fspath(target))
    return
  fs = _filesystem(source)
  fs.copy(os.fspath(source).rstrip("/") + "/", os.fspath(target), recursive=True)
  fs.rm(os.fspath(source), recursive=True)
  fs.invalidate_cache()


def upload_tree(local_folder, target, *, last: tuple[str, ...] = ()) -> None:
  """Copies a local folder's files to `target` (remote), the names in `last` after all others (so that a
  folder whose upload was cut short lacks them, and is not taken for a complete one)."""
  local_folder = pathlib.Path(local_folder)
  names = sorted(str(p.relative_to(local_folder)) for p in local_folder.rglob("*") if p.is_file())
  fs = _filesystem(target)
  for name in sorted(names, key=lambda n: n in last):
    fs.put_file(str(local_folder / name), f"{os.fspath(target).rstrip('/')}/{name}")
  fs.invalidate_cache()


def cache_root() -> pathlib.Path:
  return pathlib.Path(os.environ.get("STARBUCKS_CACHE", "~/.cache/starbucks_jax/remote")).expanduser()


def local_copy(path, what: str = "input") -> pathlib.Path:
  """A local path for `path`: itself when local; for a remote file or folder, a copy in the cache,
  downloaded again only for objects that changed (their size, checksum or generation)."""
  if not is_remote(path):
    return pathlib.Path(os.path.expanduser(os.fspath(path)))
  check_store(path, what)
  fs = _filesystem(path)
  fs.invalidate_cache()
  url = urllib.parse.urlsplit(os.fspath(path))
  local = cache_root() / url.scheme / url.netloc / url.path.strip("/")
  try:
    if not fs.isdir(os.fspath(path)):
      if not fs.exists(os.fspath(path)):
        raise StarbucksError(f"{what} {os.fspath(path)} does not exist")
      _fetch(fs, os.fspath(path), local)
      return local
    for name in files_under(path):
      _fetch(fs, f"{os.fspath(path).rstrip('/')}/{name}", local / name)
  except StarbucksError:
    raise
  except Exception as e:  # noqa: BLE001 - see check_store
    raise StarbucksError(f"cannot read {what} {os.fspath(path)}: {type(e).__name__}: "
                         f"{' '.join(str(e).split())[:300]}") from None
  return local


def _fetch(fs, url: str, local: pathlib.Path) -> None:
  """Downloads one object unless the cached copy is of the same version."""
  info = fs.info(url)
  version = {k: info.get(k) for k in ("size", "crc32c", "md5Hash", "generation", "etag", "mtime")
             if info.get(k) is not None}
  version = json.loads(json.dumps(version, default=str))
  stamp = local.parent / f".{local.name}.version.json"
  if local.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == version:
    return
  local.parent.mkdir(parents=True, exist_ok=True)
  handle, staging = tempfile.mkstemp(dir=local.parent, prefix=f".{local.name}.")
  os.close(handle)
  try:
    fs.get_file(url, staging)
    os.replace(staging, local)  # other processes on this host may fetch the same file: each rename is whole
  finally:
    if os.path.exists(staging):
      os.unlink(staging)
  stamp.write_text(json.dumps(version))


GLOB_CHARACTERS = "*?["


def matching_files(pattern: str, what: str) -> list[tuple[str, int]]:
  """(path, size in bytes) of each file a glob (`gs://b/data/*.parquet`, `shards/part-*.parquet`) or a folder
  ending in "/" names, sorted by path; one listing request for a bucket, no object is read.

  Raises:
    StarbucksError: the bucket cannot be used, or nothing matches.
  """
  folder = pattern.endswith("/")
  if is_remote(pattern):
    check_store(pattern, what)
    fs = _filesystem(pattern)
    fs.invalidate_cache()
    scheme = urllib.parse.urlsplit(pattern).scheme
    try:
      found = fs.find(pattern, detail=True) if folder else fs.glob(pattern, detail=True)
    except Exception as e:  # noqa: BLE001 - see check_store
      raise StarbucksError(f"cannot list {what} {pattern}: {type(e).__name__}: {' '.join(str(e).split())[:300]}") \
          from None
    files = [(f"{scheme}://{name}", int(info["size"])) for name, info in found.items()
             if info.get("type") != "directory"]
  else:
    import glob as glob_lib
    names = ([str(p) for p in pathlib.Path(os.path.expanduser(pattern)).rglob("*")] if folder
             else glob_lib.glob(os.path.expanduser(pattern)))
    files = [(name, os.path.getsize(name)) for name in names if os.path.isfile(name)]
  if not files:
    raise StarbucksError(f"{what} {pattern} matches no file")
  return sorted(files)


def read_range(path: str, start: int, end: int) -> bytes:
  """Bytes [start, end) of a file, local or remote: one ranged request for an object in a bucket."""
  if not is_remote(path):
    with open(os.path.expanduser(path), "rb") as f:
      return os.pread(f.fileno(), end - start, start)
  return _filesystem(path).cat_file(path, start=start, end=end)


def remote_size(path: str, what: str) -> int:
  """The size of an object in a bucket (one metadata request); StarbucksError when it does not exist."""
  check_store(path, what)
  try:
    return int(_filesystem(path).info(path)["size"])
  except FileNotFoundError:
    raise StarbucksError(f"{what} {path} does not exist") from None
