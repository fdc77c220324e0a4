"""Exporting a model to a Hugging Face folder that transformers and sentence-transformers load.

    export_model(workdir.resolve("runs/quickstart"), Path("small"), num_layers=2)   # a workdir or a folder
    export_params(workdir, host_params, workdir / "export", step=N)                 # at the end of a run

A workdir's export needs neither the training data nor the config file: its `model/` folder describes the
model, and the run's settings (pooling, max length, normalisation, the MLM head of a pre-training run, the
prompts it trained with) come with it. With `num_layers=n` the folder is a standalone n-layer model (a
small size of a 2D Matryoshka model). The folder is written under a temporary name and renamed when
complete, so a half-written export never appears. An existing folder is replaced only with `overwrite`,
and only when it holds nothing but a previous export's files: never a workdir, a checkpoint, the model
being exported or a folder that holds any of them. In a bucket (`gs://...`), where nothing can be renamed,
the folder is written locally, then uploaded with config.json last (a folder without it is no model to any
loader), and a previous export's files that the new one lacks are removed after.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from starbucks_jax import storage
from starbucks_jax.errors import StarbucksError
from starbucks_jax.hf.load import TOKENIZER_FILES
from starbucks_jax.hf.save import save_pretrained
from starbucks_jax.model.registry import pooling_or_default
from starbucks_jax.runtime import outputs, workdir as workdir_lib
from starbucks_jax.runtime.workdir import ModelSource, ServingSettings
from starbucks_jax.training import model_card

log = logging.getLogger(__name__)

# What an export folder holds (`hf/save.py`); a folder holding anything else is not replaced.
EXPORT_ENTRIES = frozenset(TOKENIZER_FILES) | {
    "config.json", "model.safetensors", "modules.json", "1_Pooling", "2_Normalize", "sentence_bert_config.json",
    "config_sentence_transformers.json"} | {f"{i}_{m}" for i in range(2, 10) for m in ("Dense", "Normalize")} | {
    "adapter_model.safetensors", "adapter_config.json"} | {  # a LoRA run's adapters alone (`lora_export.py`)
    model_card.CARD, model_card.MANIFEST}  # a run's export: its model card and manifest (`model_card.py`)


def _is_or_holds(output, held) -> bool:
  if storage.is_remote(output) or storage.is_remote(held):
    output, held = str(output).rstrip("/"), str(held).rstrip("/")
    return held == output or held.startswith(output + "/")
  output, held = Path(output).resolve(), Path(held).resolve()
  return output == held or output in held.parents


def check_export_output(output, *, overwrite: bool, source: ModelSource | None = None):
  """Refuses an output folder that may not be written, before anything is loaded: a file, one that cannot
  be created, a non-empty one without `overwrite`, one holding more than a previous export, or the model
  being exported (its folder or workdir) or a folder that holds it."""
  output = storage.as_path(output)
  if source is not None:
    if _is_or_holds(output, source.workdir or source.model_dir):
      raise StarbucksError(f"--output {output} is or holds the model being exported ({source.name}); "
                           "choose another folder")
  if output.is_dir() and any(output.iterdir()):
    if not overwrite:
      raise StarbucksError(f"output {output} exists and is not an empty folder (pass --overwrite to replace it)")
    others = sorted(entry.name for entry in output.iterdir() if entry.name not in EXPORT_ENTRIES)
    if others:
      raise StarbucksError(f"output {output} holds more than a previous export ({', '.join(others[:4])}"
                           f"{' ...' if len(others) > 4 else ''}); --overwrite replaces only an export folder")
  return outputs.check_folder_output(output, "--output")


def write_export(params: dict, config, tokenizer_dir: Path, output, *, serving: ServingSettings,
                 num_layers: int | None = None, overwrite: bool = False, run: tuple | None = None):
  """Writes `output` from host `params`; an existing export is replaced only with `overwrite`. `run`
  (workdir, step): a training run's export, which gets its model card and manifest (`model_card.py`)."""
  output = check_export_output(output, overwrite=overwrite)
  remote = storage.is_remote(output)
  try:
    if not remote:
      output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=None if remote else output.parent, prefix=f".{output.name}.partial-"))
  except OSError as e:
    raise StarbucksError(f"cannot write the export {output}: {outputs.os_problem(e)}") from None
  try:
    save_pretrained(staging, params, config, tokenizer_dir=tokenizer_dir, num_layers=num_layers,
                    pooling=pooling_or_default(serving.pooling, config),
                    max_seq_length=serving.max_seq_length or config.max_text_length,
                    normalize=serving.normalize, with_mlm_head=serving.mlm_head, prompts=serving.prompts)
    if run is not None:
      model_card.write_hub_files(staging, run[0], step=run[1], num_layers=num_layers or config.num_hidden_layers,
                                 mlm_head=serving.mlm_head)
    _upload(output, staging) if remote else _replace(output, staging)
  except OSError as e:
    raise StarbucksError(f"cannot write the export {output}: {outputs.os_problem(e)}") from None
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return output


def _replace(output: Path, staging: Path) -> None:
  """Renames `staging` to `output`; a previous export there is moved aside first and removed after, so a
  finished folder appears at once, never a half-written one."""
  previous = None
  if output.is_dir() and any(output.iterdir()):
    previous = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.previous-"))
    output.rename(previous / "export")
  elif output.is_dir():
    output.rmdir()
  staging.rename(output)
  if previous is not None:
    shutil.rmtree(previous)


def _upload(output, staging: Path) -> None:
  """Uploads `staging` over `output` in a bucket, config.json last; then removes what a previous export
  there had and this one has not."""
  before = set(storage.files_under(output)) if output.is_dir() else set()
  storage.upload_tree(staging, output, last=("config.json",))
  for name in sorted(before - set(storage.files_under(staging))):
    (output / name).unlink()


def export_params(workdir, params: dict, output, *, step: int, num_layers: int | None = None,
                  overwrite: bool = False):
  """Writes a Hugging Face folder from host `params` of the model that `workdir/model` describes."""
  workdir = storage.as_path(workdir)
  source = ModelSource(storage.local_copy(workdir / workdir_lib.MODEL_DIR, "the workdir's model folder"), workdir)
  serving = source.serving()
  # A pre-training run's export keeps its MLM head (BertForMaskedLM); its MAE decoder stays in the checkpoint.
  serving = ServingSettings(serving.pooling or "mean", serving.max_seq_length, serving.normalize,
                            serving.mlm_head and "mlm_head" in params, serving.prompts)
  write_export(params, source.config(), source.model_dir, output, serving=serving, num_layers=num_layers,
               overwrite=overwrite, run=(workdir, step))
  log.info("exported step %d to %s", step, output)
  return output


def export_model(source: ModelSource, output, *, num_layers: int | None = None, overwrite: bool = False,
                 pooling: str | None = None, max_seq_length: int | None = None, normalize: bool = False,
                 with_mlm_head: bool = False) -> Path:
  """Writes a Hugging Face folder from a folder or a workdir's checkpoint (`workdir.resolve`).

  A workdir's own settings are used (its pooling, max length, normalisation and MLM head); for a
  folder, `pooling` and `max_seq_length` default to its sentence-transformers settings.
  """
  check_export_output(output, overwrite=overwrite, source=source)
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
                            with_mlm_head, serving.prompts)  # a folder's prompts stay its own
  return write_export(params, config, source.model_dir, output, serving=serving, num_layers=num_layers,
                      overwrite=overwrite)
