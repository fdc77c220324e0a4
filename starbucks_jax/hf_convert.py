"""Weight conversion between Hugging Face BERT state dicts and our parameter tree, both ways.

One explicit table (`EMBEDDING_NAMES`, `LAYER_NAMES`, `POOLER_NAMES`, `MLM_HEAD_NAMES`; `name_table(n)`
expands it for n layers) says which Hugging Face tensor is which of our parameters; import and export
both read it, and the parity and coverage tests check it. Hugging Face names are written in the `BertModel`
layout; the `BertForMaskedLM` / `BertForPreTraining` layouts put `bert.` before them and add `cls.*`.

Our tree: {"encoder": <bert.BertEncoder params>, "pooler": {kernel, bias}, "mlm_head": <mlm_head params>};
"mlm_head" only when the checkpoint has one.
"""

from __future__ import annotations

import dataclasses
import logging
import re

import jax
import numpy as np
from flax import traverse_util

from starbucks_jax import bert
from starbucks_jax.bert_config import BertConfig
from starbucks_jax.errors import StarbucksError

log = logging.getLogger(__name__)

# (Hugging Face name, our path, transpose?). "{i}" is the layer index. torch's Linear stores
# [out, in]; a Flax Dense kernel is [in, out], hence the transposes.
EMBEDDING_NAMES = (
    ("embeddings.word_embeddings.weight", "encoder/embeddings/word_embeddings/embedding", False),
    ("embeddings.position_embeddings.weight", "encoder/embeddings/position_embeddings/embedding", False),
    ("embeddings.token_type_embeddings.weight", "encoder/embeddings/token_type_embeddings/embedding", False),
    ("embeddings.LayerNorm.weight", "encoder/embeddings/layer_norm/scale", False),
    ("embeddings.LayerNorm.bias", "encoder/embeddings/layer_norm/bias", False),
)
LAYER_NAMES = (
    ("encoder.layer.{i}.attention.self.query.weight", "encoder/layer_{i}/attention/query/kernel", True),
    ("encoder.layer.{i}.attention.self.query.bias", "encoder/layer_{i}/attention/query/bias", False),
    ("encoder.layer.{i}.attention.self.key.weight", "encoder/layer_{i}/attention/key/kernel", True),
    ("encoder.layer.{i}.attention.self.key.bias", "encoder/layer_{i}/attention/key/bias", False),
    ("encoder.layer.{i}.attention.self.value.weight", "encoder/layer_{i}/attention/value/kernel", True),
    ("encoder.layer.{i}.attention.self.value.bias", "encoder/layer_{i}/attention/value/bias", False),
    ("encoder.layer.{i}.attention.output.dense.weight", "encoder/layer_{i}/attention/output/kernel", True),
    ("encoder.layer.{i}.attention.output.dense.bias", "encoder/layer_{i}/attention/output/bias", False),
    ("encoder.layer.{i}.attention.output.LayerNorm.weight", "encoder/layer_{i}/attention_layer_norm/scale", False),
    ("encoder.layer.{i}.attention.output.LayerNorm.bias", "encoder/layer_{i}/attention_layer_norm/bias", False),
    ("encoder.layer.{i}.intermediate.dense.weight", "encoder/layer_{i}/intermediate/kernel", True),
    ("encoder.layer.{i}.intermediate.dense.bias", "encoder/layer_{i}/intermediate/bias", False),
    ("encoder.layer.{i}.output.dense.weight", "encoder/layer_{i}/output/kernel", True),
    ("encoder.layer.{i}.output.dense.bias", "encoder/layer_{i}/output/bias", False),
    ("encoder.layer.{i}.output.LayerNorm.weight", "encoder/layer_{i}/output_layer_norm/scale", False),
    ("encoder.layer.{i}.output.LayerNorm.bias", "encoder/layer_{i}/output_layer_norm/bias", False),
)
POOLER_NAMES = (
    ("pooler.dense.weight", "pooler/kernel", True),
    ("pooler.dense.bias", "pooler/bias", False),
)
MLM_HEAD_NAMES = (
    ("cls.predictions.transform.dense.weight", "mlm_head/transform/kernel", True),
    ("cls.predictions.transform.dense.bias", "mlm_head/transform/bias", False),
    ("cls.predictions.transform.LayerNorm.weight", "mlm_head/layer_norm/scale", False),
    ("cls.predictions.transform.LayerNorm.bias", "mlm_head/layer_norm/bias", False),
    ("cls.predictions.bias", "mlm_head/bias", False),
)
# Present in some checkpoints, carrying nothing we keep: buffers, the NSP head, the tied decoder.
IGNORED_NAMES = re.compile(r"^(embeddings\.position_ids|embeddings\.token_type_ids|cls\.seq_relationship\..*"
                           r"|cls\.predictions\.decoder\.(weight|bias))$")


def name_table(num_layers: int) -> list[tuple[str, str, bool]]:
  """The full table for a model with `num_layers` layers (no pooler or head)."""
  layers = [(hf.format(i=i), ours.format(i=i), t) for i in range(num_layers) for hf, ours, t in LAYER_NAMES]
  return list(EMBEDDING_NAMES) + layers


def expected_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
  """Our path -> shape, for every parameter of a full model with pooler and MLM head."""
  h, ff, v = config.hidden_size, config.intermediate_size, config.vocab_size
  shapes = {
      "encoder/embeddings/word_embeddings/embedding": (v, h),
      "encoder/embeddings/position_embeddings/embedding": (config.max_position_embeddings, h),
      "encoder/embeddings/token_type_embeddings/embedding": (config.type_vocab_size, h),
      "encoder/embeddings/layer_norm/scale": (h,), "encoder/embeddings/layer_norm/bias": (h,),
      "pooler/kernel": (h, h), "pooler/bias": (h,),
      "mlm_head/transform/kernel": (h, h), "mlm_head/transform/bias": (h,),
      "mlm_head/layer_norm/scale": (h,), "mlm_head/layer_norm/bias": (h,), "mlm_head/bias": (v,),
  }
  per_layer = {"attention/query/kernel": (h, h), "attention/key/kernel": (h, h), "attention/value/kernel": (h, h),
               "attention/output/kernel": (h, h), "intermediate/kernel": (h, ff), "intermediate/bias": (ff,),
               "output/kernel": (ff, h)}
  for _, ours, _ in LAYER_NAMES:
    suffix = ours.split("/", 2)[2]
    for i in range(config.num_hidden_layers):
      shapes[ours.format(i=i)] = per_layer.get(suffix, (h,))
  return shapes


@dataclasses.dataclass
class LoadReport:
  """What an import did with each checkpoint tensor it did not map one-to-one."""
  missing: list[str] = dataclasses.field(default_factory=list)     # required, absent: an error
  unexpected: list[str] = dataclasses.field(default_factory=list)  # present, unknown: dropped with a warning
  ignored: list[str] = dataclasses.field(default_factory=list)     # present, known to carry nothing we keep
  initialized: list[str] = dataclasses.field(default_factory=list)  # absent, optional: freshly initialised
  has_mlm_head: bool = False

  def log(self, source: str) -> None:
    if self.unexpected:
      log.warning("%s: %d unexpected tensors were not loaded: %s", source, len(self.unexpected),
                  _abbreviate(self.unexpected))
    if self.initialized:
      log.info("%s: not in the checkpoint, initialised fresh: %s", source, ", ".join(self.initialized))
    if self.ignored:
      log.debug("%s: ignored %s", source, _abbreviate(self.ignored))
    log.debug("%s: MLM head %s", source, "loaded" if self.has_mlm_head else "absent")


def _abbreviate(names: list[str], limit: int = 8) -> str:
  shown = ", ".join(names[:limit])
  return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _normalise_name(name: str) -> str:
  """Strips the `bert.` prefix and renames TF-era LayerNorm gamma/beta."""
  if name.startswith("bert."):
    name = name[len("bert."):]
  return re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name))


def hf_to_params(state_dict: dict[str, np.ndarray], config: BertConfig, *, source: str = "checkpoint",
                 rng: jax.Array | None = None) -> tuple[dict, LoadReport]:
  """Converts a Hugging Face BERT state dict (any of the three layouts) to our float32 tree.

  Raises StarbucksError for a missing encoder tensor or a shape that disagrees with the config. A missing
  pooler is initialised (export needs one for `AutoModel`); an MLM head is kept if complete, else refused.
  """
  tensors: dict[str, np.ndarray] = {}
  for name, value in state_dict.items():
    normal = _normalise_name(name)
    if normal in tensors:
      raise StarbucksError(f"{source}: tensor {normal!r} appears twice (with and without the 'bert.' prefix)")
    tensors[normal] = value
  if "cls.predictions.bias" not in tensors and "cls.predictions.decoder.bias" in tensors:
    tensors["cls.predictions.bias"] = tensors["cls.predictions.decoder.bias"]  # older checkpoints

  report = LoadReport()
  shapes = expected_shapes(config)
  flat: dict[str, np.ndarray] = {}
  used: set[str] = set()

  def take(table):
    for hf_name, path, transpose in table:
      if hf_name not in tensors:
        continue
      value = np.asarray(tensors[hf_name], dtype=np.float32)
      value = value.T if transpose else value
      if value.shape != shapes[path]:
        raise StarbucksError(f"{source}: tensor {hf_name!r} has shape {tuple(value.shape)}, but the config "
                             f"needs {shapes[path]}")
      flat[path] = np.ascontiguousarray(value)
      used.add(hf_name)

  encoder_table = name_table(config.num_hidden_layers)
  take(encoder_table)
  report.missing = [hf for hf, _, _ in encoder_table if hf not in tensors]
  if report.missing:
    raise StarbucksError(f"{source}: {len(report.missing)} encoder tensors are missing, for example "
                         f"{_abbreviate(report.missing, 4)}")

  take(POOLER_NAMES)
  if not all(hf in tensors for hf, _, _ in POOLER_NAMES):
    pooler = bert.init_pooler_params(config, jax.random.key(0) if rng is None else rng)
    flat.update({f"pooler/{k}": np.asarray(v) for k, v in pooler.items()})
    report.initialized.append("pooler")

  head_present = [hf for hf, _, _ in MLM_HEAD_NAMES if hf in tensors]
  if head_present:
    absent = [hf for hf, _, _ in MLM_HEAD_NAMES if hf not in tensors]
    if absent:
      raise StarbucksError(f"{source}: the MLM head is incomplete, missing {', '.join(absent)}")
    take(MLM_HEAD_NAMES)
    report.has_mlm_head = True
    _check_decoder_is_tied(tensors, flat, source)

  for name in tensors:
    if name in used or name == "cls.predictions.decoder.bias":
      continue
    (report.ignored if IGNORED_NAMES.match(name) else report.unexpected).append(name)
  return traverse_util.unflatten_dict(flat, sep="/"), report


def _check_decoder_is_tied(tensors, flat, source):
  decoder = tensors.get("cls.predictions.decoder.weight")
  if decoder is not None and not np.array_equal(np.asarray(decoder, np.float32),
                                                flat["encoder/embeddings/word_embeddings/embedding"]):
    log.warning("%s: cls.predictions.decoder.weight differs from the word embeddings; we tie them, as BERT "
                "does, and use the word embeddings", source)


def params_to_hf(params: dict, config: BertConfig, *, num_layers: int | None = None,
                 layout: str = "BertModel") -> dict[str, np.ndarray]:
  """Our tree -> Hugging Face state dict (float32 numpy) for `layout` "BertModel" or "BertForMaskedLM".

  With `num_layers=n` only the embeddings and the first n layers are written.
  """
  num_layers = config.num_hidden_layers if num_layers is None else num_layers
  if not 1 <= num_layers <= config.num_hidden_layers:
    raise StarbucksError(f"num_layers must be in 1..{config.num_hidden_layers}, got {num_layers}")
  flat = traverse_util.flatten_dict(params, sep="/")
  if layout == "BertModel":
    table, prefix = name_table(num_layers) + list(POOLER_NAMES), ""
  elif layout == "BertForMaskedLM":
    if "mlm_head" not in params:
      raise StarbucksError("cannot export a BertForMaskedLM: the model has no MLM head")
    table, prefix = name_table(num_layers) + list(MLM_HEAD_NAMES), "bert."
  else:
    raise StarbucksError(f"unknown export layout {layout!r}; use 'BertModel' or 'BertForMaskedLM'")
  absent = [path for _, path, _ in table if path not in flat]
  if absent:
    raise StarbucksError(f"cannot export a {layout}: the parameter tree lacks {_abbreviate(absent, 4)}")
  state = {}
  for hf_name, path, transpose in table:
    value = np.asarray(jax.device_get(flat[path]), dtype=np.float32)
    name = hf_name if hf_name.startswith("cls.") else prefix + hf_name
    state[name] = np.ascontiguousarray(value.T if transpose else value)
  return state
