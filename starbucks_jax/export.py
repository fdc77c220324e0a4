"""Export a model to a Hugging Face folder that transformers and sentence-transformers load.

    python -m starbucks_jax.export --model PATH --output OUT [--num-layers n] [--pooling mean|cls]
    python -m starbucks_jax.export --workdir DIR [--step N] --output OUT [--num-layers n]

--workdir converts a training run's checkpoint (the newest, or step N) and needs neither the training
data nor the config file: the workdir's `model/` folder describes the model. An SMAE pre-training run
exports as `BertForMaskedLM`, MLM head included.

With `--num-layers n` the folder is a standalone n-layer model (a small size of a 2D Matryoshka model).
The output folder must be new or empty, unless --overwrite is given.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from starbucks_jax.errors import StarbucksError, run_cli

log = logging.getLogger(__name__)


def export_workdir(workdir: Path, output: Path, *, step: int | None = None, num_layers: int | None = None,
                   overwrite: bool = False) -> Path:
  """Writes a Hugging Face folder from a workdir's checkpoint (the newest unless `step` is given)."""
  from starbucks_jax import checkpoints
  model_config, _, _ = checkpoints.read_model_dir(workdir)
  if num_layers is not None and not 1 <= num_layers <= model_config.num_hidden_layers:
    raise StarbucksError(f"--num-layers {num_layers} is outside 1..{model_config.num_hidden_layers}")
  params, step = checkpoints.restore_params(workdir, step)
  return export_params(workdir, params, output, step=step, num_layers=num_layers, overwrite=overwrite)


def export_params(workdir: Path, params: dict, output: Path, *, step: int, num_layers: int | None = None,
                  overwrite: bool = False) -> Path:
  """Writes a Hugging Face folder from host `params` of the model that `workdir/model` describes."""
  from starbucks_jax import checkpoints, hf_export
  model_config, settings, model_dir = checkpoints.read_model_dir(workdir)
  output = Path(output)
  staging = output.with_name(output.name + ".partial")
  shutil.rmtree(staging, ignore_errors=True)
  # A pre-training run's export keeps its MLM head (BertForMaskedLM); its MAE decoder stays in the checkpoint.
  hf_export.save_pretrained(staging, params, model_config, tokenizer_dir=model_dir, num_layers=num_layers,
                            pooling=settings.get("pooling", "mean"),
                            max_seq_length=settings.get("max_seq_length", model_config.max_position_embeddings),
                            normalize=settings.get("normalize", False),
                            with_mlm_head=bool(settings.get("mlm_head")) and "mlm_head" in params)
  if output.exists() and overwrite:
    shutil.rmtree(output)
  staging.rename(output)  # a finished folder appears at once, never a half-written one
  log.info("exported step %d to %s", step, output)
  return output



def parse_args(argv):
  p = argparse.ArgumentParser(prog="python -m starbucks_jax.export", description=__doc__.split("\n")[0])
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument("--model", help="Hugging Face folder or hub name")
  source.add_argument("--workdir", help="a training workdir: export its newest checkpoint (or --step)")
  p.add_argument("--step", type=int, help="with --workdir: the checkpoint step to export (default: newest)")
  p.add_argument("--output", required=True, help="folder to write")
  p.add_argument("--num-layers", type=int, help="keep only the first n layers (default: all)")
  p.add_argument("--pooling", choices=["mean", "cls"], help="sentence-transformers pooling (default: the "
                 "source folder's, else cls)")
  p.add_argument("--max-seq-length", type=int, help="sentence-transformers max_seq_length (default: the "
                 "source folder's, else the position limit)")
  p.add_argument("--normalize", action="store_true", help="add sentence-transformers' Normalize module")
  p.add_argument("--with-mlm-head", action="store_true", help="write a BertForMaskedLM folder, MLM head included")
  p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty folder")
  return p.parse_args(argv)


def main(argv=None) -> None:
  args = parse_args(argv)
  output = Path(args.output)
  if output.exists() and not output.is_dir():
    raise StarbucksError(f"output {output} exists and is a file, not a folder")
  if output.exists() and any(output.iterdir()) and not args.overwrite:
    raise StarbucksError(f"output {output} exists and is not an empty folder (pass --overwrite to replace it)")
  if args.workdir:
    if args.pooling or args.max_seq_length or args.normalize or args.with_mlm_head:
      raise StarbucksError("with --workdir, pooling, max length and normalisation come from the run; "
                           "--pooling, --max-seq-length, --normalize and --with-mlm-head apply to --model only")
    workdir = Path(args.workdir)
    if not workdir.is_dir():
      raise StarbucksError(f"workdir {workdir} does not exist")
    if output.exists() and output.resolve() == workdir.resolve():
      raise StarbucksError("--output is the workdir; choose another folder")
    export_workdir(workdir, output, step=args.step, num_layers=args.num_layers, overwrite=args.overwrite)
    print(f"wrote {output} from {workdir}")
    return
  if args.step is not None:
    raise StarbucksError("--step needs --workdir")
  from starbucks_jax import hf_export, pretrained
  source = pretrained.resolve_model_dir(args.model)
  if output.exists() and output.resolve() == source.resolve():
    raise StarbucksError("--output is the source folder; choose another folder")
  config = pretrained.load_config(source)
  if args.num_layers is not None and not 1 <= args.num_layers <= config.num_hidden_layers:
    raise StarbucksError(f"--num-layers {args.num_layers} is outside 1..{config.num_hidden_layers}")

  model = pretrained.load_pretrained(source)
  if args.with_mlm_head and "mlm_head" not in model.params:
    raise StarbucksError(f"{source} has no MLM head, so --with-mlm-head cannot export one")
  hf_export.save_pretrained(
      output, model.params, model.config, tokenizer_dir=source, num_layers=args.num_layers,
      pooling=args.pooling or model.pooling or "cls",
      max_seq_length=args.max_seq_length or model.max_seq_length or config.max_position_embeddings,
      normalize=args.normalize, with_mlm_head=args.with_mlm_head)
  print(f"wrote {output}: {args.num_layers or config.num_hidden_layers} of {config.num_hidden_layers} layers, "
        f"hidden {config.hidden_size}")


if __name__ == "__main__":
  run_cli(main)
