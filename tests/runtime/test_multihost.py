"""Scale-out, for real on CPU: 2 processes x 2 devices (gloo, started by launch/local_cpu.sh) against 1
process x 4 devices, FSDP (data=2 x fsdp=4) against pure data parallelism on 8 simulated devices, and the
ahead-of-time `--dry_run`. Each run is the real `python -m starbucks_jax.train` on a tiny random BERT."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO
LOCAL_CPU = REPO / "launch" / "local_cpu.sh"
# The launch scripts start `python` from the PATH: this interpreter's folder goes first, so that the tests pass
# from a virtual environment that is not activated too.
PYTHON_FIRST = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
STEPS = 4


STS = REPO / "data" / "quickstart" / "stsb_test.jsonl"


def run_args(task, model_dir, workdir=None, *extra, evaluate=False, sts=STS):
  common = [f"--config.model.name={model_dir}", "--config.data.max_examples=64", "--config.batch_size=8",
            f"--config.num_steps={STEPS}", "--config.log_every_steps=1", "--config.progress_bar=False",
            "--config.optimizer.lr=1e-3", "--config.tensorboard=False"]
  if task == "srl":
    specific = ["--config", str(REPO / "configs" / "quickstart.py"), "--config.starbucks.pairs=((1,8),(2,16),(4,32))",
                "--config.data.query_max_length=32", "--config.data.passage_max_length=32",
                # STS-B test at steps 2 and 4 (evaluated by process 0 alone), or none
                f"--config.eval.sts=({str(sts)!r},)" if evaluate else "--config.eval.sts=()",
                "--config.eval.every_steps=2", "--config.eval.pairs=((1,8),(4,32))"]
  else:
    specific = ["--config", str(REPO / "configs" / "smae_quickstart.py"), "--config.smae.pairs=((1,8),(2,16),(4,32))",
                "--config.data.max_length=32"]
  workdir_args = ["--workdir", str(workdir)] if workdir else []
  return [sys.executable, "-m", "starbucks_jax.train"] + specific + common + workdir_args + list(extra)


def run(command, **env):
  environment = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  environment["PATH"] = PYTHON_FIRST
  out = subprocess.run(command, env=dict(environment, **env), capture_output=True, text=True, timeout=600, cwd=REPO)
  assert out.returncode == 0, out.stderr[-4000:]
  return out


def metrics(workdir):
  from starbucks_jax.runtime.metrics import read_metrics
  return read_metrics(workdir)


def assert_same_metrics(a, b, tolerance=1e-5):
  """Every logged value (losses per pair, grad norm, lr) agrees to `tolerance` of its size (at least 1)."""
  assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, STEPS + 1))
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    worst = max(abs(x[k] - y[k]) / max(1.0, abs(x[k])) for k in x
                if k != "examples_per_sec" and not k.startswith("eval/"))
    assert worst <= tolerance, (worst, x, y)
    # Scores (x100) of weights that agree to float32 rounding: a near-tie may change rank, no more.
    assert all(abs(x[k] - y[k]) < 0.5 for k in x if k.startswith("eval/")), (x, y)
  assert a[-1]["loss"] != a[0]["loss"]  # training moved


FAKE_SRUN = """#!/usr/bin/env bash
# Stands in for SLURM's srun: starts the command as FAKE_NTASKS tasks, one per "node", with the
# variables srun sets, here on one machine.
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((i = 0; i < FAKE_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=0 SLURM_NODEID=$i SLURM_NTASKS=$FAKE_NTASKS SLURM_NNODES=$FAKE_NTASKS \
    SLURM_NTASKS_PER_NODE=1 SLURM_STEP_NODELIST=localhost "$@" 2>"$FAKE_LOG_DIR/process_$i.log" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
"""


def preempt_then_resume(command, workdir, logs):
  """launch/local_cpu.sh 2 2, SIGTERM to the launcher once step 1 is logged (the preemption of a whole
  job), then the same command again to finish. The metrics must be those of an uninterrupted run."""
  import signal
  import time
  environment = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  environment["PATH"] = PYTHON_FIRST
  launcher = subprocess.Popen(["bash", str(LOCAL_CPU), "2", "2"] + command, cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True,
                              env=dict(environment, STARBUCKS_LOG_DIR=str(logs), STARBUCKS_FAULT_STEP_SLEEP="1"))
  deadline = time.time() + 300
  while not metrics(workdir):
    assert launcher.poll() is None and time.time() < deadline, launcher.communicate()[1][-3000:]
    time.sleep(0.1)
  launcher.send_signal(signal.SIGTERM)
  assert launcher.wait(timeout=120) == 0, launcher.communicate()[1][-3000:]
  from starbucks_jax.runtime import checkpoints
  (saved,) = checkpoints.saved_steps(workdir)
  assert 1 <= saved < STEPS, saved
  for i in (0, 1):  # both processes agreed on one step and saved it together
    assert f"preempted: saved the checkpoint at step {saved} of {STEPS}" in (logs / f"process_{i}.log").read_text()
  run(["bash", str(LOCAL_CPU), "2", "2"] + command, STARBUCKS_LOG_DIR=str(logs / "resumed"))
  assert f"resuming from the checkpoint at step {saved}" in (logs / "resumed" / "process_1.log").read_text()
  return logs / "resumed"


def launch_two_processes(launcher, command, workdir, logs, tmp_path, preempt=True):
  """2 processes x 2 CPU devices, started by launch/local_cpu.sh (and preempted on the way, unless
  `preempt` is False) or by launch/slurm_gpu.sbatch under a stand-in srun (so SLURM's variables are what
  starbucks_jax/runtime/distributed.py reads). Returns the folder of the finishing run's process logs."""
  if launcher == "local" and preempt:
    return preempt_then_resume(command, workdir, logs)
  if launcher == "local":
    run(["bash", str(LOCAL_CPU), "2", "2"] + command, STARBUCKS_LOG_DIR=str(logs))
    return logs
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "srun").write_text(FAKE_SRUN)
  (bin_dir / "scontrol").write_text(f"#!/usr/bin/env bash\necho \"$@\" >> {tmp_path}/scontrol_calls\n")
  for tool in bin_dir.iterdir():
    tool.chmod(0o755)
  logs.mkdir()
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  train_args = command[command.index("--config") + 2:]  # what follows the train module and its config
  config = command[command.index("--config") + 1]
  workdir_args = train_args[train_args.index("--workdir"):train_args.index("--workdir") + 2]
  overrides = [a for a in train_args if a not in workdir_args]
  run(["bash", str(REPO / "launch" / "slurm_gpu.sbatch"), config, str(workdir)] + overrides,
      PATH=f"{bin_dir}{os.pathsep}{PYTHON_FIRST}", FAKE_NTASKS="2", FAKE_LOG_DIR=str(logs), SLURM_JOB_ID="4242",
      SLURM_SUBMIT_DIR=str(REPO), STARBUCKS_COORDINATOR_PORT=str(port), JAX_PLATFORMS="cpu",
      XLA_FLAGS="--xla_force_host_platform_device_count=2")
  assert not (tmp_path / "scontrol_calls").exists()  # finished: no requeue
  return logs


@pytest.mark.parametrize("task, launcher", [("srl", "local"), ("smae", "slurm")])
def test_two_processes_of_two_devices_match_one_process_of_four(task, launcher, tiny_dir, tmp_path, request):
  """The local launcher's processes share one gs:// workdir on a GCS server (fake-gcs-server, `gcs`), as a
  TPU pod's hosts do: each writes its own checkpoint shards, process 0 the rest. SRL evaluates during
  training, packed (`eval.packing`) in the two processes and padded in the one."""
  from starbucks_jax import storage
  evaluate = task == "srl"  # evaluation during training: process 0 scores the gathered weights
  two = tmp_path / "two"
  if launcher == "local":
    request.getfixturevalue("gcs")
    two = storage.as_path(f"gs://bucket/multihost-{tmp_path.name}/two")
  sts = tmp_path / "sts" / STS.name  # its first 150 pairs: evaluation is checked, not measured
  sts.parent.mkdir()
  sts.write_text("\n".join(STS.read_text().splitlines()[:150]) + "\n")
  packed_eval = ["--config.eval.packing=True"] if evaluate else []  # the same scores as the one process's
  logs = launch_two_processes(launcher, run_args(task, tiny_dir, two, *packed_eval, evaluate=evaluate, sts=sts), two,
                              tmp_path / "logs", tmp_path)
  run(run_args(task, tiny_dir, tmp_path / "one", "--cpu_devices", "4", evaluate=evaluate, sts=sts))
  assert_same_metrics(metrics(two), metrics(tmp_path / "one"))
  if evaluate:
    rows = {r["step"]: r for r in metrics(two)}
    assert all(f"eval/stsb_test/n{n}_d{d}/spearman" in rows[step] for step in (2, 4) for n, d in ((1, 8), (4, 32)))
    assert not any(k.startswith("eval/") for k in rows[1])
    assert "packed encoding:" in (logs / "process_0.log").read_text()

  for i in (0, 1):
    log = (logs / f"process_{i}.log").read_text()
    assert f"joining a {'slurm' if launcher == 'slurm' else 'explicit'} cluster" in log
    assert f"process {i} of 2, 2 local and 4 global devices" in log
    assert "mesh {'data': 4, 'fsdp': 1} over 4 device(s) in 2 process(es)" in log
  # Process 0 alone exports (and writes metrics): one export, made from parameters gathered from both.
  assert f"exported step {STEPS}" in (logs / "process_0.log").read_text()
  assert "exported" not in (logs / "process_1.log").read_text()
  from safetensors.numpy import load, load_file
  a = load((two / "export" / "model.safetensors").read_bytes())
  b = load_file(tmp_path / "one" / "export" / "model.safetensors")
  from starbucks_jax.runtime import checkpoints
  shards = {n.split("/")[1] for n in storage.files_under(checkpoints.step_dir(two, STEPS)) if "ocdbt.process_" in n}
  assert shards == {"ocdbt.process_0", "ocdbt.process_1"}  # each process wrote its own
  assert a.keys() == b.keys()
  # Adam divides by sqrt(v): a gradient near zero whose last bits differ moves its weight by up to lr per
  # step, so a few weights may differ by ~1e-4 while the rest agree to float32 rounding.
  import numpy as np
  diffs = np.concatenate([np.abs(a[k] - b[k]).ravel() for k in a])
  assert diffs.max() < 3e-3 and np.mean(diffs < 1e-5) > 0.99, (diffs.max(), np.mean(diffs < 1e-5))


def test_two_processes_packing_their_own_rows_match_one_unpacked_process(tiny_dir, tmp_path):
  """Each process packs its own texts (`data.packing`), in two micro-batches (`grad_accum_steps`), into
  as few rows as they need (pack_rows 2 is always too few), the processes agree each step on the most rows
  any of them needs, and with dropout off the run logs what one unpacked process of four devices logs in
  the same two micro-batches. (Not preempted: the test above preempts a two-process run, and
  test_preemption.py a packed one.)"""
  no_dropout = ["--config.model.hidden_dropout=0.0", "--config.model.attention_dropout=0.0",
                "--config.grad_accum_steps=2"]
  two = tmp_path / "two"
  logs = launch_two_processes("local", run_args("srl", tiny_dir, two, "--config.data.packing=True",
                                                "--config.data.pack_rows=2", *no_dropout), two, tmp_path / "logs",
                              tmp_path, preempt=False)
  run(run_args("srl", tiny_dir, tmp_path / "one", "--cpu_devices", "4", *no_dropout))
  assert_same_metrics(metrics(two), metrics(tmp_path / "one"))
  for i in (0, 1):
    assert ("packing: 2 rows of 32 tokens per host and batch, for each of its 2 micro-batches or chunks"
            in (logs / f"process_{i}.log").read_text())


def test_fsdp_two_by_four_matches_data_parallel_on_eight_devices(tiny_dir, tmp_path):
  """SRL through the command line; SMAE under FSDP is compared with one device in test_sharding.py."""
  run(run_args("srl", tiny_dir, tmp_path / "fsdp", "--cpu_devices", "8", "--config.mesh.data=2",
               "--config.mesh.fsdp=4"))
  run(run_args("srl", tiny_dir, tmp_path / "dp", "--cpu_devices", "8", "--config.mesh.data=8"))
  assert_same_metrics(metrics(tmp_path / "fsdp"), metrics(tmp_path / "dp"))


def test_fsdp_rules_shard_kernels_and_embeddings():
  import jax
  import ml_collections
  from starbucks_jax.model import bert
  from starbucks_jax.model.bert import BertConfig
  from starbucks_jax.runtime import sharding
  config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=48, max_position_embeddings=64)
  params = jax.eval_shape(lambda: bert.init_params(config, jax.random.key(0), with_mlm_head=True))
  mesh = jax.sharding.AbstractMesh((1, 4), sharding.MESH_AXES)  # shapes only: no devices needed
  specs = {sharding.path_name(p): s.spec for p, s in
           jax.tree_util.tree_leaves_with_path(sharding.tree_shardings(params, mesh, bert.FAMILY.param_axes))}
  P = jax.sharding.PartitionSpec
  assert specs["encoder/embeddings/word_embeddings/embedding"] == P(None, "fsdp")
  assert specs["encoder/layer_0/attention/query/kernel"] == P("fsdp", None)
  assert specs["encoder/layer_0/attention/output/kernel"] == P(None, "fsdp")
  assert specs["encoder/layer_1/intermediate/kernel"] == P("fsdp", None)
  assert specs["encoder/layer_1/output/kernel"] == P(None, "fsdp")
  assert specs["mlm_head/transform/kernel"] == P("fsdp", None)
  assert specs["encoder/layer_0/attention/query/bias"] == P()  # small vectors stay whole
  assert specs["encoder/embeddings/token_type_embeddings/embedding"] == P(None, None)
  with pytest.raises(Exception, match="only one of mesh.data and mesh.fsdp"):
    sharding.mesh_shape(ml_collections.ConfigDict({"data": -1, "fsdp": -1}), 8)
  assert sharding.mesh_shape(ml_collections.ConfigDict({"data": -1, "fsdp": 4}), 8) == {"data": 2, "fsdp": 4}
  assert sharding.mesh_shape(ml_collections.ConfigDict({"data": 2, "fsdp": -1}), 8) == {"data": 2, "fsdp": 4}
  with pytest.raises(Exception, match="does not divide the 8 devices"):
    sharding.mesh_shape(ml_collections.ConfigDict({"data": -1, "fsdp": 3}), 8)


def dry_run_report(out) -> dict:
  units = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
  report = {}
  for line in out.stdout.splitlines():
    parts = line.split()
    if len(parts) >= 3 and parts[0] in ("parameters", "activations", "total") and parts[2] in units:
      report[parts[0]] = float(parts[1]) * units[parts[2]]
    if len(parts) >= 4 and parts[:2] == ["optimizer", "state"]:
      report["optimizer"] = float(parts[2]) * units[parts[3]]
  return report


def test_dry_run_compiles_for_the_mesh_and_reports_memory_per_device(tiny_dir, tmp_path):
  out = run(run_args("srl", tiny_dir, None, "--dry_run", "--cpu_devices", "8", "--config.mesh.fsdp=4"))
  assert "mesh data=2 x fsdp=4 on 8 cpu device(s)" in out.stdout, out.stdout
  report = dry_run_report(out)
  assert set(report) == {"parameters", "optimizer", "activations", "total"}, out.stdout
  # Kernels and embeddings hold nearly all the bytes; sharded 4 ways, a device keeps a little over a quarter.
  import jax
  from starbucks_jax.hf.load import load_pretrained
  whole = sum(x.size * 4 for x in jax.tree.leaves(load_pretrained(tiny_dir).params))
  assert 0.2 * whole < report["parameters"] < 0.35 * whole, (report, whole)
  assert 0.4 * whole < report["optimizer"] < 0.7 * whole  # two Adam moments
  assert report["activations"] > 0 and report["total"] > report["parameters"] + report["optimizer"]
  assert not any(tmp_path.iterdir())  # a dry run writes nothing
