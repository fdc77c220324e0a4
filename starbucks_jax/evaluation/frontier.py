"""The cost-quality frontier: which (layer, dim, precision) sizes are worth deploying.

Every evaluated size is a point: its quality on a data set (the evaluator's first metric, in points:
STS Spearman x100, BEIR nDCG@10 x100) against its cost (`cost.py`): encoding time per 1000 texts
(set by the layer count) and bytes per vector (set by dim and precision). A point is on a frontier when
no other point is at least as cheap and strictly better. The report answers "the smallest size within X
points of the full model" twice: the cheapest to encode (float32 vectors) and the smallest vector (any
precision).
"""

from __future__ import annotations

import dataclasses
import json

from starbucks_jax import storage
from starbucks_jax.evaluation.evaluator import precision_metric
from starbucks_jax.evaluation.quantize import PRECISIONS
from starbucks_jax.evaluation.registry import EVALUATORS
from starbucks_jax.pairs import parse_result_key
from starbucks_jax.runtime.outputs import write_file

WITHIN_POINTS = (0.5, 1.0, 2.0, 5.0)
MARKERS = {"float32": "o", "int8": "s", "binary": "^"}


@dataclasses.dataclass(frozen=True)
class SizePoint:
  layer: int
  dim: int
  precision: str
  quality: float  # points
  ms_per_1k_texts: float
  gflops_per_text: float
  bytes_per_vector: int
  search_ms_per_query: float

  @property
  def label(self) -> str:
    return f"({self.layer},{self.dim})" + ("" if self.precision == "float32" else f" {self.precision}")


def points_of(by_pair: dict, metric: str, scale: float, costs: dict) -> list[SizePoint]:
  """The points of one data set's results ({"n,d": metrics}) with the sizes' costs."""
  points = []
  for key, metrics in by_pair.items():
    layer, dim = parse_result_key(key)
    encoding = _at(costs["encoding"], layer)
    for precision in PRECISIONS:
      value = metrics.get(precision_metric(metric, precision))
      if value is None:
        continue
      points.append(SizePoint(layer, dim, precision, scale * value, encoding["ms_per_1k_texts"],
                              encoding["gflops_per_text"], _at(costs["bytes_per_vector"][precision], dim),
                              _at(costs["search_ms_per_query"], dim)))
  return points


def _at(by_size: dict, size: int):
  """by_size[size], whether its keys are ints (as measured) or strings (as read back from JSON)."""
  return by_size[size] if size in by_size else by_size[str(size)]


def pareto(points: list[SizePoint], cost) -> list[SizePoint]:
  """The points no other point beats: cheapest first, each better than every cheaper one."""
  frontier, best = [], float("-inf")
  for p in sorted(points, key=lambda p: (cost(p), -p.quality)):
    if p.quality > best:
      frontier.append(p)
      best = p.quality
  return frontier


def encode_cost(p: SizePoint) -> float:
  return p.ms_per_1k_texts


def vector_cost(p: SizePoint) -> float:
  return p.bytes_per_vector


def full_model(points: list[SizePoint]) -> SizePoint:
  """The reference: the largest float32 size evaluated (all layers and dims, when evaluated)."""
  return max((p for p in points if p.precision == "float32"), key=lambda p: (p.layer, p.dim))


def answers(points: list[SizePoint], within=WITHIN_POINTS) -> list[dict]:
  """For each X: the cheapest-to-encode float32 size and the smallest vector within X points of the full model."""
  full = full_model(points)
  rows = []
  for x in within:
    close = [p for p in points if p.quality >= full.quality - x]
    # Ties (one layer count, one byte size) go to the cheaper other cost, then to the better quality.
    encode = min((p for p in close if p.precision == "float32"),
                 key=lambda p: (encode_cost(p), vector_cost(p), -p.quality))
    vector = min(close, key=lambda p: (vector_cost(p), encode_cost(p), -p.quality))
    rows.append({"within_points": x, "cheapest_to_encode": encode.label, "smallest_vector": vector.label,
                 "encode": dataclasses.asdict(encode), "vector": dataclasses.asdict(vector)})
  return rows


def frontiers(results: dict, costs: dict) -> dict:
  """{data set: {"metric", "full", "points", "encode_frontier", "vector_frontier", "answers"}}."""
  report = {}
  for kind, evaluator in EVALUATORS.items():
    for name, by_pair in results.get(kind, {}).items():
      points = points_of(by_pair, evaluator.metrics[0], evaluator.points_scale, costs)
      report[name] = {
          "metric": evaluator.metrics[0], "full": full_model(points).label,
          "points": [dataclasses.asdict(p) for p in points],
          "encode_frontier": [p.label for p in pareto([p for p in points if p.precision == "float32"], encode_cost)],
          "vector_frontier": [p.label for p in pareto(points, vector_cost)],
          "answers": answers(points),
      }
  return report


def markdown(report: dict, costs: dict) -> str:
  """One table per data set (every size, its quality and costs, frontier membership), then the answers."""
  options = costs["options"]
  lines = [f"Costs on {costs['device']}: encoding {options['batch_size']} texts of {options['length']} tokens "
           f"a batch; exact search of {options['search_queries']} queries over {options['search_corpus']} vectors.",
           "", "| layers | texts / s | ms / 1k texts | GFLOPs / text | time vs deepest | FLOPs vs deepest |",
           "|---:|---:|---:|---:|---:|---:|"]
  encoding = {int(n): c for n, c in costs["encoding"].items()}
  deepest = encoding[max(encoding)]
  for n, c in sorted(encoding.items()):
    lines.append(f"| {n} | {c['texts_per_sec']:.1f} | {c['ms_per_1k_texts']:.1f} | {c['gflops_per_text']:.3f} | "
                 f"{c['ms_per_1k_texts'] / deepest['ms_per_1k_texts']:.2f} | "
                 f"{c['gflops_per_text'] / deepest['gflops_per_text']:.2f} |")
  for name, data in report.items():
    full = next(p for p in data["points"] if _label(p) == data["full"])
    lines += ["", f"### {name}: {data['metric']} (points; full model {data['full']} = {full['quality']:.2f})", "",
              "| size | quality | vs full | ms / 1k texts | GFLOPs / text | bytes / vector | search ms / query "
              "| frontier |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for p in sorted(data["points"], key=lambda p: (p["layer"], p["dim"], PRECISIONS.index(p["precision"]))):
      on = [what for what, members in (("encode", data["encode_frontier"]), ("bytes", data["vector_frontier"]))
            if _label(p) in members]
      lines.append(f"| {_label(p)} | {p['quality']:.2f} | {p['quality'] - full['quality']:+.2f} | "
                   f"{p['ms_per_1k_texts']:.1f} | {p['gflops_per_text']:.3f} | {p['bytes_per_vector']} | "
                   f"{p['search_ms_per_query']:.3f} | {', '.join(on)} |")
    lines.append("")
    for a in data["answers"]:
      lines.append(f"- within {a['within_points']:g} points of the full model: cheapest to encode "
                   f"{a['cheapest_to_encode']} ({a['encode']['ms_per_1k_texts']:.1f} ms / 1k texts), smallest "
                   f"vector {a['smallest_vector']} ({a['vector']['bytes_per_vector']} bytes)")
  return "\n".join(lines) + "\n"


def _label(point: dict) -> str:
  return SizePoint(**point).label


def write_plots(report: dict, output) -> list:
  """`<output stem>_frontier_<data set>.png`: quality against encoding time and against bytes per vector,
  every size a point, each frontier drawn and named."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  output = storage.as_path(output)
  written = []
  for name, data in report.items():
    points = [SizePoint(**p) for p in data["points"]]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    panels = ((axes[0], encode_cost, [p for p in points if p.precision == "float32"], data["encode_frontier"],
               "encoding time (ms per 1000 texts, this device)"),
              (axes[1], vector_cost, points, data["vector_frontier"], "bytes per vector (log scale)"))
    for ax, cost, shown, members, xlabel in panels:
      for precision in PRECISIONS:
        group = [p for p in shown if p.precision == precision]
        if group:
          ax.scatter([cost(p) for p in group], [p.quality for p in group], marker=MARKERS[precision], s=36,
                     alpha=0.75, label=f"{precision} vectors")
      line = [p for p in shown if p.label in members]
      line.sort(key=cost)
      ax.step([cost(p) for p in line], [p.quality for p in line], where="post", color="crimson", linewidth=1.6,
              label="Pareto frontier")
      for i, p in enumerate(line):  # labels alternately below and above their points, so neighbours do not collide
        ax.annotate(p.label, (cost(p), p.quality), textcoords="offset points", xytext=(5, -11 if i % 2 else 5),
                    fontsize=8)
      ax.set_xlabel(xlabel)
      ax.set_ylabel(f"{data['metric']} (points)")
      ax.grid(alpha=0.3)
      ax.legend(loc="lower right", fontsize=9)
    axes[1].set_xscale("log", base=2)
    fig.suptitle(f"{name}: quality against cost at every size (full model {data['full']})")
    fig.tight_layout()
    path = output.with_name(f"{output.stem}_frontier_{name}.png")
    write_file(path, lambda f: fig.savefig(f, format="png", dpi=110), "a frontier plot")
    plt.close(fig)
    written.append(path)
  return written


def write_report(report: dict, costs: dict, output) -> list:
  """`<stem>_frontier.json` (costs, points, frontiers, answers), `<stem>_frontier.md` and the plots."""
  output = storage.as_path(output)
  json_path = output.with_name(f"{output.stem}_frontier.json")
  text = json.dumps({"costs": costs, "data_sets": report}, indent=2) + "\n"
  write_file(json_path, lambda f: f.write(text.encode()), "the frontier")
  md_path = output.with_name(f"{output.stem}_frontier.md")
  table = markdown(report, costs)
  write_file(md_path, lambda f: f.write(table.encode()), "the frontier table")
  return [json_path, md_path] + write_plots(report, output)
