"""Where a process finds its cluster (explicit variables, SLURM, TPU), and the launch scripts' commands.
The multi-process runs themselves are in test_multihost.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from starbucks_jax.runtime.distributed import Cluster, cluster_from_env, first_host
from starbucks_jax.errors import StarbucksError

from tests.helpers import REPO


@pytest.mark.parametrize("nodelist, host", [("node7", "node7"), ("gpu-[007-009,12],cpu1", "gpu-007"),
                                            ("a[3,5]", "a3"), ("dgx[01-04]", "dgx01")])
def test_first_host_of_a_slurm_node_list(nodelist, host):
  assert first_host(nodelist) == host


def slurm(**changes):
  env = {"SLURM_JOB_ID": "123456", "SLURM_NTASKS": "16", "SLURM_PROCID": "9", "SLURM_LOCALID": "1",
         "SLURM_STEP_NODELIST": "dgx[03-04]", "SLURM_NTASKS_PER_NODE": "8"}
  env.update(changes)
  return {k: v for k, v in env.items() if v is not None}


def test_cluster_from_the_environment():
  assert cluster_from_env({}) in (None, Cluster("tpu"))  # a TPU VM is detected by libtpu
  explicit = {"STARBUCKS_COORDINATOR": "10.0.0.2:1234", "STARBUCKS_NUM_PROCESSES": "4", "STARBUCKS_PROCESS_ID": "3"}
  assert cluster_from_env(explicit) == Cluster("explicit", "10.0.0.2:1234", 4, 3, None)
  assert cluster_from_env(dict(explicit, STARBUCKS_LOCAL_DEVICE_IDS="2,3")).local_device_ids == (2, 3)
  # SLURM, one process per GPU: the task's local id picks its GPU; the port follows the job id.
  assert cluster_from_env(slurm()) == Cluster("slurm", "dgx03:15456", 16, 9, (1,))
  assert cluster_from_env(slurm(SLURM_JOB_ID="123457")).coordinator_address == "dgx03:15457"
  assert cluster_from_env(slurm(STARBUCKS_COORDINATOR_PORT="9999")).coordinator_address == "dgx03:9999"
  # One process per node, or SLURM already bound one GPU to the task: every visible GPU is the process's.
  assert cluster_from_env(slurm(SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="1")).local_device_ids is None
  assert cluster_from_env(slurm(CUDA_VISIBLE_DEVICES="5")).local_device_ids is None
  # srun's per-node counts may come as "8(x2)"; without them, tasks / nodes.
  assert cluster_from_env(slurm(SLURM_NTASKS_PER_NODE=None, SLURM_STEP_TASKS_PER_NODE="8(x2)")).local_device_ids == (1,)
  assert cluster_from_env(slurm(SLURM_NTASKS_PER_NODE=None, SLURM_NNODES="16")).local_device_ids is None
  # A single-task SLURM job (sbatch without srun) is a single process; so is anything switched off.
  assert cluster_from_env({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) in (None, Cluster("tpu"))
  assert cluster_from_env(dict(explicit, STARBUCKS_DISTRIBUTED="0")) is None
  assert cluster_from_env({"STARBUCKS_DISTRIBUTED": "auto"}) == Cluster("auto")


@pytest.mark.parametrize("env, message", [
    ({"STARBUCKS_COORDINATOR": "h:1", "STARBUCKS_NUM_PROCESSES": "2", "STARBUCKS_PROCESS_ID": "2"},
     "STARBUCKS_PROCESS_ID=2 is not in 0..1"),
    ({"STARBUCKS_COORDINATOR": "h:1", "STARBUCKS_NUM_PROCESSES": "two", "STARBUCKS_PROCESS_ID": "0"},
     "STARBUCKS_NUM_PROCESSES='two' must be an integer"),
    ({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "2", "SLURM_PROCID": "0"}, "no SLURM node list"),
])
def test_bad_cluster_variables_are_named(env, message):
  with pytest.raises(StarbucksError, match=message.replace("(", r"\(").replace(".", r"\.")):
    cluster_from_env(env)


def test_unreachable_coordinator_is_a_clear_error(tmp_path):
  """A process whose peers never come fails with the settings it used, not a hang or a traceback."""
  code = ("from starbucks_jax.errors import run_cli\nfrom starbucks_jax.runtime import distributed\n"
          "run_cli(lambda argv: distributed.initialize())")
  env = dict(os.environ, STARBUCKS_COORDINATOR="127.0.0.1:1", STARBUCKS_NUM_PROCESSES="2", STARBUCKS_PROCESS_ID="1",
             STARBUCKS_INIT_TIMEOUT="5", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2, out.stderr[-2000:]
  assert "the coordinator 127.0.0.1:1 (from the explicit environment) did not answer within 5 s" in out.stderr


def fake_gcloud(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  calls = tmp_path / "calls.jsonl"
  (bin_dir / "gcloud").write_text("#!/usr/bin/env python3\nimport json, sys\n"
                                  f"open({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
  (bin_dir / "gcloud").chmod(0o755)
  # The stand-in gcloud is `python3` from the PATH: this interpreter's folder first (an unactivated virtual environment)
  path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ.get("PATH", "")])
  return dict(os.environ, PATH=path, TPU_NAME="pod", ZONE="us-central2-b"), calls


def test_tpu_pod_script_runs_setup_and_train_on_every_worker(tmp_path):
  env, calls = fake_gcloud(tmp_path)
  script = str(REPO / "launch" / "tpu_pod.sh")
  out = subprocess.run(["bash", script, "train", "configs/srl_msmarco_bert_base.py", "/mnt/runs/a b",
                        "--config.mesh.fsdp=8"], env=env, capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  (call,) = [json.loads(line) for line in calls.read_text().splitlines()]
  assert call[:9] == ["compute", "tpus", "tpu-vm", "ssh", "pod", "--zone", "us-central2-b", "--worker=all",
                      "--command"]
  assert "python3 -m starbucks_jax.train --config configs/srl_msmarco_bert_base.py --workdir /mnt/runs/a\\ b " \
         "--config.mesh.fsdp=8" in call[9]
  calls.unlink()
  out = subprocess.run(["bash", script, "setup"], env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
  assert out.returncode == 0, out.stderr
  scp, ssh = [json.loads(line) for line in calls.read_text().splitlines()]
  assert scp[:4] == ["compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp and scp[-1] == "pod:~/starbucks_jax.tar.gz"
  assert "--worker=all" in ssh and "pip install --quiet -e . 'jax[tpu]'" in ssh[-1]
  out = subprocess.run(["bash", script, "train"], env=env, capture_output=True, text=True, timeout=60)
  assert out.returncode == 2 and "usage" in out.stderr


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "launch").iterdir() if p.suffix in (".sh", ".sbatch")))
def test_launch_scripts_parse(script):
  assert subprocess.run(["bash", "-n", str(REPO / "launch" / script)], capture_output=True).returncode == 0
