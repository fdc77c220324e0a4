"""`python -m starbucks_jax.check`: the command lives in `starbucks_jax/cli/check.py`."""

from starbucks_jax.cli.check import run

if __name__ == "__main__":
  run()
