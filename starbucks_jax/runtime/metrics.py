"""Training metrics: `workdir/metrics.jsonl` (one JSON object per logged step) and TensorBoard scalars.

Only process 0 writes. When a run resumes from step s, lines for steps after s (logged by the
interrupted run after its last checkpoint) are dropped, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def read_metrics(workdir: str | Path) -> list[dict]:
  path = Path(workdir) / METRICS_FILE
  if not path.is_file():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLog:
  """Appends metrics to metrics.jsonl and, when tensorboardX is installed, to TensorBoard."""

  def __init__(self, workdir: str | Path, *, resume_step: int, enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self.path = Path(workdir) / METRICS_FILE
    self._tb = None
    if not enabled:
      return
    kept = [m for m in read_metrics(workdir) if m["step"] <= resume_step]
    self.path.write_text("".join(json.dumps(m) + "\n" for m in kept))
    self._file = self.path.open("a")
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter
      except ImportError:
        log.warning("tensorboardX is not installed; TensorBoard scalars are off (pip install tensorboardX)")
      else:
        # purge_step drops events after the checkpoint, like the JSON lines above.
        self._tb = SummaryWriter(str(Path(workdir) / TENSORBOARD_DIR), purge_step=resume_step + 1)

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: float(v) if not isinstance(v, int) else v for k, v in metrics.items()}}
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    if self._tb is not None:
      for key, value in metrics.items():
        self._tb.add_scalar(key, value, step)

  def close(self) -> None:
    if not self.enabled:
      return
    self._file.close()
    if self._tb is not None:
      self._tb.close()
