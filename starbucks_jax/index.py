"""`python -m starbucks_jax.index`: the command lives in `starbucks_jax/cli/index.py`."""

from starbucks_jax.cli.index import run

if __name__ == "__main__":
  run()
