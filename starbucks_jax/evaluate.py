"""Evaluate one model at many (layer, dim) sizes on STS files and BEIR folders.

    python -m starbucks_jax.evaluate --model PATH --sts data/quickstart/stsb_test.jsonl \
        --beir data/beir/msmarco-dl19-slice --output runs/eval/results.json

PATH is a Hugging Face folder or a training workdir (its newest checkpoint, or --step N). Each text set
is encoded once, through every layer the pairs need; a pair's vector is its layer's pooled vector cut
to the first d coordinates. STS scores are Spearman and Pearson correlations (x100) of cosine
similarity with the gold scores. BEIR scores come from exact search over the whole corpus (in chunks
on the device) and ir_measures: nDCG@10, RR@10 ("mrr@10") and R@100 ("recall@100"), in 0..1.

Writes results.json (overwritten if it exists), prints a markdown table, and draws one heatmap per
data set over layers x dims next to it: `<output stem>_<data set>.png`.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from starbucks_jax.bert_config import BertConfig
from starbucks_jax.errors import StarbucksError, run_cli
from starbucks_jax.eval_data import BeirSet, StsSet, load_beir, load_sts

log = logging.getLogger(__name__)

RETRIEVAL_DEPTH = 100  # passages kept per query: enough for recall@100
SIMILARITIES = ("cosine", "dot")
STS_METRICS = ("spearman", "pearson")
BEIR_METRICS = ("ndcg@10", "mrr@10", "recall@100")

Pair = tuple[int, int]


# --- Which (layer, dim) pairs. ---

def default_dims(config: BertConfig) -> list[int]:
  """The five largest powers of two below the hidden size, then the hidden size (384: 16..256, 384)."""
  below = [2 ** k for k in range(config.hidden_size.bit_length()) if 2 ** k < config.hidden_size]
  return below[-5:] + [config.hidden_size]


def default_pairs(config: BertConfig) -> list[Pair]:
  """Pair i of k = len(default_dims) (six unless the model is tiny) is (ceil(i * L / k), i-th dim).

  6 layers, hidden 384: (1,16) (2,32) (3,64) (4,128) (5,256) (6,384);
  12 layers, hidden 768: the paper's (2,32) (4,64) (6,128) (8,256) (10,512) (12,768).
  """
  dims = default_dims(config)
  layers = config.num_hidden_layers
  return [(math.ceil(i * layers / len(dims)), d) for i, d in enumerate(dims, 1)]


def grid_pairs(config: BertConfig) -> list[Pair]:
  """Every layer 1..L with every default dim."""
  return [(n, d) for n in range(1, config.num_hidden_layers + 1) for d in default_dims(config)]


def parse_pairs(text: str) -> list[Pair]:
  """"2:32,4:64" -> [(2, 32), (4, 64)], duplicates dropped, order kept."""
  pairs = []
  for item in text.split(","):
    try:
      layer, dim = (int(x) for x in item.strip().split(":"))
    except ValueError:
      raise StarbucksError(f"--pairs item {item.strip()!r} is not LAYER:DIM (e.g. 2:32,4:64)") from None
    if (layer, dim) not in pairs:
      pairs.append((layer, dim))
  return pairs


def pair_key(pair: Pair) -> str:
  return f"{pair[0]},{pair[1]}"


# --- The model. ---

def is_workdir(path: str | Path) -> bool:
  """A training workdir has model/config.json (its top-level config.json is the training config)."""
  return (Path(path) / "model" / "config.json").is_file()


def load_model_config(path: str | Path) -> BertConfig:
  """Only the config of a folder or workdir: cheap, to check pairs before any weights are read."""
  from starbucks_jax import checkpoints, pretrained
  return checkpoints.read_model_dir(path)[0] if is_workdir(path) else pretrained.load_config(path)


def load_encoder(path: str | Path, step: int | None = None, max_length: int | None = None, dtype=None):
  """An Encoder for a Hugging Face folder, or for a workdir's newest checkpoint (or `step`)."""
  from starbucks_jax import checkpoints
  from starbucks_jax.encoder import Encoder, load_tokenizer
  dtype = dtype or jnp.float32
  if not is_workdir(path):
    if step is not None:
      raise StarbucksError(f"a step ({step}) applies to a training workdir, and {path} is not one "
                           "(it has no model/config.json)")
    return Encoder.from_pretrained(path, max_length=max_length, dtype=dtype)
  config, settings, model_dir = checkpoints.read_model_dir(path)
  params, step = checkpoints.restore_params(path, step)
  log.info("evaluating %s at step %d", path, step)
  max_length = max_length or settings.get("max_seq_length") or config.max_position_embeddings
  return Encoder(config, params, load_tokenizer(model_dir), default_pooling=settings.get("pooling") or "cls",
                 max_length=max_length, dtype=dtype)


# --- Scoring. ---

def evaluate_sts(encoder, sts: StsSet, pairs: Sequence[Pair], *, pooling=None, max_length=None,
                 batch_size=32, show_progress=None) -> dict[str, dict[str, float]]:
  """{"n,d": {"spearman", "pearson"}} (x100) of the pairs' cosine similarity against the gold scores."""
  from scipy import stats
  texts = list(dict.fromkeys(sts.sentence1 + sts.sentence2))  # each distinct sentence encoded once
  row = {text: i for i, text in enumerate(texts)}
  log.info("%s: encoding %d sentences", sts.name, len(texts))
  vectors = encoder.encode_layers(texts, layers=sorted({n for n, _ in pairs}), pooling=pooling,
                                  batch_size=batch_size, max_length=max_length, show_progress=show_progress)
  left, right = [row[t] for t in sts.sentence1], [row[t] for t in sts.sentence2]
  results = {}
  for layer, dim in pairs:
    a = vectors[layer][left, :dim].astype(np.float64)
    b = vectors[layer][right, :dim].astype(np.float64)
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    cosine = np.sum(a * b, axis=1) / norms
    results[pair_key((layer, dim))] = {"spearman": 100 * float(stats.spearmanr(cosine, sts.scores)[0]),
                                       "pearson": 100 * float(stats.pearsonr(cosine, sts.scores)[0])}
  return results


@functools.partial(jax.jit, static_argnames=("k", "normalize"))
def _merge_chunk(best_scores, best_rows, queries, chunk, first_row, valid_rows, *, k, normalize):
  """Scores one corpus chunk and merges its top k into the running top k (rows are corpus indices)."""
  if normalize:
    chunk = chunk / jnp.maximum(jnp.linalg.norm(chunk, axis=1, keepdims=True), 1e-12)
  scores = jnp.matmul(queries, chunk.T, precision=jax.lax.Precision.HIGHEST)  # no TF32 on GPUs
  scores = jnp.where(jnp.arange(chunk.shape[0]) < valid_rows, scores, -jnp.inf)  # the last chunk's padding
  chunk_scores, chunk_rows = jax.lax.top_k(scores, min(k, chunk.shape[0]))
  # Running results first: among equal scores, top_k keeps the lower corpus index, as one chunk would.
  scores = jnp.concatenate([best_scores, chunk_scores], axis=1)
  rows = jnp.concatenate([best_rows, chunk_rows + first_row], axis=1)
  best_scores, picked = jax.lax.top_k(scores, k)
  return best_scores, jnp.take_along_axis(rows, picked, axis=1)


def search(queries: np.ndarray, corpus: np.ndarray, *, k: int = RETRIEVAL_DEPTH, chunk_size: int = 8192,
           similarity: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
  """Exact top-k search: ([Q, k] scores, [Q, k] corpus rows), best first, k capped at the corpus size.

  The corpus stays on the host and goes to the device `chunk_size` rows at a time (the last chunk padded,
  so one compiled shape serves them all), so it never has to fit on the device at once.
  """
  if similarity not in SIMILARITIES:
    raise StarbucksError(f"similarity must be one of {', '.join(SIMILARITIES)}, got {similarity!r}")
  if chunk_size < 1:
    raise StarbucksError(f"chunk size must be at least 1, got {chunk_size}")
  k = min(k, len(corpus))
  chunk_rows = min(chunk_size, len(corpus))
  queries = jnp.asarray(queries, jnp.float32)
  if similarity == "cosine":
    queries = queries / jnp.maximum(jnp.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
  best_scores = jnp.full((len(queries), k), -jnp.inf, jnp.float32)
  best_rows = jnp.zeros((len(queries), k), jnp.int32)
  for start in range(0, len(corpus), chunk_rows):
    chunk = np.asarray(corpus[start:start + chunk_rows], np.float32)
    valid = len(chunk)
    if valid < chunk_rows:
      chunk = np.pad(chunk, ((0, chunk_rows - valid), (0, 0)))
    best_scores, best_rows = _merge_chunk(best_scores, best_rows, queries, jax.device_put(chunk), start, valid,
                                          k=k, normalize=similarity == "cosine")
  return np.asarray(best_scores), np.asarray(best_rows)


def evaluate_beir(encoder, beir: BeirSet, pairs: Sequence[Pair], *, pooling=None, query_max_length=32,
                  passage_max_length=256, batch_size=32, similarity="cosine", chunk_size=8192,
                  show_progress=None) -> dict[str, dict[str, float]]:
  """{"n,d": {"ndcg@10", "mrr@10", "recall@100"}} from exact search at each pair."""
  import ir_measures
  from ir_measures import RR, R, nDCG
  layers = sorted({n for n, _ in pairs})
  log.info("%s: encoding %d queries and %d passages", beir.name, len(beir.queries), len(beir.passages))
  encode = functools.partial(encoder.encode_layers, layers=layers, pooling=pooling, batch_size=batch_size,
                             show_progress=show_progress)
  queries = encode(beir.queries, max_length=query_max_length)
  corpus = encode(beir.passages, max_length=passage_max_length)
  measures = {"ndcg@10": nDCG @ 10, "mrr@10": RR @ 10, "recall@100": R @ 100}
  results = {}
  for layer, dim in pairs:
    scores, rows = search(queries[layer][:, :dim], corpus[layer][:, :dim], chunk_size=chunk_size,
                          similarity=similarity)
    run = {qid: {beir.corpus_ids[r]: float(s) for s, r in zip(scores[i], rows[i])}
           for i, qid in enumerate(beir.query_ids)}
    values = ir_measures.calc_aggregate(list(measures.values()), beir.qrels, run)
    results[pair_key((layer, dim))] = {name: float(values[m]) for name, m in measures.items()}
  return results


def evaluate_encoder(encoder, *, sts_sets: Sequence[StsSet] = (), beir_sets: Sequence[BeirSet] = (),
                     pairs: Sequence[Pair] | None = None, pooling: str | None = None,
                     sts_max_length: int | None = None, query_max_length: int = 32,
                     passage_max_length: int = 256, batch_size: int = 32, similarity: str = "cosine",
                     chunk_size: int = 8192, show_progress: bool | None = None) -> dict:
  """{"sts": {name: {"n,d": metrics}}, "beir": {name: {"n,d": metrics}}} for already loaded data sets.

  pairs default to `default_pairs`; pooling to the encoder's; STS texts use `sts_max_length` (default: the
  encoder's max_length). Data sets are loaded once (load_sts, load_beir) and can be evaluated many times.
  """
  pairs = default_pairs(encoder.config) if pairs is None else [tuple(map(int, p)) for p in pairs]
  check_pairs(encoder.config, pairs)
  if similarity not in SIMILARITIES:
    raise StarbucksError(f"similarity must be one of {', '.join(SIMILARITIES)}, got {similarity!r}")
  check_unique_names(list(sts_sets) + list(beir_sets))
  common = dict(pooling=pooling, batch_size=batch_size, show_progress=show_progress)
  return {
      "sts": {s.name: evaluate_sts(encoder, s, pairs, max_length=sts_max_length, **common) for s in sts_sets},
      "beir": {b.name: evaluate_beir(encoder, b, pairs, query_max_length=query_max_length,
                                     passage_max_length=passage_max_length, similarity=similarity,
                                     chunk_size=chunk_size, **common) for b in beir_sets},
  }


def check_pairs(config: BertConfig, pairs: Sequence[Pair]) -> None:
  from starbucks_jax.encoder import check_pair
  if not pairs:
    raise StarbucksError("no (layer, dim) pairs to evaluate")
  for layer, dim in pairs:
    check_pair(config, layer, dim)


def check_unique_names(data_sets) -> None:
  names = [d.name for d in data_sets]
  for name in names:
    if names.count(name) > 1:
      raise StarbucksError(f"two data sets are named {name!r} (results are keyed by file or folder name)")


def flatten_for_metrics(results: dict) -> dict[str, float]:
  """{"eval/{data set}/n{n}_d{d}/{metric}": value}, for a training run's metrics log."""
  flat = {}
  for kind in ("sts", "beir"):
    for name, by_pair in results.get(kind, {}).items():
      for key, metrics in by_pair.items():
        layer, dim = key.split(",")
        for metric, value in metrics.items():
          flat[f"eval/{name}/n{layer}_d{dim}/{metric}"] = float(value)
  return flat


# --- Reports. ---

def markdown_table(results: dict) -> str:
  """Rows "data set / metric", columns the pairs; STS x100 with 2 decimals, BEIR 0..1 with 4."""
  rows, keys = [], []
  for kind, digits in (("sts", 2), ("beir", 4)):
    for name, by_pair in results.get(kind, {}).items():
      keys += [k for k in by_pair if k not in keys]
      for metric in STS_METRICS if kind == "sts" else BEIR_METRICS:
        rows.append((f"{name} / {metric}", {k: f"{m[metric]:.{digits}f}" for k, m in by_pair.items()}))
  lines = ["| data set / metric | " + " | ".join(f"({k})" for k in keys) + " |",
           "|---|" + "---:|" * len(keys)]
  lines += [f"| {label} | " + " | ".join(cells.get(k, "") for k in keys) + " |" for label, cells in rows]
  return "\n".join(lines)


def write_heatmaps(results: dict, output: str | Path, num_layers: int) -> list[Path]:
  """One PNG per data set (STS: spearman, BEIR: ndcg@10) over layers 1..num_layers x the dims evaluated;
  pairs not evaluated stay blank. Written as `<output stem>_<data set>.png` beside `output`."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  output = Path(output)
  written = []
  for kind, metric, fmt in (("sts", "spearman", "{:.1f}"), ("beir", "ndcg@10", "{:.3f}")):
    for name, by_pair in results.get(kind, {}).items():
      pairs = {tuple(int(x) for x in key.split(",")): m[metric] for key, m in by_pair.items()}
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
      fig.savefig(path, dpi=100)
      plt.close(fig)
      written.append(path)
  return written


def write_results(results: dict, output: str | Path) -> None:
  """results.json; a NaN (a constant similarity has no correlation) becomes null."""
  clean = lambda x: {k: clean(v) for k, v in x.items()} if isinstance(x, dict) else (
      x if math.isfinite(x) else None)
  Path(output).write_text(json.dumps(clean(results), indent=2) + "\n")


# --- The command line. ---

def parse_args(argv):
  p = argparse.ArgumentParser(prog="python -m starbucks_jax.evaluate", description=__doc__.split("\n")[0],
                              epilog="Max lengths: STS texts use --max-length (default: the model's "
                              "max_seq_length); queries and passages use --query-max-length and "
                              "--passage-max-length, which default to --max-length when it is given, "
                              "else to 32 and 256.")
  p.add_argument("--model", help="Hugging Face folder, hub name or training workdir (default: packaged "
                 "all-MiniLM-L6-v2)")
  p.add_argument("--step", type=int, help="with a workdir: the checkpoint step (default: newest)")
  p.add_argument("--sts", nargs="+", default=[], metavar="FILE",
                 help=".jsonl/.json/.csv/.tsv files with sentence1, sentence2, score")
  p.add_argument("--beir", nargs="+", default=[], metavar="DIR",
                 help="BEIR folders: corpus.jsonl, queries.jsonl, qrels/<split>.tsv")
  p.add_argument("--split", default="test", help="BEIR qrels file to use (default: test)")
  which = p.add_mutually_exclusive_group()
  which.add_argument("--pairs", help="LAYER:DIM,... (default: six pairs, e.g. 1:16,...,6:384 for a "
                     "6-layer hidden-384 model; pair i of 6 is layer ceil(i*L/6) with the i-th of the "
                     "five largest powers of two below the hidden size, then the hidden size)")
  which.add_argument("--grid", action="store_true", help="every layer with every default dim")
  p.add_argument("--pooling", choices=["mean", "cls"], help="default: the model's (sentence-transformers "
                 "pooling, or the run's), else cls")
  p.add_argument("--similarity", choices=SIMILARITIES, default="cosine",
                 help="retrieval score (STS always uses cosine); default cosine")
  p.add_argument("--max-length", type=int, help="tokens per STS text, and the default for the two below")
  p.add_argument("--query-max-length", type=int)
  p.add_argument("--passage-max-length", type=int)
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--chunk-size", type=int, default=8192, help="corpus passages scored on the device at once")
  p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="compute dtype")
  p.add_argument("--output", required=True, help="results .json to write (overwritten if it exists); "
                 "heatmaps are written beside it")
  return p.parse_args(argv)


def main(argv=None) -> None:
  args = parse_args(argv)
  if not args.sts and not args.beir:
    raise StarbucksError("nothing to evaluate: give --sts FILE and/or --beir DIR")
  for flag in ("max_length", "query_max_length", "passage_max_length", "batch_size", "chunk_size"):
    value = getattr(args, flag)
    if value is not None and value < (2 if "length" in flag else 1):
      raise StarbucksError(f"--{flag.replace('_', '-')} must be at least {2 if 'length' in flag else 1}, got {value}")
  output = Path(args.output)
  if output.is_dir():
    raise StarbucksError(f"output {output} is a folder; give a file name such as {output / 'results.json'}")

  from starbucks_jax import pretrained
  model = args.model or pretrained.default_model_dir()
  config = load_model_config(model)  # the pairs are checked before any data or weights are read
  pairs = grid_pairs(config) if args.grid else parse_pairs(args.pairs) if args.pairs else default_pairs(config)
  check_pairs(config, pairs)
  sts_sets = [load_sts(f) for f in args.sts]
  beir_sets = [load_beir(d, split=args.split) for d in args.beir]
  check_unique_names(sts_sets + beir_sets)

  encoder = load_encoder(model, step=args.step, max_length=args.max_length, dtype=jnp.dtype(args.dtype))
  results = evaluate_encoder(
      encoder, sts_sets=sts_sets, beir_sets=beir_sets, pairs=pairs, pooling=args.pooling,
      query_max_length=args.query_max_length or args.max_length or 32,
      passage_max_length=args.passage_max_length or args.max_length or 256, batch_size=args.batch_size,
      similarity=args.similarity, chunk_size=args.chunk_size, show_progress=True)

  output.parent.mkdir(parents=True, exist_ok=True)
  write_results(results, output)
  print(markdown_table(results))
  for path in write_heatmaps(results, output, config.num_hidden_layers):
    print(f"wrote {path}")
  print(f"wrote {output}")


if __name__ == "__main__":
  run_cli(main)
