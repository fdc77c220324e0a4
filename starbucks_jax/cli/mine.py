"""Mine hard negatives for training queries at one (layer, dim) size of a model, into Tevatron groups.

    python -m starbucks_jax.mine --model PATH --layer 4 --dim 128 --corpus data/beir/scifact \
        --train pairs.jsonl --output groups.jsonl

--train is what `train` reads: (query, positive) pairs, triplets or Tevatron groups. --corpus is a BEIR
folder or a .jsonl of {_id or docid, title, text}; without it, the training file's own passages. The
corpus is encoded once and searched exactly (or through a FAISS index, --faiss); a query never gets one
of its positives (by id or identical text); from its candidates ranked range-min+1 .. range-max, those
within a margin of its positive score are dropped and --num-negatives are drawn (seeded). Writes the
groups (query_id, query, positive_passages, negative_passages), which `train` reads with
data.train_group_size, and a summary beside them (<output stem>.summary.json).

--query-prompt / --passage-prompt (first named --query-prefix / --passage-prefix) go before every query /
passage as the model's prompts do (`data/prompts.py`); they default to the model's own: a training
workdir's run's prompts, or a folder's sentence-transformers prompts. The groups keep the texts as they are.
"""

from __future__ import annotations

import argparse
import json
import os

from starbucks_jax.cli import flags
from starbucks_jax.errors import StarbucksError, run_cli


def build_parser() -> argparse.ArgumentParser:
  """The command's flags (tests/test_docs.py checks every command the docs show against them)."""
  from starbucks_jax.mining.select import SAMPLINGS
  p = argparse.ArgumentParser(prog="python -m starbucks_jax.mine", description=__doc__.split("\n")[0])
  flags.add_model_flags(p)
  flags.add_size_flags(p)
  p.add_argument("--train", required=True, help="training data: pairs, triplets or Tevatron groups (a file, "
                 "hf:NAME or tfds:NAME, as data.source)")
  p.add_argument("--kind", default="auto", help="the training data's kind (default: from its columns)")
  p.add_argument("--corpus", help="BEIR folder or .jsonl of {_id|docid, title, text} (default: the training "
                 "file's passages)")
  p.add_argument("--output", required=True, help="the groups .jsonl to write")
  p.add_argument("--overwrite", action="store_true", help="replace an existing output and summary")
  p.add_argument("--depth", type=int, default=200, help="candidates retrieved per query (default 200)")
  p.add_argument("--range-min", type=int, default=10, help="skip this many best candidates (default 10)")
  p.add_argument("--range-max", type=int, help="draw from candidates ranked at most this (default: --depth)")
  p.add_argument("--margin", type=float, help="drop candidates scoring above positive - MARGIN")
  p.add_argument("--relative-margin", type=float, help="drop candidates scoring above positive * (1 - R)")
  p.add_argument("--num-negatives", type=int, default=7, help="negatives per query (default 7)")
  p.add_argument("--sampling", choices=SAMPLINGS, default="random", help="random (seeded) or top candidates")
  p.add_argument("--seed", type=int, default=0)
  flags.add_encoding_flags(p, max_length=False, queries_and_passages=True)
  flags.add_prompt_flags(p, older_names=True)  # --query-prefix, --passage-prefix: their first names
  flags.add_search_flags(p)
  p.add_argument("--faiss", metavar="FACTORY", help="search a FAISS index instead (factory string: Flat, "
                 "SQ8, IVF4096,PQ32, ...), filled shard by shard for corpora whose vectors do not fit")
  p.add_argument("--nprobe", type=int, help="with an IVF --faiss index: lists searched per query")
  p.add_argument("--max-examples", type=int, help="mine for the first N training rows only")
  return p


def parse_args(argv):
  return build_parser().parse_args(argv)


def _check_numbers(args) -> None:
  for flag, least in (("query_max_length", 2), ("passage_max_length", 2), ("batch_size", 1), ("chunk_size", 1),
                      ("nprobe", 1), ("max_examples", 1)):
    value = getattr(args, flag)
    if value is not None and value < least:
      raise StarbucksError(f"--{flag.replace('_', '-')} must be at least {least}, got {value}")
  if args.nprobe is not None and not args.faiss:
    raise StarbucksError("--nprobe applies to a --faiss index; exact search has no lists to probe")


def _check_outputs(args):
  """Both outputs, checked before any work: not the training file, not replaced unless --overwrite."""
  from starbucks_jax.mining.mine import summary_path
  from starbucks_jax.runtime import outputs
  output = outputs.check_file_output(args.output)
  summary = outputs.check_file_output(summary_path(output), "summary")
  for path in (output, summary):
    for source in args.train.split(","):
      if os.path.exists(source.strip()) and os.path.exists(path) and os.path.samefile(source.strip(), path):
        raise StarbucksError(f"--output {path} is the training file --train; write the groups elsewhere")
    if path.exists() and not args.overwrite:
      raise StarbucksError(f"{path} exists; give another --output or --overwrite to replace it")
  return output, summary


def main(argv=None) -> None:
  args = parse_args(argv)
  _check_numbers(args)
  from starbucks_jax.mining.select import SelectOptions
  options = SelectOptions(num_negatives=args.num_negatives, depth=args.depth, range_min=args.range_min,
                          range_max=args.range_max, margin=args.margin, relative_margin=args.relative_margin,
                          sampling=args.sampling, seed=args.seed)
  output, summary_file = _check_outputs(args)
  from starbucks_jax.hf.load import default_model_dir
  from starbucks_jax.pairs import check_pair
  from starbucks_jax.runtime import workdir
  source = workdir.resolve(args.model or default_model_dir(), step=args.step, what="--model")
  config = source.config()
  layer = config.num_hidden_layers if args.layer is None else args.layer
  dim = config.hidden_size if args.dim is None else args.dim
  check_pair(config, layer, dim)
  if args.faiss:
    from starbucks_jax.mining.search import faiss_index
    faiss_index(args.faiss, dim)  # a bad factory string fails now, not after encoding

  from starbucks_jax.evaluation.datasets import load_corpus
  from starbucks_jax.mining import mine
  from starbucks_jax.mining.training_queries import read_training_queries
  queries = read_training_queries(args.train, args.kind, args.max_examples)
  corpus = load_corpus(args.corpus) if args.corpus else mine.corpus_from_training(queries)
  query_prompt, passage_prompt = flags.query_passage_prompts(args, source.serving().prompts)
  settings = mine.MineSettings(layer=layer, dim=dim, pooling=args.pooling, similarity=args.similarity,
                               query_max_length=args.query_max_length, passage_max_length=args.passage_max_length,
                               query_prompt=query_prompt, passage_prompt=passage_prompt,
                               batch_size=args.batch_size, packing=args.packing, chunk_size=args.chunk_size,
                               faiss=args.faiss,
                               nprobe=args.nprobe, show_progress=True)
  import jax.numpy as jnp
  from starbucks_jax.inference.encoder import Encoder
  encoder = Encoder.from_pretrained(source.name, step=source.step, dtype=jnp.dtype(args.dtype))
  result = mine.mine_negatives(encoder, queries, corpus, settings, options)
  result.summary.update(model=str(source.name), step=source.step, layer=layer, dim=dim,
                        pooling=args.pooling or encoder.default_pooling, similarity=args.similarity,
                        train=args.train, corpus_source=args.corpus or "the training file's passages",
                        query_max_length=args.query_max_length, passage_max_length=args.passage_max_length,
                        query_prompt=query_prompt, passage_prompt=passage_prompt,
                        search=f"faiss {args.faiss}" if args.faiss else "exact")
  mine.write_result(result, output, summary_file)
  _print_summary(result.summary, output, summary_file)


def _print_summary(summary: dict, output, summary_file) -> None:
  scores = summary["scores"]
  print(f"mined {summary['queries']} queries against {summary['corpus']} passages in "
        f"{summary['seconds']['total']:.1f} s; {summary['queries_with_fewer']} got fewer than "
        f"{summary['negatives_asked']} negatives (by count: {json.dumps(summary['queries_by_negatives_found'])})")
  for name in ("positives", "negatives"):
    s = scores[name]
    if s["count"]:
      print(f"  {name}: median score {s['median']:.4f} (p5 {s['p5']:.4f}, p95 {s['p95']:.4f}), {s['count']} scores")
  print(f"wrote {output} and {summary_file}")


def run() -> None:
  """The `starbucks-mine` console script."""
  run_cli(main)
