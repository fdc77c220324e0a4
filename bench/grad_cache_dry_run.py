"""What GradCache saves at the paper's MS MARCO shape, compiled ahead of time: the `--dry_run` of
configs/srl_msmarco_bert_base.py (BERT-base, bf16, remat, 32 / 196 tokens, 8 passages per query) at a
batch of --queries queries, with GradCache in chunks of --chunk queries (and their passages) and without.

    python bench/grad_cache_dry_run.py [--queries 1024] [--chunk 32] [--cpu-devices 1]

Nothing runs and nothing is downloaded: the model is a random BERT-base saved once under the temporary
directory (the uncased vocabulary of the packaged MiniLM), and the data a Tevatron file of synthetic
groups written beside it (a dry run reads one batch, padded to the maximum lengths). The figures are
XLA's for the backend at hand (the CPU's here: its temporaries, not an accelerator's).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parents[1]


def synthetic_groups(path: str, queries: int, group: int) -> str:
  words = "the of a passage query retrieval model training batch memory chunk vector".split()
  with open(path, "w") as f:
    for i in range(queries):
      text = lambda n: " ".join(words[(i + k) % len(words)] for k in range(n))
      passages = [{"docid": f"{i}-{k}", "title": "", "text": text(300)} for k in range(group)]
      f.write(json.dumps({"query_id": str(i), "query": text(40), "positive_passages": passages[:1],
                          "negative_passages": passages[1:]}) + "\n")
  return path


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--queries", type=int, default=1024)
  p.add_argument("--chunk", type=int, default=32)
  p.add_argument("--cpu-devices", type=int, default=1)
  args = p.parse_args()
  import torch_peers
  from starbucks_jax.cli.train import main as train_main
  from starbucks_jax.hf import load
  folder = torch_peers.random_bert_folder(tokenizer_dir=load.default_model_dir())
  data = synthetic_groups(os.path.join(tempfile.gettempdir(), "starbucks_bench_groups.jsonl"), args.queries, 8)
  print(f"BERT-base, bf16, remat, {args.queries} queries x 8 passages, 32 / 196 tokens; GradCache chunks of "
        f"{args.chunk} queries ({args.chunk * 8} passages)", flush=True)
  train_main(["--config", str(REPO / "configs" / "srl_msmarco_bert_base.py"), "--dry_run",
              "--cpu_devices", str(args.cpu_devices), f"--config.model.name={folder}",
              f"--config.data.source={data}", f"--config.batch_size={args.queries}",
              f"--config.grad_cache.query_chunk={args.chunk}", "--config.progress_bar=False"])


if __name__ == "__main__":
  main()
