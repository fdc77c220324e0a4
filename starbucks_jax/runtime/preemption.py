"""Preemption: SIGTERM means "save and leave".

Cloud TPU and SLURM (with `--signal=TERM@...` or at `scancel`) send SIGTERM some seconds before they take
the machine. The loop asks `requested(step)` after every step; when it says yes the loop saves a
checkpoint at that step and exits with status 0, and the same command started again resumes there.

One process: a Python SIGTERM handler sets a flag. Several: JAX's preemption service (started by
`jax.distributed.initialize`) hears the signal on any host and agrees with the others on one step at
which all of them save, so every host writes the same checkpoint.
"""

from __future__ import annotations

import logging
import signal
import threading

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
