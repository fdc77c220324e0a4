"""Check every row of a run's training data offline, before training on it.

    python -m starbucks_jax.check --config configs/quickstart.py [--config.data.source=gs://b/d/*.parquet ...]

Reads the config as `train` does (the same file and --config.KEY=VALUE overrides) and passes over every row
of each of its sources with training's rules (`data/full_check.py`): one line per source, the rows checked,
or the first bad row as one `error: FILE: row N, column C: ...` line and exit status 2. Training checks lazy
shards (Parquet, indexed JSON Lines, ArrayRecord) only as it reads them; this is the full pass for them (it
reads every byte of the needed columns once).
"""

from __future__ import annotations

import sys

from starbucks_jax.errors import run_cli

HELP = """usage: python -m starbucks_jax.check --config FILE[:ARG] [--config.KEY=VALUE ...]

Validates every row of the config's training data source(s), as training reads them, and prints the rows
checked per source; the first bad row is one error line naming its file and row (exit status 2).
"""


def data_sources(config) -> list[tuple[str, object]]:
  """(name, data config) of each source of a run: a mixture's each (`data/mixture_config.py`), else the one
  `data` block."""
  mixture = getattr(config.data, "mixture", ())
  if not mixture:
    return [("data", config.data)]
  from starbucks_jax.data.mixture_config import source_block
  return [(f"data.mixture.{source.name}", source_block(config.data, source)) for source in mixture]


def main(argv=None) -> list:
  argv = list(sys.argv[1:] if argv is None else argv)
  if "-h" in argv or "--help" in argv:
    print(HELP)
    raise SystemExit(0)
  from starbucks_jax.cli.train import parse_flags
  from starbucks_jax.data.full_check import check_source
  from starbucks_jax.training.tasks import read_config
  config_dict, _, _ = parse_flags(argv, workdir_required=False)
  config = read_config(config_dict)
  reports = []
  for name, data_config in data_sources(config):
    report = check_source(data_config)
    read = "" if report.bytes_read is None else f", {report.bytes_read} bytes read"
    print(f"{name}: {report.source}: {report.rows} {report.kind} rows checked, none bad{read}")
    reports.append(report)
  return reports


def run() -> None:
  """The `starbucks-check` console script."""
  run_cli(main)
