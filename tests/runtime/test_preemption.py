"""Survival: kill -9 at a random step and restart (bit-identical to an uninterrupted run), SIGTERM
(checkpoint at the current step, exit 0), and damaged checkpoints (fall back to the previous one,
or stop with a message naming the file). Each run is the real `python -m starbucks_jax.train` on a tiny
random BERT, CPU, float32, with packed batches (`data.packing`, dropout on): the row count is
re-estimated the same on restart and each batch is packed the same. (Unpacked runs are killed and
resumed in tests/runtime/test_bucket_workdir.py and tests/training/test_grad_cache.py.)"""

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO
STEPS, EVERY = 10, 4


def command(workdir, model_dir, num_steps=STEPS, extra=(), packing=True):
  overrides = [f"--config.model.name={model_dir}", "--config.data.max_examples=96", "--config.batch_size=8",
               f"--config.num_steps={num_steps}", f"--config.checkpoint.every_steps={EVERY}",
               "--config.log_every_steps=1", "--config.starbucks.pairs=((1,8),(2,16),(4,32))",
               "--config.data.query_max_length=32", "--config.data.passage_max_length=32", "--config.mesh.data=1",
               "--config.progress_bar=False", "--config.optimizer.lr=1e-3", "--config.eval.sts=()",
               "--config.tensorboard=False", f"--config.data.packing={packing}"]
  return [sys.executable, "-m", "starbucks_jax.train", "--config", str(REPO / "configs" / "quickstart.py"),
          "--workdir", str(workdir)] + overrides + list(extra)


def train(workdir, model_dir, extra=(), **env):
  return subprocess.run(command(workdir, model_dir, extra=extra), env=dict(os.environ, **env), capture_output=True,
                        text=True, timeout=600)


def final_state(workdir):
  """Parameters and optimizer state of the newest checkpoint, as flat numpy arrays."""
  import jax
  import orbax.checkpoint as ocp
  from starbucks_jax.runtime import checkpoints
  step = checkpoints.saved_steps(workdir)[-1]
  arrays = {}
  for item in ("params", "opt_state"):
    path = checkpoints.step_dir(workdir, step) / item
    restored = ocp.StandardCheckpointer().restore(path)
    arrays.update({f"{item}{jax.tree_util.keystr(k)}": np.asarray(v)
                   for k, v in jax.tree_util.tree_leaves_with_path(restored)})
  return step, arrays


def assert_bit_identical(workdir_a, workdir_b):
  step_a, a = final_state(workdir_a)
  step_b, b = final_state(workdir_b)
  assert step_a == step_b == STEPS
  assert a.keys() == b.keys() and len(a) > 50
  different = [k for k in a if not np.array_equal(a[k], b[k])]
  assert not different, different[:5]


@pytest.fixture(scope="module")
def whole_run(tiny_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("whole") / "run"
  out = train(workdir, tiny_dir)
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir


def test_kill_at_a_random_step_then_restart_is_bit_identical(whole_run, tiny_dir, tmp_path):
  kill_at = random.randrange(EVERY + 1, STEPS)  # after the first checkpoint, before the end
  killed = train(tmp_path, tiny_dir, STARBUCKS_FAULT_KILL_AT_STEP=str(kill_at))
  assert killed.returncode == -signal.SIGKILL, (kill_at, killed.stderr[-3000:])
  assert not (tmp_path / "export").exists()
  resumed = train(tmp_path, tiny_dir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "packing: " in resumed.stderr
  checkpoint = kill_at // EVERY * EVERY
  assert f"resuming from the checkpoint at step {checkpoint}" in resumed.stderr, (kill_at, resumed.stderr[-2000:])
  assert_bit_identical(tmp_path, whole_run)

  from starbucks_jax.runtime.metrics import read_metrics
  drop_timing = lambda rows: [{k: v for k, v in r.items() if k != "examples_per_sec"} for r in rows]
  assert drop_timing(read_metrics(tmp_path)) == drop_timing(read_metrics(whole_run))


def test_sigterm_saves_the_current_step_and_exits_zero(tiny_dir, tmp_path):
  """(The resume after a SIGTERM, and its bit-identical finish, run in a bucket in
  tests/runtime/test_bucket_workdir.py and over two processes in tests/runtime/test_multihost.py.)"""
  from starbucks_jax.runtime import checkpoints
  from starbucks_jax.runtime.metrics import read_metrics
  # Steps of the tiny model take milliseconds; a sleep at each step's end gives the signal a step to land in.
  process = subprocess.Popen(command(tmp_path, tiny_dir), env=dict(os.environ, STARBUCKS_FAULT_STEP_SLEEP="0.5"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while len(read_metrics(tmp_path)) < 2:  # training is under way (the handler is installed before step 1)
    assert process.poll() is None and time.time() < deadline, process.communicate()[1][-3000:]
    time.sleep(0.1)
  signalled = time.time()
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  took = time.time() - signalled
  assert process.returncode == 0, stderr[-3000:]
  assert took < 60, took
  last_logged = read_metrics(tmp_path)[-1]["step"]
  assert checkpoints.saved_steps(tmp_path)[-1] == last_logged < STEPS, (checkpoints.saved_steps(tmp_path), last_logged)
  assert f"preempted: saved the checkpoint at step {last_logged} of {STEPS}" in stderr
  assert not (tmp_path / "export").exists()


@pytest.fixture(scope="module")
def killed_at_9(tiny_dir, tmp_path_factory):
  """A run killed after step 9: checkpoints at 4 and 8 (each test damages a copy)."""
  from starbucks_jax.runtime import checkpoints
  workdir = tmp_path_factory.mktemp("killed") / "run"
  killed = train(workdir, tiny_dir, STARBUCKS_FAULT_KILL_AT_STEP="9")
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  assert checkpoints.saved_steps(workdir) == [4, 8]
  return workdir


def test_a_deleted_file_in_the_only_checkpoint_is_named(killed_at_9, tiny_dir, tmp_path):
  """(A truncated newest checkpoint, set aside with a warning and resumed from the one before, runs in a
  bucket in tests/runtime/test_bucket_workdir.py; bytes changed at the same size, below.)"""
  from starbucks_jax.runtime import checkpoints
  shutil.copytree(killed_at_9, tmp_path / "run")

  # Only one checkpoint, with a file deleted: a clear error naming the file, and nothing is removed.
  alone = tmp_path / "alone"
  shutil.copytree(tmp_path / "run", alone)
  shutil.rmtree(alone / "checkpoints" / "8")
  missing = next(p for p in sorted((alone / "checkpoints" / "4" / "opt_state").rglob("*")) if p.is_file()
                 and p.parent.name == "d")
  missing.unlink()
  out = train(alone, tiny_dir)
  assert out.returncode == 2, out.stderr[-3000:]
  assert f"checkpoint file {missing} is missing" in out.stderr
  assert "no older checkpoint to resume from" in out.stderr
  assert checkpoints.saved_steps(alone) == [4]


def invert_4kib(path):
  """Inverts 4 KiB in the middle of a file; its size stays the same."""
  data = bytearray(path.read_bytes())
  start = max(0, len(data) // 2 - 2048)
  data[start:start + 4096] = bytes(b ^ 0xFF for b in data[start:start + 4096])
  path.write_bytes(bytes(data))


def largest_data_file(step_dir):
  step_dir = Path(step_dir)
  return max((p for p in (step_dir / "params").rglob("*") if p.is_file() and p.parent.name == "d"),
             key=lambda p: p.stat().st_size)


def test_same_size_damage_is_never_loaded(whole_run, killed_at_9, tiny_dir, tmp_path):
  """Bytes inverted, size kept: the checksums recorded at save time catch it. The newest checkpoint damaged:
  set aside with a warning naming the file, resumed from the one before, same finish. An older one
  damaged: export and evaluate of that step refuse it by name, and a run left with only it stops."""
  from starbucks_jax.cli.evaluate import main as evaluate
  from starbucks_jax.cli.export import main as export
  from starbucks_jax.errors import StarbucksError
  from starbucks_jax.runtime import checkpoints
  shutil.copytree(killed_at_9, tmp_path / "run")
  older = tmp_path / "older"
  shutil.copytree(tmp_path / "run", older)

  damaged = largest_data_file(checkpoints.step_dir(older, 4))
  invert_4kib(damaged)
  message = f"checkpoint file {damaged} does not match the checksum recorded when it was saved"
  with pytest.raises(StarbucksError, match=re.escape(message)):
    export(["--workdir", str(older), "--step", "4", "--output", str(tmp_path / "x")])
  with pytest.raises(StarbucksError, match=re.escape(message)):
    evaluate(["--model", str(older), "--step", "4", "--sts", str(REPO / "data" / "quickstart" / "stsb_test.jsonl"),
              "--output", str(tmp_path / "r.json")])
  shutil.rmtree(older / "checkpoints" / "8")
  out = train(older, tiny_dir)
  assert out.returncode == 2 and message in out.stderr and "no older checkpoint to resume from" in out.stderr
  assert checkpoints.saved_steps(older) == [4]  # kept, not deleted

  newest = largest_data_file(checkpoints.step_dir(tmp_path / "run", 8))
  invert_4kib(newest)
  out = train(tmp_path / "run", tiny_dir)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"checkpoint file {newest} does not match the checksum" in out.stderr
  assert "resuming from the checkpoint at step 4" in out.stderr
  assert_bit_identical(tmp_path / "run", whole_run)


def test_checkpoint_interrupted_mid_write_is_never_resumed(tiny_dir, tmp_path):
  """Orbax writes a step under a temporary name and renames it when complete: a leftover temporary
  folder (a save cut short) is not a checkpoint."""
  from starbucks_jax.runtime import checkpoints
  manager = checkpoints.RunCheckpoints(tmp_path, every_steps=1, keep=3, async_save=False)
  (tmp_path / "checkpoints" / "7.orbax-checkpoint-tmp-1234").mkdir(parents=True)
  assert manager.manager.latest_step() is None and checkpoints.saved_steps(tmp_path) == []
