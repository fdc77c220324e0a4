"""Weight conversion between Hugging Face state dicts and our parameter tree, both ways, for any family.

Each family's explicit name table (`HfNames`, e.g. `model/bert_names.py`) says which Hugging Face tensor
is which of our parameters; import and export both read it, and the parity and coverage tests check it.
Our tree: {"encoder": <the family's encoder params>, "pooler": {kernel, bias}, "mlm_head": <mlm_head
params>}; "mlm_head" only when the checkpoint has one, "pooler" only when the family has one.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import numpy as np
from flax import traverse_util

from starbucks_jax.errors import StarbucksError
from starbucks_jax.model.family import HfNames
from starbucks_jax.model.registry import family_of

log = logging.getLogger(__name__)


def name_table(names: HfNames, num_layers: int) -> list[tuple[str, str, bool]]:
  """The encoder's full table for a model with `num_layers` layers (no pooler or head)."""
  layers = [(hf.format(i=i), ours.format(i=i), t) for i in range(num_layers) for hf, ours, t in names.layer
            if not (i == 0 and hf in names.first_layer_skips)]
  return list(names.embeddings) + layers


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


def _normalised_tensors(state_dict: dict, names: HfNames, source: str) -> dict[str, np.ndarray]:
  """The state dict under base-layout names, older aliases filled in."""
  tensors: dict[str, np.ndarray] = {}
  for name, value in state_dict.items():
    normal = names.normalise(name)
    if normal in tensors:
      raise StarbucksError(f"{source}: tensor {normal!r} appears twice (with and without the "
                           f"{names.base_prefix!r} prefix)")
    tensors[normal] = value
  for name, older in names.aliases.items():
    if name not in tensors and older in tensors:
      tensors[name] = tensors[older]
  return tensors


def hf_to_params(state_dict: dict[str, np.ndarray], config, *, source: str = "checkpoint",
                 rng: jax.Array | None = None) -> tuple[dict, LoadReport]:
  """Converts a Hugging Face state dict (base, masked-LM or pre-training layout) to our float32 tree.

  Raises StarbucksError for a missing encoder tensor or a shape that disagrees with the config. A missing
  pooler is initialised (export needs one for `AutoModel`); an MLM head is kept if complete, else refused.
  """
  family = family_of(config)
  names = family.hf_names
  tensors = _normalised_tensors(state_dict, names, source)
  report = LoadReport()
  shapes = names.expected_shapes(config)
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

  encoder_table = name_table(names, config.num_hidden_layers)
  take(encoder_table)
  report.missing = [hf for hf, _, _ in encoder_table if hf not in tensors]
  if report.missing:
    raise StarbucksError(f"{source}: {len(report.missing)} encoder tensors are missing, for example "
                         f"{_abbreviate(report.missing, 4)}")

  take(names.pooler)
  if names.pooler and not all(hf in tensors for hf, _, _ in names.pooler):
    pooler = family.init_pooler_params(config, jax.random.key(0) if rng is None else rng)
    flat.update({f"pooler/{k}": np.asarray(v) for k, v in pooler.items()})
    report.initialized.append("pooler")

  if any(hf in tensors for hf, _, _ in names.mlm_head):
    absent = [hf for hf, _, _ in names.mlm_head if hf not in tensors]
    if absent:
      raise StarbucksError(f"{source}: the MLM head is incomplete, missing {', '.join(absent)}")
    take(names.mlm_head)
    report.has_mlm_head = True
    _check_decoder_is_tied(tensors, flat, names, source)

  for name in tensors:
    if name not in used and name not in names.aliases.values():
      (report.ignored if names.ignored.match(name) else report.unexpected).append(name)
  return traverse_util.unflatten_dict(flat, sep="/"), report


def _check_decoder_is_tied(tensors, flat, names: HfNames, source):
  decoder = tensors.get(names.tied_decoder) if names.tied_decoder else None
  if decoder is not None and not np.array_equal(np.asarray(decoder, np.float32),
                                                flat["encoder/embeddings/word_embeddings/embedding"]):
    log.warning("%s: %s differs from the word embeddings; we tie them, as the model does, and use the word "
                "embeddings", source, names.tied_decoder)


def params_to_hf(params: dict, config, *, num_layers: int | None = None,
                 layout: str | None = None) -> dict[str, np.ndarray]:
  """Our tree -> Hugging Face state dict (float32 numpy) for `layout`: the family's base architecture
  ("BertModel", the default) or its masked-LM one ("BertForMaskedLM").

  With `num_layers=n` only the embeddings and the first n layers are written.
  """
  names = family_of(config).hf_names
  layout = layout or names.base_architecture
  num_layers = config.num_hidden_layers if num_layers is None else num_layers
  if not 1 <= num_layers <= config.num_hidden_layers:
    raise StarbucksError(f"num_layers must be in 1..{config.num_hidden_layers}, got {num_layers}")
  flat = traverse_util.flatten_dict(params, sep="/")
  if layout == names.base_architecture:
    table, prefix = name_table(names, num_layers) + list(names.pooler), ""
  elif layout == names.mlm_architecture:
    if "mlm_head" not in params:
      raise StarbucksError(f"cannot export a {layout}: the model has no MLM head")
    table, prefix = name_table(names, num_layers) + list(names.mlm_head), names.base_prefix
  else:
    raise StarbucksError(f"unknown export layout {layout!r}; use {names.base_architecture!r} or "
                         f"{names.mlm_architecture!r}")
  absent = [path for _, path, _ in table if path not in flat]
  if absent:
    raise StarbucksError(f"cannot export a {layout}: the parameter tree lacks {_abbreviate(absent, 4)}")
  state = {}
  for hf_name, path, transpose in table:
    value = np.asarray(jax.device_get(flat[path]), dtype=np.float32)
    name = hf_name if hf_name.startswith(names.head_prefix) else prefix + hf_name
    state[name] = np.ascontiguousarray(value.T if transpose else value)
  return state
