"""GradCache on a mesh: the cached step's loss, metrics and gradients equal the plain step's on 8
simulated devices (data=2 x fsdp=4, negatives from the whole batch across devices) and in two real
processes of two devices each (gloo, launch/local_cpu.sh). Each runs the probe
(tests/training/grad_cache_probe.py) in its own processes. The mesh runs take the two cases that differ
in what crosses devices (one length, scores KL; two lengths chunked apart, remat); every schedule is
checked against the plain step on one device (tests/training/test_grad_cache.py), where a schedule
differs only in its loss."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

PROBE = REPO / "tests" / "training" / "grad_cache_probe.py"
TOLERANCE = 1e-5


def probe_results(command, **env) -> dict:
  environment = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  # launch/local_cpu.sh runs `python` from the PATH: this interpreter's first (an unactivated virtual environment)
  environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
  out = subprocess.run(command, env=dict(environment, **env), capture_output=True, text=True, timeout=900, cwd=REPO)
  assert out.returncode == 0, out.stderr[-4000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def assert_exact(results: dict, cases) -> None:
  assert sorted(results["cases"]) == sorted(cases)
  for case, r in results["cases"].items():
    assert r["loss_diff"] < TOLERANCE and r["metric_diff"] < TOLERANCE, (case, r)
    assert r["grad_diff"] < TOLERANCE and r["grad_norm_diff"] < TOLERANCE, (case, r)


def test_cached_step_equals_the_plain_step_on_eight_devices_data_2_fsdp_4():
  from tests.training.test_grad_cache import MESH_CASES
  cases = list(MESH_CASES)
  results = probe_results([sys.executable, str(PROBE), "2", "4", *cases], JAX_PLATFORMS="cpu",
                          XLA_FLAGS="--xla_force_host_platform_device_count=8")
  assert results["devices"] == 8 and results["processes"] == 1
  assert_exact(results, cases)


def test_cached_step_equals_the_plain_step_in_two_processes():
  cases = ["starbucks-scores-kl"]  # the other schedules differ only in the loss, checked on 8 devices
  results = probe_results(["bash", str(REPO / "launch" / "local_cpu.sh"), "2", "2", sys.executable, str(PROBE),
                           "2", "2", *cases])
  assert results["devices"] == 4 and results["processes"] == 2
  assert_exact(results, cases)
