"""Prints the hard-negative experiment's table: dev nDCG@10 at every pair for the untouched model and the
three runs, and the mining runs' wall times. Usage: python bench/hard_negatives/report.py OUT"""

import json
import os
import sys


def final_eval(workdir):
  """{"n,d": nDCG@10} from the last evaluation row of a run's metrics.jsonl."""
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8")]
  row = [r for r in rows if any(k.startswith("eval/") for k in r)][-1]
  out = {}
  for key, value in row.items():
    if key.startswith("eval/") and key.endswith("/ndcg@10"):
      layer, dim = key.split("/")[2][1:].split("_d")
      out[f"{layer},{dim}"] = value
  return out


def main(out):
  untouched = json.load(open(os.path.join(out, "untouched.json"), encoding="utf-8"))
  table = {"untouched MiniLM": {pair: m["ndcg@10"] for pair, m in untouched["beir"]["dev"].items()}}
  for name, label in (("in_batch", "(a) in-batch negatives only"), ("mined_6_384", "(b) + 7 mined at (6, 384)"),
                      ("mined_3_64", "(c) + 7 mined at (3, 64)")):
    table[label] = final_eval(os.path.join(out, name))
  pairs = sorted({p for row in table.values() for p in row}, key=lambda p: tuple(map(int, p.split(","))))
  print("| model | " + " | ".join(f"({p.replace(',', ', ')})" for p in pairs) + " |")
  print("|---|" + "---|" * len(pairs))
  for label, row in table.items():
    print(f"| {label} | " + " | ".join(f"{100 * row[p]:.2f}" if p in row else "-" for p in pairs) + " |")
  for size in ("6_384", "3_64"):
    path = os.path.join(out, "split", f"mined_{size}.summary.json")
    if os.path.exists(path):
      s = json.load(open(path, encoding="utf-8"))
      print(f"mining at ({size.replace('_', ', ')}): {s['seconds']['total']:.1f} s "
            f"({json.dumps(s['seconds'])}), {s['queries_with_fewer']} queries with fewer than "
            f"{s['negatives_asked']}; positive median {s['scores']['positives']['median']}, "
            f"negative median {s['scores']['negatives']['median']}")


if __name__ == "__main__":
  main(sys.argv[1])
