"""Writing a Hugging Face folder that transformers and sentence-transformers load, without torch.

The folder holds `config.json`, `model.safetensors` (written from numpy), the tokenizer files, and the
sentence-transformers files (`modules.json`, `1_Pooling/config.json`, `sentence_bert_config.json`,
`config_sentence_transformers.json`, and `{idx}_Dense/` for a model with Dense modules after pooling:
`model/dense_head.py`), so `SentenceTransformer(path, truncate_dim=d)` works. With `num_layers=n` it is a
standalone n-layer model.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np
from safetensors.numpy import save_file

from starbucks_jax.errors import StarbucksError
from starbucks_jax.hf import convert
from starbucks_jax.hf.load import TOKENIZER_FILES
from starbucks_jax.model.dense_head import KEY as DENSE_HEAD, ST_IDENTITY
from starbucks_jax.model.pooling import POOLINGS, pooling_kind
from starbucks_jax.model.registry import family_of


def save_pretrained(output_dir: str | Path, params: dict, config, *, tokenizer_dir: str | Path,
                    num_layers: int | None = None, pooling: str = "mean", max_seq_length: int = 512,
                    normalize: bool = False, with_mlm_head: bool = False, prompts: dict | None = None) -> Path:
  """Exports `params` as a Hugging Face folder; returns its path.

  `with_mlm_head` writes the family's masked-LM layout (`BertForMaskedLM`: MLM head, no pooler) instead of
  its base one (`BertModel`).
  `normalize` adds sentence-transformers' Normalize module (it runs before `truncate_dim`'s cut, so
  truncated vectors are then not unit length; cosine similarity does not care).
  `prompts` ({"query": ..., "document": ...}, the texts the model was trained to see before each side) go to
  `config_sentence_transformers.json`, only the non-empty ones, so that `SentenceTransformer.encode_query` /
  `encode_document` put them before each text as training did.
  """
  pooling_kind(pooling)  # an unknown kind: the error names the known ones
  num_layers = config.num_hidden_layers if num_layers is None else num_layers
  if with_mlm_head:
    family_of(config).require_mlm("an export with the MLM head")
  names = family_of(config).hf_names
  layout = names.mlm_architecture if with_mlm_head else names.base_architecture
  state = convert.params_to_hf(params, config, num_layers=num_layers, layout=layout)
  tokenizer_files = [Path(tokenizer_dir) / f for f in TOKENIZER_FILES if (Path(tokenizer_dir) / f).is_file()]
  if not tokenizer_files:
    raise StarbucksError(f"no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {tokenizer_dir}")

  out = Path(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  exported_config = config.replace(num_hidden_layers=num_layers)
  _write_json(out / "config.json", exported_config.to_hf_dict(architecture=layout))
  save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
  # safetensors writes its file 0600; give it the mode of the folder's other files (the umask's).
  os.chmod(out / "model.safetensors", (out / "config.json").stat().st_mode & 0o777)
  for f in tokenizer_files:
    if f.resolve() != (out / f.name).resolve():
      shutil.copyfile(f, out / f.name)

  modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
             {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
             *_write_dense_head(out, params.get(DENSE_HEAD) or {}, first=2)]
  if normalize:  # after any Dense modules, as sentence-transformers orders them
    idx = len(modules)
    modules.append({"idx": idx, "name": str(idx), "path": f"{idx}_Normalize",
                    "type": "sentence_transformers.models.Normalize"})
    (out / f"{idx}_Normalize").mkdir(exist_ok=True)
  _write_json(out / "modules.json", modules)
  (out / "1_Pooling").mkdir(exist_ok=True)
  _write_json(out / "1_Pooling" / "config.json", {
      "word_embedding_dimension": config.hidden_size,
      **_st_pooling_flags(pooling),
  })
  _write_json(out / "sentence_bert_config.json",
              {"max_seq_length": min(max_seq_length, config.max_text_length), "do_lower_case": False})
  _write_json(out / "config_sentence_transformers.json", {
      "__version__": {"starbucks_jax": _version()},
      "prompts": {name: text for name, text in (prompts or {}).items() if text}, "default_prompt_name": None,
      "similarity_fn_name": "cosine",
  })
  return out


def _write_dense_head(out: Path, head: dict, first: int) -> list[dict]:
  """The model's Dense modules (`model/dense_head.py`) as sentence-transformers Dense folders `{idx}_Dense`
  from index `first` on; returns their modules.json entries (none without a head)."""
  entries = []
  for offset, key in enumerate(sorted(head, key=int)):
    layer = {name: np.asarray(jax.device_get(value), np.float32) for name, value in head[key].items()}
    idx = first + offset
    folder = out / f"{idx}_Dense"
    folder.mkdir(exist_ok=True)
    in_features, out_features = layer["kernel"].shape
    _write_json(folder / "config.json", {"in_features": in_features, "out_features": out_features,
                                         "bias": "bias" in layer, "activation_function": ST_IDENTITY})
    tensors = {"linear.weight": np.ascontiguousarray(layer["kernel"].T)}
    if "bias" in layer:
      tensors["linear.bias"] = layer["bias"]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    os.chmod(folder / "model.safetensors", (folder / "config.json").stat().st_mode & 0o777)
    entries.append({"idx": idx, "name": str(idx), "path": folder.name, "type": "sentence_transformers.models.Dense"})
  return entries


def _st_pooling_flags(pooling: str) -> dict[str, bool]:
  """sentence-transformers' Pooling flags: the chosen kind's true, every other false (`pooling.POOLINGS`
  gives each kind's flag; max and mean-sqrt-len are kinds sentence-transformers has and we do not)."""
  flags = {kind.st_flag: kind.name == pooling for kind in POOLINGS.values()}
  return {**flags, "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}


def _write_json(path: Path, obj) -> None:
  path.write_text(json.dumps(obj, indent=2) + "\n")


def _version() -> str:
  from starbucks_jax import __version__
  return __version__
