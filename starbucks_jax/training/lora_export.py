"""A LoRA run's adapters alone, in PEFT's layout (`python -m starbucks_jax.export --workdir DIR --adapters-only`).

The output folder gets `adapter_model.safetensors` and `adapter_config.json` as PEFT writes them for a
LoRA of the base's Hugging Face model (its `base_architecture`, e.g. `BertModel`), so that
`peft.PeftModel.from_pretrained(AutoModel.from_pretrained(base), folder)` applies them. Each adapted
matrix's torch module is named by the family's `HfNames` table, and our a [in, r], b [r, out] become
PEFT's `lora_A.weight` = a^T [r, in] and `lora_B.weight` = b^T [out, r]: PEFT's update (lora_alpha / r) *
B @ A is then our (alpha / r) * (a @ b)^T on the [out, in] torch weight. A matrix that is not a torch
Linear weight there (a table stored untransposed, such as the embeddings) has no place in that layout,
and is refused: export the merged model instead (the default).
"""

from __future__ import annotations

import json

import numpy as np
from safetensors.numpy import save

from starbucks_jax.errors import StarbucksError
from starbucks_jax.hf.convert import name_table
from starbucks_jax.model.lora import adapted
from starbucks_jax.model.registry import family_of
from starbucks_jax.runtime import checkpoints, outputs, workdir as workdir_lib
from starbucks_jax.training.export import check_export_output

WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
PEFT_PREFIX = "base_model.model."


def peft_tensors(adapters: dict, config) -> tuple[dict[str, np.ndarray], list[str]]:
  """({PEFT tensor name: array}, the adapted modules' names) of an adapter tree of a model with `config`."""
  names = family_of(config).hf_names
  rows = {ours: (hf, transpose) for hf, ours, transpose in name_table(names, config.num_hidden_layers)
          + list(names.pooler)}
  tensors, modules = {}, []
  for path, pair in sorted(adapted(adapters).items()):
    hf, transpose = rows.get(path, (None, False))
    if hf is None or not transpose or not hf.endswith(".weight"):
      raise StarbucksError(f"--adapters-only: {path} is not a torch Linear weight of the {names.base_architecture} "
                           "(PEFT's LoRA layout cannot hold its adapters); export the merged model instead")
    module = hf[:-len(".weight")]
    modules.append(module)
    tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(np.asarray(pair["a"], np.float32).T)
    tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(np.asarray(pair["b"], np.float32).T)
  return tensors, modules


def adapter_config(run_lora: dict, modules: list[str]) -> dict:
  """PEFT's LoraConfig of the run: its rank, alpha and modules, on its base (a name or a path)."""
  return {"peft_type": "LORA", "task_type": "FEATURE_EXTRACTION", "base_model_name_or_path": run_lora["base"],
          "r": run_lora["rank"], "lora_alpha": run_lora["alpha"], "lora_dropout": 0.0, "target_modules": modules,
          "bias": "none", "fan_in_fan_out": False, "inference_mode": True, "modules_to_save": None,
          "use_rslora": False, "use_dora": False}


def export_adapters(source, output, *, overwrite: bool = False):
  """Writes the adapters of a LoRA workdir's checkpoint (`source`: `workdir.resolve`) to `output`."""
  if source.workdir is None:
    raise StarbucksError(f"--adapters-only exports a LoRA training workdir's adapters; {source.name} is a model folder")
  run_lora = workdir_lib.read_model_dir(source.workdir)[1].get("lora")
  if not run_lora:
    raise StarbucksError(f"{source.workdir} is not a LoRA run (its lora.rank was 0): it has no adapters to "
                         "export; leave out --adapters-only")
  output = check_export_output(output, overwrite=overwrite, source=source)
  adapters, step = checkpoints.restore_params(source.workdir, source.step)
  tensors, modules = peft_tensors(adapters, source.config())
  weights = save(tensors, metadata={"format": "pt", "step": str(step)})
  text = json.dumps(adapter_config(run_lora, modules), indent=2) + "\n"
  try:
    output.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise StarbucksError(f"cannot write the adapters {output}: {outputs.os_problem(e)}") from None
  outputs.write_file(output / WEIGHTS_FILE, lambda f: f.write(weights), "the adapters")
  outputs.write_file(output / CONFIG_FILE, lambda f: f.write(text.encode()), "the adapter config")
  return output
