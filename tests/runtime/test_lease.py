"""One writer per workdir (starbucks_jax/runtime/lease.py): two trainings started together on one workdir,
locally and in a bucket (fake-gcs-server, `gcs`), train once; a second two-process job is refused on both
processes before compiling; a kill -9 leaves a lease that is taken over after the timeout, and the run
resumes bit-identical; `export` and `evaluate` run against a training workdir read complete steps. Each run
is the real `python -m starbucks_jax.train` on the tiny random BERT (test_preemption's command, 6 steps)."""

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest

from starbucks_jax.errors import StarbucksError
from starbucks_jax.runtime import checkpoints, lease
from tests.helpers import REPO
from tests.runtime.test_preemption import command, final_state

STEPS, EVERY = 6, 2
QUICK = [f"--config.checkpoint.every_steps={EVERY}", "--config.checkpoint.keep=10"]  # every step it saves is kept
SLOW_STEPS = {"STARBUCKS_FAULT_STEP_SLEEP": "1.5"}  # training lasts long enough to be read from meanwhile
LEASE_TIMEOUT = "--config.checkpoint.lease_timeout_s=2"


def train_command(workdir, model_dir, *extra):
  base = [a for a in command(workdir, model_dir, num_steps=STEPS) if not a.startswith("--config.checkpoint.")]
  return base + QUICK + list(extra)


def start_together(workdir, model_dir, logs, *extra, **env):
  """Two trainings of one config on one workdir, started at once; their stderr goes to files in `logs`."""
  logs.mkdir(parents=True, exist_ok=True)
  return [subprocess.Popen(train_command(workdir, model_dir, *extra), env=dict(os.environ, **env),
                           stdout=subprocess.DEVNULL, stderr=open(logs / f"{i}.log", "w"), text=True)  # noqa: SIM115
          for i in range(2)]


def winner_and_loser(processes, logs, winner_status=0):
  """(winner, its log, the loser's log): exactly one trained (`winner_status`), the other was refused (2)."""
  codes = [p.wait(timeout=600) for p in processes]
  texts = [(logs / f"{i}.log").read_text() for i in range(2)]
  assert sorted(codes) == sorted([winner_status, 2]), (codes, [t[-2000:] for t in texts])
  won = codes.index(winner_status)
  return processes[won], texts[won], texts[1 - won]


def assert_refused_by(loser_log: str, winner, workdir):
  """The loser's one `error:` line names the holder (the winner's process and this host), before compiling."""
  error = [line for line in loser_log.splitlines() if line.startswith("error: ")]
  assert len(error) == 1, loser_log[-2000:]
  assert error[0].startswith(f"error: --workdir {workdir} is being trained by another run: process {winner.pid} on "
                             f"host {socket.gethostname()}, started "), error
  assert re.search(r"last renewed \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(\d+ s ago\)", error[0]), error
  assert "packing: " not in loser_log and "training " not in loser_log  # stopped before the data and the compile


def same_run(workdir_a, workdir_b):
  """The same final parameters and Adam state, bit for bit, and the same metrics (timings aside)."""
  from starbucks_jax.runtime.metrics import read_metrics
  (step_a, a), (step_b, b) = final_state(workdir_a), final_state(workdir_b)
  assert step_a == step_b == STEPS and a.keys() == b.keys() and len(a) > 50
  assert not [k for k in a if not np.array_equal(a[k], b[k])]
  drop = lambda rows: [{k: v for k, v in r.items() if k != "examples_per_sec"} for r in rows]
  assert drop(read_metrics(workdir_a)) == drop(read_metrics(workdir_b))
  assert [r["step"] for r in read_metrics(workdir_a)] == list(range(1, STEPS + 1))  # each step logged once


class ExportedSteps(logging.Handler):
  """The steps `export` says it wrote ("exported step N to ...")."""

  def __init__(self):
    super().__init__()
    self.steps = []

  def emit(self, record):
    if record.msg.startswith("exported step"):
      self.steps.append(record.args[0])


def read_while_training(workdir, winner_running, root, sts) -> list:
  """`export` and `evaluate` of the workdir, in turn, for as long as it trains; (kind, output, steps) of each,
  where steps are the step export says it read, or the newest saved steps before and after an evaluate."""
  from starbucks_jax.cli.evaluate import main as evaluate
  from starbucks_jax.cli.export import main as export
  handler, exporter = ExportedSteps(), logging.getLogger("starbucks_jax.training.export")
  exporter.addHandler(handler)
  exporter.setLevel(logging.INFO)
  reads = []
  try:
    while winner_running():
      if not checkpoints.saved_steps(workdir):
        time.sleep(0.2)
        continue
      i = len(reads)
      if i % 2 == 0:
        export(["--workdir", str(workdir), "--output", str(root / f"export_{i}")])
        reads.append(("export", root / f"export_{i}", handler.steps[-1], winner_running()))
      else:
        before, output = checkpoints.saved_steps(workdir)[-1], root / f"r_{i}.json"
        evaluate(["--model", str(workdir), "--sts", str(sts), "--pairs", "1:8,4:32", "--output", str(output)])
        reads.append(("evaluate", output, (before, checkpoints.saved_steps(workdir)[-1]), winner_running()))
  finally:
    exporter.removeHandler(handler)
  return reads


@pytest.fixture(scope="module")
def sts(tmp_path_factory):
  path = tmp_path_factory.mktemp("sts") / "sts.jsonl"
  path.write_text("\n".join((REPO / "data" / "quickstart" / "stsb_test.jsonl").read_text().splitlines()[:24]) + "\n")
  return path


@pytest.fixture(scope="module")
def race(tiny_dir, tmp_path_factory, sts, gcs):
  """Two trainings started together on one local workdir, read by export and evaluate while it trains; at the
  same time (to share the wait) two on a gs:// workdir, whose winner is killed -9 after step 5."""
  root = tmp_path_factory.mktemp("race")
  workdir, bucket_workdir = root / "run", f"gs://bucket/lease-{uuid.uuid4().hex[:8]}/run"
  processes = start_together(workdir, tiny_dir, root / "logs", **SLOW_STEPS)
  in_bucket = start_together(bucket_workdir, tiny_dir, root / "bucket_logs", LEASE_TIMEOUT,
                             STARBUCKS_FAULT_KILL_AT_STEP="5")
  reads = read_while_training(workdir, lambda: any(p.poll() is None for p in processes), root, sts)
  winner, winner_log, loser_log = winner_and_loser(processes, root / "logs")
  return {"workdir": workdir, "winner": winner, "winner_log": winner_log, "loser_log": loser_log, "reads": reads,
          "root": root, "bucket": (bucket_workdir, in_bucket, root / "bucket_logs")}


def test_two_trainings_started_together_train_once(race):
  workdir = race["workdir"]
  assert_refused_by(race["loser_log"], race["winner"], workdir)
  assert "took over" not in race["winner_log"] and f"exported step {STEPS}" in race["winner_log"]
  assert checkpoints.saved_steps(workdir) == list(range(EVERY, STEPS + 1, EVERY))
  assert not (workdir / "lease.json").exists() and not list(workdir.glob("lease.json*"))  # dropped at the end


def test_export_and_evaluate_during_training_read_complete_steps(race, sts):
  """Each export read a finished step (equal, byte for byte, to that step's export once the run is over);
  each evaluate scored one of the steps saved while it ran; neither took the lease."""
  from starbucks_jax.cli.evaluate import main as evaluate
  from starbucks_jax.cli.export import main as export
  workdir, root, reads = race["workdir"], race["root"], race["reads"]
  during = {kind for kind, _, _, running in reads if running}
  assert during == {"export", "evaluate"}, reads  # both finished while the run was still training
  for i, (kind, output, steps, _) in enumerate(reads):
    if kind == "export":
      export(["--workdir", str(workdir), "--step", str(steps), "--output", str(root / f"again_{i}")])
      for name in ("model.safetensors", "config.json"):
        assert (output / name).read_bytes() == (root / f"again_{i}" / name).read_bytes(), (i, steps)
      continue
    scores = json.loads(output.read_text())["sts"]
    candidates = [s for s in checkpoints.saved_steps(workdir) if steps[0] <= s <= steps[1]]
    for step in candidates:
      evaluate(["--model", str(workdir), "--step", str(step), "--sts", str(sts), "--pairs", "1:8,4:32", "--output",
                str(root / f"again_{i}_{step}.json")])
    assert scores in [json.loads((root / f"again_{i}_{s}.json").read_text())["sts"] for s in candidates], (i, steps)


def test_two_trainings_on_a_bucket_workdir_train_once(race):
  """One trains (and is killed after step 5, for the test below), the other is refused, naming it."""
  workdir, processes, logs = race["bucket"]
  winner, _, loser_log = winner_and_loser(processes, logs, winner_status=-signal.SIGKILL)
  assert_refused_by(loser_log, winner, workdir)


def test_a_killed_runs_lease_is_taken_over_after_the_timeout(race, tiny_dir):
  """kill -9 leaves the lease (in the bucket: its object's generation is the lock). Its holder is made a crashed
  other host's (on this host a dead process is known at once): refused while fresh, taken over with a warning
  once 2 s (lease_timeout_s) pass without a renewal; the run resumes and ends as one uninterrupted run did."""
  from starbucks_jax import storage
  workdir, processes, logs = race["bucket"]
  winner, _, _ = winner_and_loser(processes, logs, winner_status=-signal.SIGKILL)
  storage.refresh(workdir)
  record = json.loads(storage.as_path(f"{workdir}/lease.json").read_text())
  assert record["pid"] == winner.pid and checkpoints.saved_steps(workdir) == [2, 4]
  assert lease.stale_reason(record, 2) == f"its process {winner.pid} on this host has ended"
  record.update(host="crashed-host.example", renewed=time.time())
  storage.as_path(f"{workdir}/lease.json").write_text(json.dumps(record))
  with pytest.raises(StarbucksError, match=f"process {winner.pid} on host crashed-host.example, started .*"
                                           r"\(a lease not renewed for 2 s"):
    with lease.hold(workdir, 2):
      pass
  time.sleep(max(0.0, record["renewed"] + 2.5 - time.time()))
  resumed = subprocess.run(train_command(workdir, tiny_dir, LEASE_TIMEOUT), capture_output=True, text=True,
                           timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert re.search(f"WARNING .*took over the lease on {re.escape(workdir)} from process {winner.pid} on host "
                   r"crashed-host.example, .*: it was not renewed for \d+ s \(the timeout is 2 s\)", resumed.stderr)
  assert "resuming from the checkpoint at step 4" in resumed.stderr
  same_run(workdir, race["workdir"])  # checkpoints and metrics: those of the one local run
  storage.refresh(workdir)
  assert not storage.as_path(f"{workdir}/lease.json").exists()


def test_a_second_two_process_job_is_refused_on_every_process(tiny_dir, tmp_path):
  """While this process holds the workdir, a job of two processes (gloo) stops on both with the same error,
  before anything is loaded or compiled: process 0 asks, and tells process 1."""
  workdir = tmp_path / "run"
  environment = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  with lease.hold(workdir, 30):
    processes = [subprocess.Popen(train_command(workdir, tiny_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True, env=dict(environment, STARBUCKS_COORDINATOR=f"127.0.0.1:{port}",
                                                      STARBUCKS_NUM_PROCESSES="2", STARBUCKS_PROCESS_ID=str(i),
                                                      JAX_PLATFORMS="cpu")) for i in (0, 1)]
    logs = [p.communicate(timeout=300)[1] for p in processes]
  for process, log in zip(processes, logs):
    assert process.returncode == 2, log[-3000:]
    assert f"error: --workdir {workdir} is being trained by another run: process {os.getpid()} on host" in log, log
    assert "packing: " not in log and "training " not in log
  assert not workdir.exists()  # nothing written; this process's lease dropped, and the folder made for it


# --- the lease itself ---

def test_the_holder_is_named_renews_and_drops_the_lease(tmp_path):
  workdir = tmp_path / "new" / "run"
  with lease.hold(workdir, 0.5):
    path = workdir / "lease.json"
    first, inode = json.loads(path.read_text()), path.stat().st_ino
    assert {first[k] for k in ("host", "pid")} == {socket.gethostname(), os.getpid()}
    with pytest.raises(StarbucksError) as refused:
      with lease.hold(workdir, 0.5):
        pass
    time.sleep(0.4)  # a renewal every 0.1 s
    later = json.loads(path.read_text())
    assert later["write"] >= 2 and later["renewed"] > first["renewed"] and path.stat().st_ino == inode
  message = str(refused.value)
  assert message.startswith(f"--workdir {workdir} is being trained by another run: process {os.getpid()} on host "
                            f"{socket.gethostname()}, started {time.strftime('%Y-%m-%d', time.gmtime())}")
  assert "last renewed" in message and "(a lease not renewed for 0.5 s, checkpoint.lease_timeout_s" in message
  assert not (tmp_path / "new").exists()  # dropped, and the folders made for it removed again

  with pytest.raises(RuntimeError):
    with lease.hold(tmp_path, 30):
      raise RuntimeError("a failing run")
  assert not (tmp_path / "lease.json").exists()


def test_sigterm_drops_the_lease(tmp_path):
  """Before the loop (loading, compiling) SIGTERM drops the lease and ends the process; in the loop the
  PreemptionWatch takes SIGTERM (save, then stop), and the lease stays held until the run returns."""
  code = ("import sys, time\nfrom starbucks_jax.runtime import lease, preemption\n"
          "with lease.hold(sys.argv[1], 30):\n"
          "  watch = preemption.PreemptionWatch()\n  print('held', flush=True)\n  sys.stdin.readline()\n"
          "  watch.close()\n  print('loop over', watch.requested(1), flush=True)\n  time.sleep(60)\n")
  process = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  assert process.stdout.readline() == "held\n", process.communicate()[1][-2000:]
  process.send_signal(signal.SIGTERM)  # in the loop: the watch's
  time.sleep(0.5)
  assert process.poll() is None and (tmp_path / "lease.json").exists()
  process.stdin.write("\n")
  process.stdin.flush()
  assert process.stdout.readline() == "loop over True\n"
  process.send_signal(signal.SIGTERM)  # after the loop: drop the lease, then end as SIGTERM does
  _, stderr = process.communicate(timeout=60)
  assert process.returncode == -signal.SIGTERM, stderr[-2000:]
  assert "SIGTERM: dropping the workdir's lease" in stderr
  assert not (tmp_path / "lease.json").exists()


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_a_stale_lease_is_taken_over_by_exactly_one_newcomer(where, tmp_path, request):
  if where == "bucket":
    request.getfixturevalue("gcs")
  workdir = str(tmp_path) if where == "local" else f"gs://bucket/stale-{uuid.uuid4().hex[:8]}"
  from starbucks_jax import storage
  for _ in range(10 if where == "local" else 3):
    crashed = {"run_id": "x", "host": "crashed-host.example", "pid": 1, "started": time.time() - 100,
               "renewed": time.time() - 100, "timeout_s": 1, "write": 0}
    storage.as_path(f"{workdir}/lease.json").write_text(json.dumps(crashed))
    start, results = threading.Barrier(6), []

    def newcomer():
      store = lease._BucketStore(workdir) if where == "bucket" else lease._LocalStore(workdir, 1)
      record = lease._new_record(1)
      start.wait()
      try:
        results.append((record["run_id"], lease._acquire(workdir, store, record, 1)))
      except StarbucksError as e:
        results.append((None, str(e)))
      if hasattr(store, "close"):
        store.close()

    threads = [threading.Thread(target=newcomer) for _ in range(6)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    winners = [run_id for run_id, _ in results if run_id]
    assert len(winners) == 1, results
    assert all("is being trained by another run" in r for run_id, r in results if not run_id), results
    storage.refresh(workdir)
    assert json.loads(storage.as_path(f"{workdir}/lease.json").read_text())["run_id"] == winners[0]
    storage.as_path(f"{workdir}/lease.json").unlink()


def test_a_holder_on_this_host_whose_process_ended_is_taken_over_at_once(tmp_path, caplog):
  ended = subprocess.Popen(["sleep", "30"])
  record = dict(lease._new_record(300), pid=ended.pid, process_start=lease._proc_start(ended.pid))
  ended.kill()
  ended.wait()
  (tmp_path / "lease.json").write_text(json.dumps(record))
  with caplog.at_level(logging.WARNING, logger="starbucks_jax.runtime.lease"), lease.hold(tmp_path, 300):
    assert json.loads((tmp_path / "lease.json").read_text())["pid"] == os.getpid()
  assert f"took over the lease on {tmp_path} from process {ended.pid} on host" in caplog.text
  assert f"its process {ended.pid} on this host has ended" in caplog.text


def test_a_run_that_lost_its_lease_writes_no_checkpoint(tmp_path):
  """A holder that stalled past the timeout and was taken over finds out at its next renewal; from then on
  its saves stop with an error, and the new holder's lease is left alone."""
  with lease.hold(tmp_path, 30) as held:
    newer = dict(lease._new_record(30), host="other-host.example")
    (tmp_path / "new.json").write_text(json.dumps(newer))
    os.replace(tmp_path / "new.json", tmp_path / "lease.json")  # what a takeover's rename does
    held.renew()
    assert held.lost.is_set()
    run_checkpoints = checkpoints.RunCheckpoints(tmp_path, every_steps=1, keep=1, async_save=False)
    with pytest.raises(StarbucksError, match="was taken over by another run .*stopping without writing"):
      run_checkpoints.save(None, 1, force=True)
  assert json.loads((tmp_path / "lease.json").read_text())["host"] == "other-host.example"
  assert checkpoints.saved_steps(tmp_path) == []


def test_the_lease_timeout_is_a_checked_setting():
  from starbucks_jax.training.defaults import base_config
  assert base_config().checkpoint.lease_timeout_s == 300.0
  with pytest.raises(StarbucksError, match="checkpoint.lease_timeout_s must be a positive number of seconds"):
    checkpoints.CheckpointConfig(lease_timeout_s=0)


def test_readers_take_the_newest_complete_checkpoint(race, tmp_path, monkeypatch, caplog):
  """A step still being written (Orbax's temporary folder) is never read; a newest step removed while it is
  read (the run keeps only the newest K) gives way to the then newest."""
  workdir = tmp_path / "run"
  shutil.copytree(race["workdir"] / "model", workdir / "model")
  for step in (2, 4):
    shutil.copytree(checkpoints.step_dir(race["workdir"], step), checkpoints.step_dir(workdir, step))
  partial = workdir / "checkpoints" / "6.orbax-checkpoint-tmp-1234"
  shutil.copytree(checkpoints.step_dir(race["workdir"], 6) / "params", partial / "params")
  assert checkpoints.restore_params(workdir)[1] == 4
  read = checkpoints._read_params

  def removed_while_read(path, step):
    monkeypatch.setattr(checkpoints, "_read_params", read)
    shutil.rmtree(checkpoints.step_dir(path, step))  # the run's keep-the-newest-K, mid-read
    return read(path, step)

  monkeypatch.setattr(checkpoints, "_read_params", removed_while_read)
  with caplog.at_level(logging.INFO, logger="starbucks_jax.runtime.checkpoints"):
    params, step = checkpoints.restore_params(workdir)
  assert step == 2 and "checkpoint 4 of" in caplog.text and "was removed while being read" in caplog.text
  assert params.keys() == checkpoints.restore_params(race["workdir"], 2)[0].keys()
