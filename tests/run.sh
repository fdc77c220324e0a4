#!/usr/bin/env bash
# Installs starbucks_jax with its test extras and runs the test suite (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check torch==2.13.0  # first: the CPU wheel, not CUDA
python -m pip install --quiet --disable-pip-version-check -e ".[test]"
# Two workers (the CI machine's cores); a test module runs on one worker, so its shared fixtures are made once.
python -m pytest -q -n "${PYTEST_WORKERS:-2}" --dist loadscope tests "$@"
