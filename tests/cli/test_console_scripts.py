"""The console scripts `pip install` puts beside the interpreter reach the same commands as `python -m`."""

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("command, expected", [
    ("train", "error: --config is required"),
    ("evaluate", "the following arguments are required: --output"),
    ("encode", "the following arguments are required: --input, --output"),
    ("export", "the following arguments are required: --output"),
    ("mine", "the following arguments are required: --train, --output"),
])
def test_console_script_runs_the_command(command, expected):
  script = Path(sys.executable).parent / f"starbucks-{command}"
  assert script.is_file(), f"{script} is missing: reinstall with pip install -e ."
  out = subprocess.run([str(script)], capture_output=True, text=True)
  assert out.returncode == 2 and expected in out.stderr, out.stderr[-2000:]
  module = subprocess.run([sys.executable, "-m", f"starbucks_jax.{command}"], capture_output=True, text=True)
  assert module.returncode == 2 and expected in module.stderr, module.stderr[-2000:]
