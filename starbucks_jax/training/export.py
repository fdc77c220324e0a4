"""Exporting a model to a Hugging Face folder that transformers and sentence-transformers load.

    export_model(workdir.resolve("runs/quickstart"), Path("small"), num_layers=2)   # a workdir or a folder
    export_params(workdir, host_params, workdir / "export", step=N)                 # at the end of a run

A workdir's export needs neither the training data nor the config file: its `model/` folder describes
the model, and the run's settings (pooling, max length, normalisation, the MLM head of a pre-training
run) come with it. With `num_layers=n` the folder is a standalone n-layer model (a small size of a 2D
Matryoshka model). The folder is written under a temporary name and renamed when complete, so a
half-written export never appears.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from starbucks_jax.errors import StarbucksError
from starbucks_jax.hf.save import save_pretrained
from starbucks_jax.runtime import workdir as workdir_lib
from starbucks_jax.runtime.workdir import ModelSource, ServingSettings

log = logging.getLogger(__name__)


def write_export(params: dict, config, tokenizer_dir: Path, output: Path, *, serving: ServingSettings,
                 num_layers: int | None = None, overwrite: bool = False) -> Path:
  """Writes `output` from host `params`; an existing `output` is replaced only with `overwrite`."""
  output = Path(output)
  staging = output.with_name(output.name + ".partial")
  shutil.rmtree(staging, ignore_errors=True)
  save_pretrained(staging, params, config, tokenizer_dir=tokenizer_dir, num_layers=num_layers,
                  pooling=serving.pooling or "cls",
                  max_seq_length=serving.max_seq_length or config.max_position_embeddings,
                  normalize=serving.normalize, with_mlm_head=serving.mlm_head)
  if output.exists() and overwrite:
    shutil.rmtree(output)
  staging.rename(output)  # a finished folder appears at once, never a half-written one
  return output


def export_params(workdir: Path, params: dict, output: Path, *, step: int, num_layers: int | None = None,
                  overwrite: bool = False) -> Path:
  """Writes a Hugging Face folder from host `params` of the model that `workdir/model` describes."""
  source = ModelSource(Path(workdir) / workdir_lib.MODEL_DIR, Path(workdir))
  serving = source.serving()
  # A pre-training run's export keeps its MLM head (BertForMaskedLM); its MAE decoder stays in the checkpoint.
  serving = ServingSettings(serving.pooling or "mean", serving.max_seq_length, serving.normalize,
                            serving.mlm_head and "mlm_head" in params)
  write_export(params, source.config(), source.model_dir, output, serving=serving, num_layers=num_layers,
               overwrite=overwrite)
  log.info("exported step %d to %s", step, output)
  return Path(output)


def export_model(source: ModelSource, output: Path, *, num_layers: int | None = None, overwrite: bool = False,
                 pooling: str | None = None, max_seq_length: int | None = None, normalize: bool = False,
                 with_mlm_head: bool = False) -> Path:
  """Writes a Hugging Face folder from a folder or a workdir's checkpoint (`workdir.resolve`).

  A workdir's own settings are used (its pooling, max length, normalisation and MLM head); for a
  folder, `pooling` and `max_seq_length` default to its sentence-transformers settings.
  """
  config = source.config()
  if num_layers is not None and not 1 <= num_layers <= config.num_hidden_layers:
    raise StarbucksError(f"--num-layers {num_layers} is outside 1..{config.num_hidden_layers}")
  if source.workdir is not None:
    params, step = source.load_params()
    return export_params(source.workdir, params, output, step=step, num_layers=num_layers, overwrite=overwrite)
  serving = source.serving()
  params, _ = source.load_params()
  if with_mlm_head and "mlm_head" not in params:
    raise StarbucksError(f"{source.model_dir} has no MLM head, so --with-mlm-head cannot export one")
  serving = ServingSettings(pooling or serving.pooling, max_seq_length or serving.max_seq_length, normalize,
                            with_mlm_head)
  return write_export(params, config, source.model_dir, output, serving=serving, num_layers=num_layers,
                      overwrite=overwrite)
