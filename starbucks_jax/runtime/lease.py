"""One writer per workdir: a training run holds a lease on its workdir (`hold`) while it runs.

Two runs writing one workdir would interleave checkpoints and resume each other's steps, so `train` takes
the lease before it loads weights or compiles; a second run gets one error naming the holder. A daemon
thread renews it every `timeout_s / 5` s; it is dropped when the run ends, fails or gets SIGTERM
(`preemption.py`). A lease not renewed for `checkpoint.lease_timeout_s` (the holder's or the newcomer's,
the longer; wall-clock heartbeats, so hosts must agree on the time) is a crashed host's and is taken over
with a warning; a holder on this same host whose process has ended is known dead at once.

`<workdir>/lease.json` holds the record. In a bucket the object's generation is the lock: created only if
absent (ifGenerationMatch=0), renewed and deleted only at the holder's generation, taken over only at the
stale one the newcomer read. Locally and on NFS: created with O_CREAT|O_EXCL (exclusive on the server from
NFSv3 on), renewed through the holder's open file, taken over (`_LocalStore`) by a rename that only one
newcomer can make. A holder whose lease was taken over (it stalled) writes no further checkpoint
(`check_writer`). Process 0 of a multi-process run holds the lease and tells the others (JAX's coordination
service) whether it got it, so every process of a second job stops before anything compiles. Readers
(`evaluate`, `export`, `encode`, `init_from`) never take it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import socket
import threading
import time
import urllib.parse
import uuid

import jax

from starbucks_jax import storage
from starbucks_jax.errors import StarbucksError
from starbucks_jax.runtime import preemption

log = logging.getLogger(__name__)

LEASE_FILE = "lease.json"
WORD_TIMEOUT_S = 300  # how long processes 1.. wait for process 0 to say whether it holds the lease
_HELD: dict[str, "Lease"] = {}  # this process's leases, by workdir
_calls = [0]  # hold() calls in this process (every process of a run makes the same ones): the word's key


def _proc_start(pid: int) -> str | None:
  """A process's start time (Linux, ticks since boot), so that a reused pid is not taken for the holder."""
  with contextlib.suppress(OSError, IndexError):
    return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
  return None


def _machine() -> str | None:
  """This kernel and pid namespace (Linux): process ids compare only within one."""
  with contextlib.suppress(OSError):
    return f"{pathlib.Path('/proc/sys/kernel/random/boot_id').read_text().strip()}/{os.readlink('/proc/self/ns/pid')}"
  return None


def _new_record(timeout_s: float) -> dict:
  now = time.time()
  return {"run_id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
          "process_start": _proc_start(os.getpid()), "machine": _machine(), "processes": jax.process_count(),
          "started": now, "renewed": now, "timeout_s": timeout_s, "write": 0}


def _parse(raw: bytes) -> dict | None:
  with contextlib.suppress(ValueError):
    record = json.loads(raw)
    return record if isinstance(record, dict) and isinstance(record.get("renewed"), (int, float)) else None
  return None


def describe(holder: dict) -> str:
  """Who holds a lease, for messages: host, process id, start and last renewal."""
  age, when = time.time() - holder["renewed"], lambda t: time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))
  if holder.get("unreadable"):
    return f"a lease file that cannot be read (last written {when(holder['renewed'])}, {age:.0f} s ago)"
  of = f" (process 0 of {holder['processes']})" if holder.get("processes", 1) > 1 else ""
  return (f"process {holder.get('pid')}{of} on host {holder.get('host')}, started {when(holder['started'])}, "
          f"last renewed {when(holder['renewed'])} ({age:.0f} s ago)")


def stale_reason(holder: dict, timeout_s: float) -> str | None:
  """Why a lease may be taken over (its holder is gone, or it was not renewed in time); None while held."""
  here = holder.get("host") == socket.gethostname() and holder.get("machine") and holder["machine"] == _machine()
  if here and holder.get("process_start") and _proc_start(holder["pid"]) != holder["process_start"]:
    return f"its process {holder['pid']} on this host has ended"
  limit, age = max(timeout_s, holder.get("timeout_s") or 0), time.time() - holder["renewed"]
  return f"it was not renewed for {age:.0f} s (the timeout is {limit:g} s)" if age > limit else None


class _LocalStore:
  """The lease as a file. Tokens: `_peek()` of a file read; the holder's own is (device, inode).
  Takeovers and releases hold `lease.json.next` (one at a time, O_EXCL); a takeover checks the lease is still
  the file judged stale (same inode and bytes) and renames its record over it, so the lease is never absent
  meanwhile (an absent lease would let a third run create one)."""

  def __init__(self, folder, timeout_s: float):
    self.path = pathlib.Path(os.fspath(folder)) / LEASE_FILE
    self.next, self._timeout_s, self._fd, self._inode = self.path.with_name(LEASE_FILE + ".next"), timeout_s, None, None

  def read(self):
    for _ in range(10):  # an exclusive create is empty until its record is written: give it a moment
      if (seen := self._peek()) is None:
        return None
      if holder := _parse(seen[2]):
        return holder, seen
      time.sleep(0.1)
    return {"unreadable": True, "renewed": seen[3]}, seen

  def _peek(self):
    """(device, inode, bytes, modification time) of the lease file, or None."""
    with contextlib.suppress(FileNotFoundError), open(self.path, "rb") as f:
      stat = os.fstat(f.fileno())
      return stat.st_dev, stat.st_ino, f.read(), stat.st_mtime
    return None

  def create(self, data: bytes):
    try:
      fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
      return None
    self._fd, self._inode = fd, self._write(fd, data)
    return self._inode

  @staticmethod
  def _write(fd: int, data: bytes) -> tuple:
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))
    os.fsync(fd)
    return os.fstat(fd).st_dev, os.fstat(fd).st_ino

  def replace(self, token, data: bytes):
    """Creates the lease (`token` None), renews our own (None once it is not ours), or takes over the stale
    one `token` names; returns the new token, or None."""
    if token is None:
      return self.create(data)
    if self._fd is not None and tuple(token[:2]) == self._inode:
      self._write(self._fd, data)
      return token if (self._peek() or (None,))[:2] == self._inode else self.close()  # else: the new holder's
    fd = self._lock_next()
    try:
      if fd is None or self._peek() != tuple(token):  # renewed, released or taken meanwhile
        return None
      inode = self._write(fd, data)
      os.rename(self.next, self.path)  # replaces the stale lease in one step
      self._fd, self._inode, fd = fd, inode, None
      return inode
    finally:
      self._unlock_next(fd)

  def delete(self, token) -> None:
    fd = self._lock_next()
    with contextlib.suppress(FileNotFoundError):
      if fd is not None and (self._peek() or (None, None))[:2] == tuple(token[:2]):
        self.path.unlink()
    self._unlock_next(fd)
    self.close()

  def close(self) -> None:
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None

  def _lock_next(self):
    """An exclusive `lease.json.next` (another takeover's is waited out; a crashed one's cleared after the timeout)."""
    for _ in range(40):
      with contextlib.suppress(FileExistsError):
        return os.open(self.next, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
      with contextlib.suppress(FileNotFoundError):
        if time.time() - os.stat(self.next).st_mtime > self._timeout_s:
          self.next.unlink()
          continue
      time.sleep(0.05)
    return None

  def _unlock_next(self, fd) -> None:
    if fd is not None:
      os.close(fd)
      with contextlib.suppress(FileNotFoundError):
        self.next.unlink()


class _BucketStore:
  """The lease as one object in a bucket; tokens are the object's generations (None: absent)."""

  def __init__(self, folder):
    from google.cloud import storage as gcs
    url = urllib.parse.urlsplit(os.fspath(folder))
    self._bucket = gcs.Client(project=None).bucket(url.netloc)
    self._name = f"{url.path.strip('/')}/{LEASE_FILE}".lstrip("/")

  def read(self):
    from google.api_core import exceptions
    for _ in range(5):
      blob = self._bucket.get_blob(self._name)
      if blob is None:
        return None
      with contextlib.suppress(exceptions.NotFound, exceptions.PreconditionFailed):  # replaced while read
        raw = blob.download_as_bytes(if_generation_match=blob.generation)
        return _parse(raw) or {"unreadable": True, "renewed": blob.updated.timestamp()}, blob.generation
    return None

  def replace(self, token, data: bytes):
    from google.api_core import exceptions
    blob = self._bucket.blob(self._name)
    try:
      blob.upload_from_string(data, content_type="application/json", if_generation_match=token or 0)
      return blob.generation
    except exceptions.PreconditionFailed:  # another generation now, or a retried upload of ours that had landed
      current, mine = self.read(), json.loads(data)
      ours = current and (current[0].get("run_id"), current[0].get("write")) == (mine["run_id"], mine["write"])
      return current[1] if ours else None

  def delete(self, token) -> None:
    from google.api_core import exceptions
    with contextlib.suppress(exceptions.NotFound, exceptions.PreconditionFailed):
      self._bucket.blob(self._name).delete(if_generation_match=token)


class Lease:
  """A lease this process holds: renewed on a daemon thread until `release()`."""

  def __init__(self, workdir, store, token, record: dict, created: list):
    self.workdir, self._store, self._token, self.record, self._created = workdir, store, token, record, created
    self._lock, self._stop, self.lost, self._released = threading.RLock(), threading.Event(), threading.Event(), False
    threading.Thread(target=self._renew_loop, name="workdir_lease", daemon=True).start()
    self._restore_sigterm = preemption.drop_on_sigterm(self.release)

  def _renew_loop(self) -> None:
    while not self._stop.wait(self.record["timeout_s"] / 5) and not self.lost.is_set():  # 5 renewals a timeout
      try:
        self.renew()
      except Exception as e:  # noqa: BLE001 - a store's hiccup: the next renewal tries again
        log.warning("could not renew the lease on %s (trying again): %s: %s", self.workdir, type(e).__name__, e)

  def renew(self) -> None:
    with self._lock:
      if self._released or self.lost.is_set():
        return
      record = dict(self.record, renewed=time.time(), write=self.record["write"] + 1)
      token = self._store.replace(self._token, json.dumps(record).encode())
      if token is None:
        self.lost.set()
        return log.error("the lease on %s was taken over by another run: no further checkpoint", self.workdir)
      self._token, self.record = token, record

  def release(self) -> None:
    """Drops the lease (once); folders made to hold it are removed if nothing else went into them."""
    with self._lock:
      if self._released:
        return
      self._released = True
      self._stop.set()
      if not self.lost.is_set():
        self._store.delete(self._token)
      _HELD.pop(_key(self.workdir), None)
      self._restore_sigterm()
      for folder in self._created:
        with contextlib.suppress(OSError):
          folder.rmdir()


def _key(workdir) -> str:
  return os.fspath(storage.absolute(workdir))


def _acquire(workdir, store, record: dict, timeout_s: float):
  """The token of the lease this run now holds; or a StarbucksError naming the run that holds it."""
  data = json.dumps(record).encode()
  for _ in range(10):
    current = store.read()
    if current is None:
      token = store.replace(None, data)
    elif (reason := stale_reason(current[0], timeout_s)) is None:
      limit = max(timeout_s, current[0].get("timeout_s") or 0)
      raise StarbucksError(
          f"--workdir {workdir} is being trained by another run: {describe(current[0])}. A workdir has one "
          f"writer: wait for that run to end or use another --workdir (a lease not renewed for {limit:g} s, "
          "checkpoint.lease_timeout_s, is taken over)")
    elif (token := store.replace(current[1], data)) is not None:
      log.warning("took over the lease on %s from %s: %s", workdir, describe(current[0]), reason)
    if token is not None:
      return token
  raise StarbucksError(f"could not take the lease on --workdir {workdir}: other runs keep taking it")


def _take(workdir, timeout_s: float) -> Lease | None:
  if storage.is_remote(workdir) and urllib.parse.urlsplit(os.fspath(workdir)).scheme not in ("gs", "gcs"):
    return log.warning("%s: leases need a local folder or a gs:// bucket: one writer is not enforced", workdir)
  store = _BucketStore(workdir) if storage.is_remote(workdir) else _LocalStore(workdir, timeout_s)
  folder, record = pathlib.Path(_key(workdir)), _new_record(timeout_s)
  created = [] if storage.is_remote(workdir) else [p for p in (folder, *folder.parents) if not p.exists()]
  if created:  # the local workdir's folders, deepest first: removed again if the run leaves them empty
    folder.mkdir(parents=True)
  try:
    token = _acquire(workdir, store, record, timeout_s)
  except BaseException:
    for folder in created:
      with contextlib.suppress(OSError):
        folder.rmdir()
    raise
  _HELD[_key(workdir)] = lease = Lease(workdir, store, token, record, created)
  return lease


def _hear_process_0(client, key: str) -> None:
  try:
    word = client.blocking_key_value_get(key, WORD_TIMEOUT_S * 1000)
  except Exception as e:  # noqa: BLE001 - a timeout or a lost coordinator
    raise StarbucksError(f"process 0 did not say whether it holds the workdir's lease ({e})") from None
  if word != "ok":
    raise StarbucksError(word.removeprefix("error: "))


@contextlib.contextmanager
def hold(workdir, timeout_s: float):
  """Holds the workdir's lease for the block (process 0 of a multi-process run; the others learn whether
  it did, through the coordination service's key-value store, and stop with its error if not)."""
  from jax._src import distributed as jax_distributed  # its key-value store: no device work, nothing compiled
  _calls[0] += 1
  client, key = jax_distributed.global_state.client, f"starbucks_jax/lease/{_calls[0]}"
  several = jax.process_count() > 1
  if several and jax.process_index() > 0:
    _hear_process_0(client, key)
    yield None
    return
  try:
    lease = _take(workdir, timeout_s)
  except Exception as e:
    if several:
      client.key_value_set(key, f"error: {e}")
    raise
  if several:  # the word, once the lease is held: processes 1.. go on
    client.key_value_set(key, "ok")
  try:
    yield lease
  finally:
    if lease is not None:
      lease.release()


def check_writer(workdir) -> None:
  """Raises if this process's lease on `workdir` was taken over: it must not write over the new writer's."""
  lease = _HELD.get(_key(workdir))
  if lease is not None and lease.lost.is_set():
    raise StarbucksError(f"the lease on {workdir} was taken over by another run (this one went unrenewed past "
                         "checkpoint.lease_timeout_s); stopping without writing another checkpoint")
