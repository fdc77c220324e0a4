"""A mixture's sources as a config writes them (`config.data.mixture`): names, weights, objectives,
instructions and each source's own data settings; `mixture.py` opens and orders them."""

from __future__ import annotations

import dataclasses
from typing import Mapping

from starbucks_jax.errors import StarbucksError

SAMPLINGS = ("size", "weights")
SHARED_FIELDS = ("same_length", "packing", "pack_length", "pack_rows", "mixture", "sampling", "mix_sources")


@dataclasses.dataclass(frozen=True)
class MixtureSource:
  """One source of a mixture (an entry of `config.data.mixture`).

  Attributes:
    name: its key; metrics are logged under `source/<name>/...`.
    weight: its share of the steps with `data.sampling="weights"` (any positive number).
    objective: its loss ("mnrl", "cosent", any registered); "": `starbucks.objective`, or "cosent" for
      scored pairs.
    instruction: what "{instruction}" stands for in its prompts.
    overrides: its DataConfig fields (source, kind, lengths, group size, prompts, ...).
  """
  name: str
  weight: float = 1.0
  objective: str = ""
  instruction: str = ""
  overrides: tuple = ()

  def prompt(self, template: str) -> str:
    """`template` with "{name}" and "{instruction}" filled in (other braces are left as they are)."""
    return template.replace("{name}", self.name).replace("{instruction}", self.instruction)


def mixture_entries(sources) -> dict:
  """The inverse of `parse_mixture`: {name: {field: value}} (what a config file writes)."""
  return {s.name: {**dict(s.overrides), "weight": s.weight, "objective": s.objective, "instruction": s.instruction}
          for s in sources}


def parse_mixture(value, where: str) -> tuple[MixtureSource, ...]:
  """`config.data.mixture` ({name: {field: value}}; empty: no mixture) as MixtureSources, in their names' order
  (a ConfigDict keeps no order of its own)."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if value in (None, (), [], {}):
    return ()
  if not isinstance(value, Mapping):
    raise StarbucksError(f"{where} must map each source's name to its settings, e.g. "
                         f"{{'snli': {{'source': 'snli.jsonl'}}}}, got {value!r:.80}")
  out = []
  for name, entry in sorted(value.items()):
    if hasattr(entry, "to_dict"):
      entry = entry.to_dict()
    if not isinstance(name, str) or not name or "/" in name:
      raise StarbucksError(f"{where}: a source's name must be a non-empty string without '/', got {name!r}")
    if not isinstance(entry, Mapping) or not entry.get("source"):
      raise StarbucksError(f"{where}.{name} must be a block of settings with a source, got {entry!r:.80}")
    entry = dict(entry)
    weight = entry.pop("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
      raise StarbucksError(f"{where}.{name}.weight must be a positive number, got {weight!r}")
    objective, instruction = entry.pop("objective", ""), entry.pop("instruction", "")
    for key, text in (("objective", objective), ("instruction", instruction)):
      if not isinstance(text, str):
        raise StarbucksError(f"{where}.{name}.{key} must be a string, got {text!r}")
    shared = sorted(set(entry) & set(SHARED_FIELDS))
    if shared:
      raise StarbucksError(f"{where}.{name} sets {', '.join(shared)}, which the sources share: set it in the "
                           "data block")
    out.append(MixtureSource(name, float(weight), objective, instruction, tuple(sorted(entry.items()))))
  return tuple(out)


MIXTURE_FIELDS = ("mixture", "sampling", "mix_sources")  # the data block's fields about the mixture itself


def source_block(data, source: MixtureSource):
  """One source's data block (a `srl.DataConfig`): `data`'s fields with the source's entries in their place and
  "{name}" / "{instruction}" filled in its prompts; its entries are checked as the data block's are."""
  from starbucks_jax import config_blocks  # pylint: disable=import-outside-toplevel
  values = {f.name: getattr(data, f.name) for f in dataclasses.fields(data) if f.name not in MIXTURE_FIELDS}
  values.update(dict(source.overrides))
  for name in ("query_prompt", "passage_prompt", "query_prefix", "passage_prefix"):
    if isinstance(values.get(name), str):
      values[name] = source.prompt(values[name])
  return config_blocks.from_config_dict(type(data), values, f"data.mixture.{source.name}")
