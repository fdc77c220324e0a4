"""`python -m starbucks_jax.evaluate`: the command lives in `starbucks_jax/cli/evaluate.py`."""

from starbucks_jax.cli.evaluate import run

if __name__ == "__main__":
  run()
