"""Export a model to a Hugging Face folder that transformers and sentence-transformers load.

    python -m starbucks_jax.export --model PATH --output OUT [--num-layers n] [--pooling mean|cls]
    python -m starbucks_jax.export --workdir DIR [--step N] --output OUT [--num-layers n]

--model is a Hugging Face folder, a hub name or a training workdir; --workdir names a workdir only. A
workdir's checkpoint (the newest, or step N) converts without the training data or the config file:
the workdir's `model/` folder describes the model, and the run's pooling, max length and normalisation
come with it. An SMAE pre-training run exports as `BertForMaskedLM`, MLM head included.

With `--num-layers n` the folder is a standalone n-layer model (a small size of a 2D Matryoshka model).
A LoRA run exports merged (its adapters added into the base); `--adapters-only` writes its adapters alone,
in PEFT's layout (`adapter_model.safetensors`, `adapter_config.json`: `training/lora_export.py`).
The output folder must be new or empty; --overwrite replaces a previous export (a folder holding only an
export's files), never anything else: not the model's own folder or workdir, nor a folder holding it.
"""

from __future__ import annotations

import argparse

from starbucks_jax.cli import flags
from starbucks_jax.errors import StarbucksError, run_cli


def build_parser() -> argparse.ArgumentParser:
  """The command's flags (tests/test_docs.py checks every command the docs show against them)."""
  p = argparse.ArgumentParser(prog="python -m starbucks_jax.export", description=__doc__.split("\n")[0])
  source = p.add_mutually_exclusive_group(required=True)
  flags.add_model_flag(source, default_model=False)
  source.add_argument("--workdir", help="a training workdir: export its newest checkpoint (or --step)")
  flags.add_step_flag(p)
  p.add_argument("--output", required=True, help="folder to write")
  p.add_argument("--num-layers", type=int, help="keep only the first n layers (default: all)")
  flags.add_pooling_flag(p, pooling_help="the sentence-transformers pooling to write (default: the source "
                         "folder's, else cls)")
  p.add_argument("--max-seq-length", type=int, help="sentence-transformers max_seq_length (default: the "
                 "source folder's, else the position limit)")
  p.add_argument("--normalize", action="store_true", help="add sentence-transformers' Normalize module")
  p.add_argument("--with-mlm-head", action="store_true", help="write a BertForMaskedLM folder, MLM head included")
  p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty folder")
  p.add_argument("--adapters-only", action="store_true", help="a LoRA workdir: write its adapters alone (PEFT's "
                 "layout) instead of the merged model")
  return p


def parse_args(argv):
  return build_parser().parse_args(argv)


def main(argv=None) -> None:
  args = parse_args(argv)
  from starbucks_jax import storage
  from starbucks_jax.runtime import workdir
  output = storage.as_path(args.output)
  storage.check_store(output, "--output")
  if args.workdir:
    storage.check_store(args.workdir, "--workdir")
    if not storage.as_path(args.workdir).is_dir():
      raise StarbucksError(f"workdir {args.workdir} does not exist")
    if not workdir.is_workdir(args.workdir):
      raise StarbucksError(f"{args.workdir} is not a training workdir: "
                           f"{storage.as_path(args.workdir) / workdir.MODEL_DIR / 'config.json'} is missing")
  source = workdir.resolve(args.workdir or args.model, step=args.step, what="--workdir" if args.workdir else "--model")
  if source.workdir and (args.pooling or args.max_seq_length or args.normalize or args.with_mlm_head):
    raise StarbucksError("with a workdir, pooling, max length and normalisation come from the run; "
                         "--pooling, --max-seq-length, --normalize and --with-mlm-head apply to a model folder only")
  if args.adapters_only:
    return _export_adapters(args, source, output)
  from starbucks_jax.training.export import check_export_output, export_model
  check_export_output(output, overwrite=args.overwrite, source=source)
  export_model(source, output, num_layers=args.num_layers, overwrite=args.overwrite, pooling=args.pooling,
               max_seq_length=args.max_seq_length, normalize=args.normalize, with_mlm_head=args.with_mlm_head)
  config = source.config()
  print(f"wrote {output} from {source.name}: {args.num_layers or config.num_hidden_layers} of "
        f"{config.num_hidden_layers} layers, hidden {config.hidden_size}")


def _export_adapters(args, source, output) -> None:
  if args.num_layers or args.pooling or args.max_seq_length or args.normalize or args.with_mlm_head:
    raise StarbucksError("--adapters-only writes the adapters of the whole model; --num-layers, --pooling, "
                         "--max-seq-length, --normalize and --with-mlm-head apply to a merged export")
  from starbucks_jax.training.lora_export import export_adapters
  export_adapters(source, output, overwrite=args.overwrite)
  print(f"wrote {output} from {source.name}: the LoRA adapters alone (PEFT's layout)")


def run() -> None:
  """The `starbucks-export` console script."""
  run_cli(main)
