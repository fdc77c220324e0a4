#!/usr/bin/env bash
# Installs starbucks_jax with its test extras and runs the test suite (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check torch==2.13.0  # first: the CPU wheel, not CUDA
python -m pip install --quiet --disable-pip-version-check -e ".[test]"
python -m pytest -q tests "$@"
