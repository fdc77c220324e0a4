"""Evaluation reports: the results file, the markdown table, one heatmap per data set, and the flat
metric names a training run logs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from starbucks_jax import storage
from starbucks_jax.evaluation.registry import EVALUATORS
from starbucks_jax.pairs import metric_name, parse_result_key
from starbucks_jax.runtime.outputs import write_file


def flatten_for_metrics(results: dict) -> dict[str, float]:
  """{"eval/{data set}/n{n}_d{d}/{metric}": value}, for a training run's metrics log."""
  flat = {}
  for kind in EVALUATORS:
    for name, by_pair in results.get(kind, {}).items():
      for key, metrics in by_pair.items():
        for metric, value in metrics.items():
          flat[f"{metric_name(f'eval/{name}', parse_result_key(key))}/{metric}"] = float(value)
  return flat


def markdown_table(results: dict) -> str:
  """Rows "data set / metric", columns the pairs; each evaluator's metrics with its own decimals (STS x100
  with 2, BEIR 0..1 with 4), then those of each quantized precision ("spearman/int8")."""
  rows, keys = [], []
  for kind, evaluator in EVALUATORS.items():
    for name, by_pair in results.get(kind, {}).items():
      keys += [k for k in by_pair if k not in keys]
      present = list(dict.fromkeys(m for metrics in by_pair.values() for m in metrics))
      for metric in [m for m in present if m.split("/")[0] in evaluator.metrics]:
        rows.append((f"{name} / {metric}", {k: f"{m[metric]:.{evaluator.digits}f}" for k, m in by_pair.items()
                                            if metric in m}))
  lines = ["| data set / metric | " + " | ".join(f"({k})" for k in keys) + " |",
           "|---|" + "---:|" * len(keys)]
  lines += [f"| {label} | " + " | ".join(cells.get(k, "") for k in keys) + " |" for label, cells in rows]
  return "\n".join(lines)


def write_heatmaps(results: dict, output, num_layers: int) -> list:
  """One PNG per data set (its evaluator's first metric: STS spearman, BEIR ndcg@10) over layers
  1..num_layers x the dims evaluated; pairs not evaluated stay blank. Written as
  `<output stem>_<data set>.png` beside `output`."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  output = storage.as_path(output)
  written = []
  for kind, evaluator in EVALUATORS.items():
    metric, fmt = evaluator.metrics[0], f"{{:.{max(evaluator.digits - 1, 0)}f}}"
    for name, by_pair in results.get(kind, {}).items():
      pairs = {parse_result_key(key): m[metric] for key, m in by_pair.items()}
      dims = sorted({d for _, d in pairs})
      grid = np.full((num_layers, len(dims)), np.nan)
      for (layer, dim), value in pairs.items():
        grid[layer - 1, dims.index(dim)] = value
      fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(dims), 1.0 + 0.5 * num_layers))
      image = ax.imshow(np.ma.masked_invalid(grid), origin="lower", aspect="auto",
                        cmap=matplotlib.colormaps["viridis"].with_extremes(bad="white"))
      for (layer, dim), value in pairs.items():
        if np.isfinite(value):
          ax.text(dims.index(dim), layer - 1, fmt.format(value), ha="center", va="center", fontsize=8,
                  color="white" if value < np.nanmean(grid) else "black")
      ax.set_xticks(range(len(dims)), [str(d) for d in dims])
      ax.set_yticks(range(num_layers), [str(n) for n in range(1, num_layers + 1)])
      ax.set_xlabel("dim")
      ax.set_ylabel("layer")
      ax.set_title(f"{name}: {metric}")
      fig.colorbar(image, ax=ax)
      fig.tight_layout()
      path = output.with_name(f"{output.stem}_{name}.png")
      write_file(path, lambda f: fig.savefig(f, format="png", dpi=100), "a heatmap")
      plt.close(fig)
      written.append(path)
  return written


def write_results(results: dict, output: str | Path) -> None:
  """results.json, written whole or not at all; a NaN (a constant similarity has no correlation) becomes null."""
  clean = lambda x: {k: clean(v) for k, v in x.items()} if isinstance(x, dict) else (
      x if math.isfinite(x) else None)
  text = json.dumps(clean(results), indent=2) + "\n"
  write_file(output, lambda f: f.write(text.encode()), "the results")


# --- The command line. ---
