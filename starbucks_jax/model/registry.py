"""The model families, by `model_type`: how a config.json becomes a config, and a config its family.

    config = read_config(folder / "config.json")   # BertConfig for model_type "bert"
    family = family_of(config)                       # its forward pass, names and sharding axes
    out = family.apply(params, input_ids, attention_mask, config=config, num_layers=4)

A new family registers here with one line (`FAMILIES`), or at run time with `register` (a plugin, a test).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starbucks_jax.errors import StarbucksError
from starbucks_jax.model import bert, gemma3, modernbert, qwen3, roberta
from starbucks_jax.model.config import EncoderConfig, read_config_json
from starbucks_jax.model.family import ModelFamily

FAMILIES: dict[str, ModelFamily] = {family.model_type: family for family in (
    bert.FAMILY,
    roberta.FAMILY,
    roberta.XLM_FAMILY,
    modernbert.FAMILY,
    qwen3.FAMILY,
    gemma3.FAMILY,
)}


def register(family: ModelFamily) -> None:
  """Adds a family; its config's `model_type` must be new."""
  if family.model_type in FAMILIES and FAMILIES[family.model_type] is not family:
    raise StarbucksError(f"model_type {family.model_type!r} is registered already ({FAMILIES[family.model_type].name})")
  FAMILIES[family.model_type] = family


def family_for_type(model_type, source: str = "config.json") -> ModelFamily:
  if model_type not in FAMILIES:
    supported = ", ".join(repr(t) for t in sorted(FAMILIES))
    raise StarbucksError(f"{source}: model_type is {model_type!r}, but only {supported} models are supported")
  return FAMILIES[model_type]


def family_of(config: EncoderConfig) -> ModelFamily:
  """The family of a config made by `config_from_hf_dict` (or by a family's config class)."""
  return family_for_type(config.model_type, f"a {type(config).__name__}")


def pooling_or_default(pooling: str | None, config: EncoderConfig) -> str:
  """`pooling` when a folder or run names one, else the config's family's default."""
  return pooling or family_of(config).default_pooling


def config_from_hf_dict(hf: dict[str, Any], source: str = "config.json") -> EncoderConfig:
  """The config of whichever family `hf["model_type"]` names."""
  return family_for_type(hf.get("model_type"), source).config_class.from_hf_dict(hf, source=source)


def read_config(path: str | Path) -> EncoderConfig:
  """A config.json file as its family's config."""
  return config_from_hf_dict(read_config_json(path), source=str(path))
