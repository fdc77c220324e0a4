"""`python -m starbucks_jax.export`: the command lives in `starbucks_jax/cli/export.py`."""

from starbucks_jax.cli.export import run

if __name__ == "__main__":
  run()
