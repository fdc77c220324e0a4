"""Evaluate one model at many (layer, dim) sizes on STS files and BEIR folders.

    python -m starbucks_jax.evaluate --model PATH --sts data/quickstart/stsb_test.jsonl \
        --beir data/beir/msmarco-dl19-slice --output runs/eval/results.json

PATH is a Hugging Face folder or a training workdir (its newest checkpoint, or --step N). Each text set
is encoded once, through every layer the pairs need; a pair's vector is its layer's pooled vector cut
to the first d coordinates. STS scores are Spearman and Pearson correlations (x100) of cosine
similarity with the gold scores. BEIR scores come from exact search over the whole corpus (in chunks
on the device) and ir_measures: nDCG@10, RR@10 ("mrr@10") and R@100 ("recall@100"), in 0..1. Every
evaluator of `evaluation/registry.py` has its flag (`--sts`, `--beir`).

Writes results.json (overwritten if it exists), prints a markdown table, and draws one heatmap per
data set over layers x dims next to it: `<output stem>_<data set>.png`.

`--precision float32 int8 binary` also scores every size with int8 and binary vectors
(`evaluation/quantize.py`; metrics "spearman/int8", ...). `--frontier` measures what each size costs
(`evaluation/cost.py`: encoding time per layer count, FLOPs, bytes per vector, search time) and writes
the cost-quality frontier beside the results (`evaluation/frontier.py`): `<stem>_frontier.md`,
`<stem>_frontier.json` and `<stem>_frontier_<data set>.png`.

`--query-prompt` / `--passage-prompt` go before every query / passage (STS: the query prompt before both
sentences), as sentence-transformers' prompts; they default to the model's own (`data/prompts.py`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from starbucks_jax.cli import flags
from starbucks_jax.errors import StarbucksError, run_cli


def build_parser() -> argparse.ArgumentParser:
  """The command's flags (tests/test_docs.py checks every command the docs show against them)."""
  from starbucks_jax.evaluation.registry import EVALUATORS
  p = argparse.ArgumentParser(prog="python -m starbucks_jax.evaluate", description=__doc__.split("\n")[0],
                              epilog="Max lengths: STS texts use --max-length (default: the model's "
                              "max_seq_length); queries and passages use --query-max-length and "
                              "--passage-max-length, which default to --max-length when it is given, "
                              f"else to {flags.QUERY_MAX_LENGTH} and {flags.PASSAGE_MAX_LENGTH}.")
  flags.add_model_flags(p)
  for evaluator in EVALUATORS.values():
    p.add_argument(f"--{evaluator.name}", nargs="+", default=[], metavar=evaluator.metavar, help=evaluator.help)
  p.add_argument("--split", default="test", help="BEIR qrels file to use (default: test)")
  which = p.add_mutually_exclusive_group()
  which.add_argument("--pairs", help="LAYER:DIM,... (default: six pairs, e.g. 1:16,...,6:384 for a "
                     "6-layer hidden-384 model; pair i of 6 is layer ceil(i*L/6) with the i-th of the "
                     "five largest powers of two below the hidden size, then the hidden size)")
  which.add_argument("--grid", action="store_true", help="every layer with every default dim")
  flags.add_encoding_flags(p, queries_and_passages=True)
  flags.add_prompt_flags(p)
  flags.add_search_flags(p, sts=True)
  p.add_argument("--precision", nargs="+", default=["float32"], metavar="P",
                 help="vector precisions scored at every size: float32 (always), int8, binary")
  p.add_argument("--frontier", action="store_true", help="measure each size's cost and write the cost-quality "
                 "frontier (table, JSON, plots) beside --output")
  p.add_argument("--cost-batch-size", type=int, default=32, help="with --frontier: texts per timed batch")
  p.add_argument("--cost-length", type=int, default=128, help="with --frontier: tokens per timed text")
  p.add_argument("--cost-repeats", type=int, default=3, help="with --frontier: timed runs (the best is kept)")
  p.add_argument("--search-corpus", type=int, default=100_000,
                 help="with --frontier: vectors in the timed exact search (default 100000)")
  p.add_argument("--output", required=True, help="results .json to write (overwritten if it exists); "
                 "heatmaps are written beside it")
  return p


def parse_args(argv):
  return build_parser().parse_args(argv)


def main(argv=None) -> None:
  from starbucks_jax.evaluation.evaluator import EvalOptions
  from starbucks_jax.evaluation.registry import EVALUATORS
  args = parse_args(argv)
  paths = {name: getattr(args, name) for name in EVALUATORS}
  if not any(paths.values()):
    raise StarbucksError("nothing to evaluate: give " + " and/or ".join(
        f"--{e.name} {e.metavar}" for e in EVALUATORS.values()))
  from starbucks_jax.evaluation.quantize import check_precisions
  precisions = check_precisions(args.precision)
  cost_options = None
  if args.frontier:
    from starbucks_jax.evaluation.cost import CostOptions
    cost_options = CostOptions(batch_size=args.cost_batch_size, length=args.cost_length, repeats=args.cost_repeats,
                               search_corpus=args.search_corpus)
  for flag in ("max_length", "query_max_length", "passage_max_length", "batch_size", "chunk_size"):
    value = getattr(args, flag)
    if value is not None and value < (2 if "length" in flag else 1):
      raise StarbucksError(f"--{flag.replace('_', '-')} must be at least {2 if 'length' in flag else 1}, got {value}")
  from starbucks_jax.runtime import outputs
  from starbucks_jax import storage
  storage.check_store(args.output, "--output")
  if storage.as_path(args.output).is_dir():
    raise StarbucksError(f"output {args.output} is a folder; give a file name such as "
                         f"{storage.as_path(args.output) / 'results.json'}")
  output = outputs.check_file_output(args.output)

  from starbucks_jax import pairs as pairs_lib
  from starbucks_jax.hf.load import default_model_dir
  from starbucks_jax.runtime import workdir
  source = workdir.resolve(args.model or default_model_dir(), step=args.step, what="--model")
  config = source.config()  # the pairs are checked before any data or weights are read
  pairs = (pairs_lib.grid_pairs(config) if args.grid else pairs_lib.parse_pair_text(args.pairs) if args.pairs
           else pairs_lib.default_pairs(config))
  pairs_lib.check_pairs(config, pairs)
  query_max_length, passage_max_length = flags.query_passage_lengths(args)
  query_prompt, passage_prompt = flags.query_passage_prompts(args, source.serving().prompts)
  options = EvalOptions(pooling=args.pooling, batch_size=args.batch_size, max_length=args.max_length,
                        query_max_length=query_max_length, passage_max_length=passage_max_length,
                        similarity=args.similarity, chunk_size=args.chunk_size, split=args.split, show_progress=True,
                        packing=args.packing, query_prompt=query_prompt, passage_prompt=passage_prompt,
                        precisions=precisions, model_name=_model_name(source), model_revision=_revision(source),
                        mteb_folder=str(output.with_name(f"{output.stem}_mteb")) if args.mteb else None)
  _evaluate(source, paths, pairs, options, args.dtype, output, config.num_hidden_layers, cost_options)


def _evaluate(source, paths, pairs, options, dtype: str, output: Path, num_layers: int, cost_options=None) -> None:
  import jax.numpy as jnp
  from starbucks_jax.runtime import outputs
  from starbucks_jax.evaluation import report
  from starbucks_jax.evaluation.run import evaluate_encoder, load_sets
  from starbucks_jax.inference.encoder import Encoder
  sets = load_sets(paths, options)
  encoder = Encoder.from_pretrained(source.name, step=source.step, max_length=options.max_length,
                                    dtype=jnp.dtype(dtype))
  results = evaluate_encoder(encoder, sets, pairs=pairs, options=options)
  report.write_results(results, output)
  print(report.markdown_table(results))
  try:
    for path in report.write_heatmaps(results, output, num_layers):
      print(f"wrote {path}")
  except OSError as e:
    raise StarbucksError(f"cannot write the heatmaps beside {output}: {outputs.os_problem(e)}") from None
  print(f"wrote {output}")
  if cost_options is not None:
    from starbucks_jax.evaluation import cost, frontier
    costs = cost.size_costs(encoder, pairs, options.precisions, cost_options, options.similarity)
    found = frontier.frontiers(results, costs)
    print(frontier.markdown(found, costs))
    for path in frontier.write_report(found, costs, output):
      print(f"wrote {path}")


def _model_name(source) -> str:
  """The model's name in MTEB's results: its folder's (a workdir's) name; a packaged model's "model"
  folder is named by its package."""
  path = Path(str(source.name).rstrip("/"))
  return (path.parent.name if path.name == "model" else path.name) or "model"


def _revision(source) -> str:
  return f"step-{source.step}" if getattr(source, "step", None) is not None else "local"


def run() -> None:
  """The `starbucks-evaluate` console script."""
  run_cli(main)
