"""Splits the 809 SciFact training queries into train and dev (seeded), for the hard-negative experiment.

    python bench/hard_negatives/split_scifact.py --out runs/scifact_split [--dev 109 --seed 0]

Writes OUT/train.jsonl (Tevatron groups, as in the source: no negatives) and OUT/dev/, a BEIR folder:
the whole SciFact corpus (5183 abstracts), the dev queries, and qrels/test.tsv from their positives.
"""

import argparse
import json
import os
import random
import shutil

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "retrieval")


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True)
  p.add_argument("--train", default=os.path.join(SHARED, "scifact-train.jsonl"))
  p.add_argument("--corpus", default=os.path.join(SHARED, "scifact-corpus.jsonl"))
  p.add_argument("--dev", type=int, default=109)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args()
  with open(args.train, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  order = list(range(len(rows)))
  random.Random(args.seed).shuffle(order)
  dev = sorted(order[:args.dev])
  train = sorted(order[args.dev:])
  os.makedirs(os.path.join(args.out, "dev", "qrels"), exist_ok=True)
  with open(os.path.join(args.out, "train.jsonl"), "w", encoding="utf-8") as f:
    f.writelines(json.dumps(rows[i], ensure_ascii=False) + "\n" for i in train)
  with open(os.path.join(args.out, "dev", "queries.jsonl"), "w", encoding="utf-8") as f:
    f.writelines(json.dumps({"_id": rows[i]["query_id"], "text": rows[i]["query"]}, ensure_ascii=False) + "\n"
                 for i in dev)
  with open(os.path.join(args.out, "dev", "qrels", "test.tsv"), "w", encoding="utf-8") as f:
    f.write("query-id\tcorpus-id\tscore\n")
    f.writelines(f"{rows[i]['query_id']}\t{p['docid']}\t1\n" for i in dev for p in rows[i]["positive_passages"])
  shutil.copyfile(args.corpus, os.path.join(args.out, "dev", "corpus.jsonl"))
  print(f"{len(train)} train and {len(dev)} dev queries (seed {args.seed}) in {args.out}")


if __name__ == "__main__":
  main()
