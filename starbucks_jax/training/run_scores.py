"""A run's evaluation scores per (layer, dim) size, read back from its metrics.jsonl, and what the end of a
run tells the user: every size's scores, where the export and the logs are, and the commands to run next.

    scores = run_scores(workdir, step)          # {"stsb_test/spearman": {(1, 16): 52.44, ...}, ...}
    print(size_table(scores, pairs))            # markdown: a row per size, a column per data set / metric
    print(run_summary(summary, workdir, pairs))

The scores are the rows metrics.jsonl holds (`eval/<data set>/n{n}_d{d}/<metric>`, `training/evaluation.py`),
so an export made later from the workdir (`python -m starbucks_jax.export --workdir ...`) reports the same
figures the run printed.
"""

from __future__ import annotations

import json
import re

from starbucks_jax import storage
from starbucks_jax.evaluation.registry import EVALUATORS
from starbucks_jax.runtime.metrics import TENSORBOARD_DIR

METRICS_FILE = "metrics.jsonl"
_EVAL_KEY = re.compile(r"eval/(.+?)/n(\d+)_d(\d+)/(.+)")


def run_scores(workdir, step: int | None = None) -> dict[str, dict[tuple[int, int], float]]:
  """{"<data set>/<metric>": {(layer, dim): value}} of the newest evaluation at or before `step` (None:
  the newest) in `workdir/metrics.jsonl`; {} when the run evaluated nothing by then."""
  path = storage.as_path(workdir) / METRICS_FILE
  if not path.is_file():
    return {}
  newest: dict = {}
  for line in path.read_text().splitlines():
    row = json.loads(line) if line.strip() else {}
    if any(key.startswith("eval/") for key in row) and (step is None or row.get("step", 0) <= step):
      newest = row
  scores: dict[str, dict[tuple[int, int], float]] = {}
  for key, value in newest.items():
    match = _EVAL_KEY.fullmatch(key)
    if match:
      name, layer, dim, metric = match.groups()
      scores.setdefault(f"{name}/{metric}", {})[(int(layer), int(dim))] = float(value)
  return scores


def evaluated_step(workdir, step: int | None = None) -> int | None:
  """The step of the evaluation `run_scores` reads, or None."""
  path = storage.as_path(workdir) / METRICS_FILE
  steps = [json.loads(line).get("step") for line in path.read_text().splitlines()
           if '"eval/' in line] if path.is_file() else []
  steps = [s for s in steps if step is None or s <= step]
  return steps[-1] if steps else None


def main_metrics(scores: dict) -> dict:
  """Each data set's first metric in its evaluator's order (STS: spearman; BEIR: ndcg@10)."""
  first = {}
  for column in scores:
    name, metric = column.split("/", 1)
    rank = _metric_rank(metric)
    if name not in first or rank < first[name][0]:
      first[name] = (rank, column)
  return {column: scores[column] for _, column in first.values()}


def _metric_rank(metric: str) -> int:
  order = [m for evaluator in EVALUATORS.values() for m in evaluator.metrics]
  return order.index(metric) if metric in order else len(order)


def _digits(metric: str) -> int:
  base = metric.split("/")[0]
  return next((e.digits for e in EVALUATORS.values() if base in e.metrics), 4)


def size_table(scores: dict, pairs) -> str:
  """A markdown table: a row per size (`pairs`, in order), a column per "<data set>/<metric>"."""
  columns = list(scores)
  lines = ["| size (layer, dim) | " + " | ".join(c.replace("/", " ") for c in columns) + " |",
           "|---|" + "---:|" * len(columns)]
  for pair in pairs:
    cells = [f"{scores[c][tuple(pair)]:.{_digits(c.split('/', 1)[1])}f}" if tuple(pair) in scores[c] else ""
             for c in columns]
    lines.append(f"| ({pair[0]}, {pair[1]}) | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def run_summary(summary: dict, workdir, pairs) -> str:
  """The block the train command prints at the end of a finished run."""
  workdir = str(workdir).rstrip("/")
  pairs = [tuple(p) for p in pairs]
  scores = main_metrics(run_scores(workdir, summary["step"]))
  lines = [f"Finished: {summary['step']} steps in {workdir}."]
  if scores:
    lines += ["", "Scores at every trained size (the evaluation at the end):", size_table(scores, pairs)]
  else:
    lines += ["", "No evaluation ran (set eval.sts or eval.beir to score every size at the end)."]
  lines += ["", f"Metrics:      {workdir}/{METRICS_FILE}",
            f"TensorBoard:  tensorboard --logdir {workdir}/{TENSORBOARD_DIR}"]
  if summary.get("export"):
    lines.append(f"Export:       {summary['export']}  (sentence-transformers folder; model card: README.md)")
  layer, dim = pairs[(len(pairs) - 1) // 2] if pairs else (1, 16)
  lines += ["", "Next:",
            f"  # encode at size ({layer}, {dim}): one text per line in, a [texts, {dim}] .npy out",
            f"  python -m starbucks_jax.encode --model {workdir} --layer {layer} --dim {dim} "
            f"--input texts.txt --output emb.npy",
            f"  # a standalone {layer}-layer model (the sizes at layer {layer}), with its own model card",
            f"  python -m starbucks_jax.export --workdir {workdir} --num-layers {layer} --output {workdir}_{layer}l",
            "  # every size against your own data",
            f"  python -m starbucks_jax.evaluate --model {workdir} --grid --sts FILE --output results.json"]
  return "\n".join(lines)
