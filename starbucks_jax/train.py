"""`python -m starbucks_jax.train`: the command lives in `starbucks_jax/cli/train.py`."""

from starbucks_jax.cli.train import run

if __name__ == "__main__":
  run()
