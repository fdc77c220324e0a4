"""Config blocks: frozen dataclasses that hold one group of settings, read from and written to ConfigDicts.

A block's dataclass is the one place where its settings, their defaults and their checks live (in
`__post_init__`). Config files work with ml_collections ConfigDicts (`--config.optimizer.lr=1e-4`
overrides); the two meet here:

    cd = to_config_dict(OptimizerConfig())                   # the defaults, as a ConfigDict
    block = from_config_dict(OptimizerConfig, cd, "optimizer")  # checked, typed and frozen

`from_config_dict` refuses unknown keys and values of the wrong type with one message that names
`where.key`; a float setting takes an int, a tuple setting a list. A field whose metadata has
`"parse": fn` is read with `fn(value, "where.key")` instead (pairs, say); a field typed as a union
(`bool | str`) takes any value in its ConfigDict, and needs such a parse. A field whose metadata has
`"as_config": fn` is written to its ConfigDict as `fn(value)` (a mapping of entries: a data mixture). A field whose metadata has
`"flatten": True` is a mapping whose entries sit directly in the block's ConfigDict (the evaluation
block's one entry per evaluator). A field whose metadata has `"external": True` is left out both ways:
its caller reads and writes it (a training task's own blocks).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping

from starbucks_jax.errors import StarbucksError


def _hints(cls) -> dict[str, Any]:
  return typing.get_type_hints(cls)


def _optional(annotation) -> tuple[Any, bool]:
  """(the type inside Optional[...] / X | None, whether None is allowed)."""
  if typing.get_origin(annotation) in (typing.Union, types.UnionType):
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if len(args) == 1 and len(typing.get_args(annotation)) == 2:
      return args[0], True
  return annotation, False


def _is_union(annotation) -> bool:
  """A union of two or more types besides None (bool | str), which a ConfigDict field of one type would refuse."""
  return (typing.get_origin(annotation) in (typing.Union, types.UnionType)
          and len([a for a in typing.get_args(annotation) if a is not type(None)]) > 1)


def _placeholder_type(annotation):
  inner, _ = _optional(annotation)
  origin = typing.get_origin(inner) or inner
  return origin if origin in (int, float, str, bool, tuple) else object


def _default(field: dataclasses.Field):
  if field.default_factory is not dataclasses.MISSING:
    return field.default_factory()
  return field.default


def to_config_dict(block):
  """A block's values (or, given a block class, its defaults) as a ConfigDict; None values become typed
  placeholders, so that overrides parse. A class's defaults need not pass its checks: a data block's
  default source is empty until a config file sets it."""
  import ml_collections
  from ml_collections import config_dict
  cd = ml_collections.ConfigDict()
  cls = block if isinstance(block, type) else type(block)
  hints = _hints(cls)
  for field in dataclasses.fields(cls):
    value = _default(field) if isinstance(block, type) else getattr(block, field.name)
    if field.metadata.get("external"):
      continue
    if field.metadata.get("flatten"):
      for key, entry in value.items():
        cd[key] = entry
    elif field.metadata.get("as_config"):
      cd[field.name] = ml_collections.ConfigDict(field.metadata["as_config"](value))
    elif dataclasses.is_dataclass(value):
      cd[field.name] = to_config_dict(value)
    elif value is None:
      cd[field.name] = config_dict.placeholder(_placeholder_type(hints[field.name]))
    elif _is_union(hints[field.name]):  # e.g. bool | str: the ConfigDict takes either
      cd[field.name] = ml_collections.FieldReference(value, field_type=object)
    else:
      cd[field.name] = value
  return cd


def _convert(value, annotation, where: str):
  """`value` as `annotation` (int, float, bool, str, tuple[...], X | None, Any); raises naming `where`."""
  annotation, nullable = _optional(annotation)
  if value is None:
    if nullable or annotation is Any:
      return None
    raise StarbucksError(f"{where} must be set, got None")
  if annotation is Any or annotation is object:
    return value
  origin = typing.get_origin(annotation)
  if origin is tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
      raise StarbucksError(f"{where} must be a sequence, got {value!r}")
    args = typing.get_args(annotation)
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if len(args) != len(value):
      raise StarbucksError(f"{where} must have {len(args)} entries, got {value!r}")
    return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
  if annotation is bool:
    if not isinstance(value, bool):
      raise StarbucksError(f"{where} must be True or False, got {value!r}")
    return value
  if annotation is int:
    if isinstance(value, bool) or not isinstance(value, int):
      raise StarbucksError(f"{where} must be an integer, got {value!r}")
    return value
  if annotation is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise StarbucksError(f"{where} must be a number, got {value!r}")
    return float(value)
  if annotation is str:
    if not isinstance(value, str):
      raise StarbucksError(f"{where} must be a string, got {value!r}")
    return value
  return value


def from_config_dict(cls, values: Mapping, where: str):
  """A `cls` block from a ConfigDict or mapping of some of its fields (the rest keep their defaults)."""
  if hasattr(values, "to_dict"):
    values = values.to_dict()
  block = f"config.{where}" if where else "config"
  if not isinstance(values, Mapping):
    raise StarbucksError(f"{block} must be a block of settings, got {values!r}")
  values = dict(values)
  hints = _hints(cls)
  fields = [f for f in dataclasses.fields(cls) if not f.metadata.get("external")]
  flattened = [f for f in fields if f.metadata.get("flatten")]
  flat_keys = {key for f in flattened for key in f.default_factory()}  # type: ignore[misc]
  known = [f.name for f in fields if not f.metadata.get("flatten")] + sorted(flat_keys)
  unknown = sorted(set(values) - set(known))
  if unknown:
    raise StarbucksError(f"{block} has unknown field(s) {', '.join(unknown)}; known: {', '.join(known)}")
  kwargs = {}
  for field in fields:
    name = f"{where}.{field.name}" if where else field.name
    if field.metadata.get("flatten"):
      entries = field.default_factory()  # type: ignore[misc]
      value_type = typing.get_args(hints[field.name])[1]
      kwargs[field.name] = {key: _convert(values.get(key, default), value_type, f"{where}.{key}")
                            for key, default in entries.items()}
      continue
    if field.name not in values:
      continue
    value = values[field.name]
    if field.metadata.get("parse"):
      kwargs[field.name] = field.metadata["parse"](value, name)
    elif dataclasses.is_dataclass(hints[field.name]):
      kwargs[field.name] = from_config_dict(hints[field.name], value, name)
    else:
      kwargs[field.name] = _convert(value, hints[field.name], name)
  return cls(**kwargs)
