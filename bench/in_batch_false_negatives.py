"""How many in-batch false negatives a training batch has, before and after `data.clean_negatives`.

    PYTHONPATH=. python bench/in_batch_false_negatives.py [--batches N]

For the shipped SNLI triplets (the quickstart: 32 triplets a batch) and the SciFact training groups
(`configs/srl_scifact_minilm.py`: 16 queries, train_group_size 8, groups filled with other queries'
positives), over the first N batches of the seed-0 order (default: one epoch): a false negative is a
(query, candidate passage) of the batch's [B, B*G] score matrix whose passage is not the query's own
positive but has the text of a positive of the query's text (its own positive's text, or the positive of
another example with the same query text). "before" counts them from the texts, one by one, in Python;
"masked" is what the loss masks, from the ids the data gives with `clean_negatives=True` (`losses/
negatives.py` on `query_text_ids` / `passage_text_ids`); "after" is before minus masked where both agree
on the entries (0 when the mask catches every one). For SciFact it also counts the candidates that are
another of the query's labelled positives (a claim citing several abstracts trains with one a group): the
mask does not see those (the batch knows only the positive it trains with). Prints one JSON line per set.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from starbucks_jax.data.checks import as_passages
from starbucks_jax.data.srl import DataConfig, TrainData
from starbucks_jax.hf.load import default_model_dir, load_tokenizer
from starbucks_jax.losses.batch import SrlBatch

REPO = Path(__file__).resolve().parent.parent
SHARED = Path("/work/shared/data")
SETS = {  # name: (source, batch size, DataConfig fields)
    "snli": (REPO / "data" / "quickstart" / "snli_triplets.jsonl", 32, dict(query_max_length=32, passage_max_length=32)),
    "scifact": (SHARED / "retrieval" / "scifact-train.jsonl", 16,
                dict(train_group_size=8, query_max_length=64, passage_max_length=128)),
}


def false_negatives_of_texts(queries: list[str], passages: list[str], group: int) -> set[tuple[int, int]]:
  """The definition, entry by entry, on the texts themselves."""
  positives = {}
  for k, query in enumerate(queries):
    positives.setdefault(query, set()).add(passages[k * group])
  return {(i, j) for i, query in enumerate(queries) for j, passage in enumerate(passages)
          if j != i * group and passage in positives[query]}


def other_labelled_positives(data: TrainData, step: int, passages: list[str], group: int) -> int:
  """Candidates that are one of the query's labelled positives other than the one its group trains with."""
  rows = data.host_rows(data.example_indices(step))
  labelled = data.table.read(rows, [data.schema.positive])[data.schema.positive]
  count = 0
  for i, own in enumerate(labelled):
    texts = {data._passage_text(p) for p in as_passages(own)} - {passages[i * group]}
    count += sum(passage in texts for passage in passages)
  return count


def count(name: str, batches: int | None, tokenizer) -> dict:
  source, batch_size, fields = SETS[name]
  data = TrainData(DataConfig(source=str(source), clean_negatives=True, **fields), tokenizer,
                   global_batch_size=batch_size, seed=0)
  group, steps = data.group_size, min(batches or data.steps_per_epoch, data.steps_per_epoch)
  before, masked, after, unlabelled = [], [], [], []
  for step in range(steps):
    queries, passages, _ = data.texts(step)
    expected = false_negatives_of_texts(queries, passages, group)
    mask = np.asarray(SrlBatch.of({k: jnp.asarray(v) for k, v in data.batch(step).items()}).false_negatives(group))
    found = set(zip(*map(lambda a: a.tolist(), np.nonzero(mask))))
    before.append(len(expected))
    masked.append(len(found))
    after.append(len(expected - found))
    if data.schema.passages:
      unlabelled.append(other_labelled_positives(data, step, passages, group))
  assert masked == before, "the mask differs from the definition"
  stats = lambda xs: {"mean": round(float(np.mean(xs)), 3), "max": int(np.max(xs)), "total": int(np.sum(xs)),
                      "batches_with_any": int(np.sum(np.asarray(xs) > 0))}
  out = {"set": name, "batches": steps, "batch_size": batch_size, "group_size": group,
         "candidates_per_batch": batch_size * batch_size * group, "before": stats(before), "masked": stats(masked),
         "after": stats(after)}
  if unlabelled:
    out["other_labelled_positives_unmasked"] = stats(unlabelled)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", type=int, default=None, help="batches per set (default: one epoch)")
  parser.add_argument("--sets", default=",".join(SETS))
  args = parser.parse_args()
  tokenizer = load_tokenizer(default_model_dir())
  for name in args.sets.split(","):
    print(json.dumps(count(name, args.batches, tokenizer)), flush=True)


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  main()
