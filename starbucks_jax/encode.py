"""`python -m starbucks_jax.encode`: the command lives in `starbucks_jax/cli/encode.py`."""

from starbucks_jax.cli.encode import run

if __name__ == "__main__":
  run()
