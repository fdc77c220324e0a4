"""User-facing errors and the command-line wrapper that prints them.

Anything a user can get wrong (a path, a config value, a (layer, dim) pair) raises `StarbucksError`
with a message that names the problem. Command-line entry points run through `run_cli`, which turns
such an error into one line on stderr and exit code 2, without a traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable, Sequence


class StarbucksError(Exception):
  """An error caused by the user's input, with a message that says what to fix."""


def run_cli(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> None:
  """Runs `main(argv)`; a StarbucksError becomes one line on stderr and exit status 2."""
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  logging.getLogger("starbucks_jax").setLevel(logging.INFO)
  try:
    main(argv)
  except StarbucksError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    print("error: interrupted", file=sys.stderr)
    sys.exit(130)
