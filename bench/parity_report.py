"""Prints the max abs error of every layer's hidden states and pooled outputs against transformers' BertModel.

    python bench/parity_report.py [--model PATH]      # default: the packaged all-MiniLM-L6-v2

Float32, on a padded batch of STS-B sentences (or built-in sentences when ../shared/data is absent).
"""

import argparse
import json
from pathlib import Path

import jax
import numpy as np
import torch
import transformers

from starbucks_jax.hf.load import default_model_dir, load_pretrained
from starbucks_jax.model import bert


def sentences(n=32):
  path = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb" / "test.jsonl"
  if path.is_file():
    return [json.loads(line)["sentence1"] for line in path.read_text().splitlines()[:n]]
  return ["A man is playing a guitar.", "Short.", "Two dogs run through a field of tall green grass."]


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--model", default=None)
  args = p.parse_args()
  folder = args.model or default_model_dir()
  model = load_pretrained(folder)
  tok = transformers.AutoTokenizer.from_pretrained(str(model.model_dir))
  batch = tok(sentences(), padding=True, truncation=True, max_length=128, return_tensors="np")
  ids, mask = batch["input_ids"].astype(np.int32), batch["attention_mask"].astype(np.int32)
  ours = bert.apply(model.params, ids, mask, config=model.config)
  reference = transformers.BertModel.from_pretrained(str(model.model_dir)).eval()
  with torch.no_grad():
    hidden = reference(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long(),
                       output_hidden_states=True).hidden_states
  valid = mask.astype(bool)
  print(f"model {folder}\nbatch {ids.shape[0]} x {ids.shape[1]} tokens, {int((~valid).sum())} of them padding")
  print(f"{'layer':>5} {'hidden':>10} {'cls':>10} {'mean':>10}")
  for n, h in enumerate(hidden):
    h = h.numpy()
    m = mask[..., None]
    mean_ref = (h * m).sum(1) / m.sum(1)
    errs = (np.abs(np.asarray(ours.hidden_states[n]) - h)[valid].max(), np.abs(np.asarray(ours.cls[n]) - h[:, 0]).max(),
            np.abs(np.asarray(ours.mean[n]) - mean_ref).max())
    print(f"{n:>5} " + " ".join(f"{e:>10.2e}" for e in errs))
  print(f"jax {jax.__version__}, transformers {transformers.__version__}, torch {torch.__version__}")


if __name__ == "__main__":
  main()
