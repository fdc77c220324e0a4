"""Training metrics: `workdir/metrics.jsonl` (one JSON object per logged step), TensorBoard scalars and,
when `config.wandb.project` is set, a Weights & Biases run (`runtime/wandb_run.py`).

Only process 0 writes. When a run resumes from step s, lines for steps after s (logged by the
interrupted run after its last checkpoint) are dropped, so the file reads as one uninterrupted run.
In a bucket (`gs://...`), where an object cannot be appended to, the whole file is uploaded again at
each write (it is small: one line per logged step); TensorBoard writes its events there itself.
"""

from __future__ import annotations

import json
import logging

from starbucks_jax import storage

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def read_metrics(workdir) -> list[dict]:
  path = storage.as_path(workdir) / METRICS_FILE
  storage.refresh(path.parent)
  if not path.is_file():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLog:
  """Appends metrics to metrics.jsonl and, when tensorboardX is installed, to TensorBoard; and to a W&B
  run when one is given (anything with `log(row, step=)` and `finish()`)."""

  def __init__(self, workdir, *, resume_step: int, enabled: bool = True, tensorboard: bool = True,
               wandb_run=None):
    self.enabled = enabled
    self.path = storage.as_path(workdir) / METRICS_FILE
    self._remote = storage.is_remote(self.path)
    self._tb, self._file, self._wandb = None, None, wandb_run
    if not enabled:
      return
    self._rows = [m for m in read_metrics(workdir) if m["step"] <= resume_step]
    self.path.write_text("".join(json.dumps(m) + "\n" for m in self._rows))
    if not self._remote:
      self._file = open(self.path, "a")  # noqa: SIM115 - kept open for the run
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter
      except ImportError:
        log.warning("tensorboardX is not installed; TensorBoard scalars are off (pip install tensorboardX)")
      else:
        # purge_step drops events after the checkpoint, like the JSON lines above.
        self._tb = SummaryWriter(str(storage.as_path(workdir) / TENSORBOARD_DIR), purge_step=resume_step + 1)

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: float(v) if not isinstance(v, int) else v for k, v in metrics.items()}}
    if self._remote:
      self._rows.append(row)
      self.path.write_text("".join(json.dumps(m) + "\n" for m in self._rows))
    else:
      self._file.write(json.dumps(row) + "\n")
      self._file.flush()
    if self._tb is not None:
      for key, value in metrics.items():
        self._tb.add_scalar(key, value, step)
    if self._wandb is not None:
      self._wandb.log({k: v for k, v in row.items() if k != "step"}, step=int(step))

  def close(self) -> None:
    if not self.enabled:
      return
    if self._file is not None:
      self._file.close()
    if self._tb is not None:
      self._tb.close()
    if self._wandb is not None:
      self._wandb.finish()
