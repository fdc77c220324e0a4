"""Preemption: SIGTERM means "save and leave".

Cloud TPU and SLURM (with `--signal=TERM@...` or at `scancel`) send SIGTERM some seconds before they take
the machine. The loop asks `requested(step)` after every step; when it says yes the loop saves a
checkpoint at that step and exits with status 0, and the same command started again resumes there.

One process: a Python SIGTERM handler sets a flag. Several: JAX's preemption service (started by
`jax.distributed.initialize`) hears the signal on any host and agrees with the others on one step at
which all of them save, so every host writes the same checkpoint.

Outside the loop (while the run loads and compiles, and after it), SIGTERM ends a single process as it
always did, but first drops the workdir's lease (`drop_on_sigterm`, `lease.py`), so that the next run
need not wait for the lease to time out.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Callable

import jax

log = logging.getLogger(__name__)


class PreemptionWatch:
  def __init__(self):
    self._signalled = threading.Event()
    self._previous = None
    self.multi_process = jax.process_count() > 1
    # With several processes JAX's own SIGTERM notifier is in place; a Python handler would replace it.
    if not self.multi_process and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):
    log.warning("SIGTERM: saving a checkpoint after the current step, then exiting")
    self._signalled.set()

  def requested(self, step: int) -> bool:
    """Whether to save and stop once `step` steps are done (every process gets the same answer)."""
    if self.multi_process:
      from jax.experimental import multihost_utils
      return multihost_utils.reached_preemption_sync_point(step)
    return self._signalled.is_set()

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


def drop_on_sigterm(release: Callable[[], None]) -> Callable[[], None]:
  """Until the returned function is called, SIGTERM calls `release` and then does what it did before (by
  default, end the process). The loop's PreemptionWatch stands in front of it while training. One process
  only: with several, JAX's own notifier handles SIGTERM and a Python handler would replace it."""
  previous = signal.getsignal(signal.SIGTERM)
  if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread() or \
      previous in (signal.SIG_IGN, None):
    return lambda: None

  def on_sigterm(signum, frame):
    log.warning("SIGTERM: dropping the workdir's lease")
    release()  # puts `previous` back
    if callable(previous):
      previous(signum, frame)
    else:
      os.kill(os.getpid(), signal.SIGTERM)

  def restore() -> None:
    if signal.getsignal(signal.SIGTERM) is on_sigterm:
      signal.signal(signal.SIGTERM, previous)

  signal.signal(signal.SIGTERM, on_sigterm)
  return restore
