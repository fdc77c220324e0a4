"""How many in-batch false negatives a training batch has, before and after `data.clean_negatives`.

    PYTHONPATH=. python bench/in_batch_false_negatives.py [--batches N]

For the shipped SNLI triplets (the quickstart: 32 triplets a batch) and the SciFact training groups
(`configs/srl_scifact_minilm.py`: 16 queries, train_group_size 8, groups filled with other queries'
positives), over the first N batches of the seed-0 order (default: one epoch): a false negative is a
(query, candidate passage) of the batch's [B, B*G] score matrix whose passage is not the query's own
positive but has the text of a positive of the query's text: the positive it trains with, any other
positive its row lists (Tevatron's `positive_passages`), or those of another example with the same query
text. "before" counts them from the texts, one by one, in Python ("positive_text": those with the text of
a positive a group trains with, all the mask saw before it read the labelled positives); "masked" is what
the loss masks, from the ids the data give with `clean_negatives=True` (`losses/negatives.py` on
`query_text_ids`, `passage_text_ids` and `labelled_positive_ids`); "after" is before minus masked where
both agree on the entries (0 when the mask catches every one). For SciFact, "other_labelled_positives"
counts the candidates that are another of the query's labelled positives (a claim citing several abstracts
trains with one a group) left unmasked: "before" by the mask of the batch without its
`labelled_positive_ids` (what the mask was before it read them), "after" by the mask of the whole batch.
Prints one JSON line per set.

Measured (one epoch each, 17 s on 2 shared CPU cores; BENCHMARKS.md, "In-batch false negatives"): SNLI 2
false negatives in 183 batches, 2 masked, 0 after. SciFact (labelled_width 5) 261 in 50 batches, 261
masked, 0 after: 243 with the text of a positive a group trains with, and 18 other labelled positives
(mean 0.36 a batch, max 3, in 13 batches), which the mask missed before it read each row's labelled
positives and now catches: 18 before, 0 after.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np

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


def false_negatives_of_texts(queries: list[str], passages: list[str], group: int,
                             labelled: list[list[str]] | None = None) -> set[tuple[int, int]]:
  """The definition, entry by entry, on the texts themselves (`labelled`: each query's labelled positives;
  None: the positive it trains with alone, the definition before labelled positives were masked)."""
  positives = {}
  for k, query in enumerate(queries):
    positives.setdefault(query, set()).update([passages[k * group]] + (labelled[k] if labelled else []))
  return {(i, j) for i, query in enumerate(queries) for j, passage in enumerate(passages)
          if j != i * group and passage in positives[query]}


def other_labelled_positives(passages: list[str], labelled: list[list[str]], group: int) -> set[tuple[int, int]]:
  """Candidates that are one of the query's labelled positives other than the one its group trains with."""
  return {(i, j) for i, texts in enumerate(labelled) for j, passage in enumerate(passages)
          if passage in set(texts) - {passages[i * group]}}


def masked_entries(batch: dict, group: int) -> set[tuple[int, int]]:
  """The (query, candidate) entries the loss masks in `batch`."""
  mask = np.asarray(SrlBatch.of({k: jnp.asarray(v) for k, v in batch.items()}).false_negatives(group))
  return set(zip(*map(lambda a: a.tolist(), np.nonzero(mask))))


def stats(xs: list[int]) -> dict:
  return {"mean": round(float(np.mean(xs)), 3), "max": int(np.max(xs)), "total": int(np.sum(xs)),
          "batches_with_any": int(np.sum(np.asarray(xs) > 0))}


def count(name: str, batches: int | None, tokenizer) -> dict:
  source, batch_size, fields = SETS[name]
  data = TrainData(DataConfig(source=str(source), clean_negatives=True, **fields), tokenizer,
                   global_batch_size=batch_size, seed=0)
  group, steps = data.group_size, min(batches or data.steps_per_epoch, data.steps_per_epoch)
  counts = {key: [] for key in ("positive_text", "before", "masked", "after", "labelled_before", "labelled_after")}
  for step in range(steps):
    queries, passages, _, labelled = data._texts(step)  # pylint: disable=protected-access
    expected = false_negatives_of_texts(queries, passages, group, labelled)
    batch = data.batch(step)
    found = masked_entries(batch, group)
    unlabelled = masked_entries({k: v for k, v in batch.items() if k != "labelled_positive_ids"}, group)
    others = other_labelled_positives(passages, labelled, group)
    for key, value in (("positive_text", false_negatives_of_texts(queries, passages, group)), ("before", expected),
                       ("masked", found), ("after", expected - found), ("labelled_before", others - unlabelled),
                       ("labelled_after", others - found)):
      counts[key].append(len(value))
  assert counts["masked"] == counts["before"], "the mask differs from the definition"
  out = {"set": name, "batches": steps, "batch_size": batch_size, "group_size": group,
         "candidates_per_batch": batch_size * batch_size * group, "labelled_width": data.labelled_width}
  out.update({key: stats(value) for key, value in counts.items() if not key.startswith("labelled")})
  if data.schema.passages:
    out["other_labelled_positives"] = {"before": stats(counts["labelled_before"]),
                                       "after": stats(counts["labelled_after"])}
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
