"""`python -m starbucks_jax.mine`: the command lives in `starbucks_jax/cli/mine.py`."""

from starbucks_jax.cli.mine import run

if __name__ == "__main__":
  run()
