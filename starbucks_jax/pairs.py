"""(layer, dim) pairs: what a size of a 2D Matryoshka model is, how it is written, and whether a model has it.

A pair (n, d) is the sub-model that embeds a text as the first d coordinates of layer n's pooled vector.
Everything that reads, checks or names a pair goes through this module:

- `parse_pairs` reads pairs from a config value (a sequence of two-integer sequences), strictly;
  `parse_pair_text` reads the command line's "2:32,4:64".
- `pair_problem` says what is wrong with a pair for a model of L layers and H dims (None: nothing);
  `check_pair` / `check_pairs` raise it for a model config (any family's: it has `num_hidden_layers`
  and `hidden_size`).
- `metric_name("loss", (2, 32))` is "loss/n2_d32": the name in metrics.jsonl and TensorBoard, where a
  comma would be awkward; `result_key((2, 32))` is "2,32": the key of evaluation results (results.json,
  tables). `parse_result_key` reads the latter back.
- `default_dims`, `default_pairs`, `grid_pairs`: the sizes evaluated when none are named.
"""

from __future__ import annotations

import math
import operator
from typing import Iterable, Sequence

from starbucks_jax.errors import StarbucksError

Pair = tuple[int, int]

# The paper's BERT-base pair list: (layer, dim), small to large.
BERT_BASE_PAIRS = ((2, 32), (4, 64), (6, 128), (8, 256), (10, 512), (12, 768))


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _as_int(value):
  """An integer (numpy's too) as int; anything else (2.7, "2", True) as it is, for the checks to refuse."""
  if isinstance(value, bool):
    return value
  try:
    return operator.index(value)
  except TypeError:
    return value


def parse_pairs(value, what: str = "pairs") -> tuple[Pair, ...]:
  """A config's pairs as a tuple of (layer, dim) int tuples; anything else is a StarbucksError naming `what`.

  Integers only: (2.7, 32.9) is refused rather than cut to (2, 32).
  """
  if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
    raise StarbucksError(f"{what} must be a sequence of (layer, dim) pairs, got {value!r}")
  pairs = []
  for pair in value:
    if isinstance(pair, (str, bytes)) or not isinstance(pair, Iterable):
      raise StarbucksError(f"{what}: {pair!r} is not a (layer, dim) pair")
    pair = tuple(_as_int(v) for v in pair)
    if len(pair) != 2 or not all(_is_int(v) for v in pair):
      raise StarbucksError(f"{what}: each pair must be (layer, dim) integers, got {pair!r}")
    pairs.append(pair)
  return tuple(pairs)


def parse_pair_text(text: str) -> list[Pair]:
  """"2:32,4:64" -> [(2, 32), (4, 64)], duplicates dropped, order kept."""
  pairs = []
  for item in text.split(","):
    try:
      layer, dim = (int(x) for x in item.strip().split(":"))
    except ValueError:
      raise StarbucksError(f"--pairs item {item.strip()!r} is not LAYER:DIM (e.g. 2:32,4:64)") from None
    if (layer, dim) not in pairs:
      pairs.append((layer, dim))
  return pairs


def pair_problem(layer, dim, num_layers: int, hidden_size: int) -> str | None:
  """What makes (layer, dim) not a size of a model with `num_layers` layers of `hidden_size` dims, or None.
  Integers of any kind (numpy's too) are accepted; 2.5, "32" or True are not."""
  layer, dim = _as_int(layer), _as_int(dim)
  if not _is_int(layer) or not _is_int(dim):
    return f"layer and dim must be integers, got layer={layer!r}, dim={dim!r}"
  if not 1 <= layer <= num_layers:
    return f"layer {layer} is outside 1..{num_layers} (the model has {num_layers} layers)"
  if not 1 <= dim <= hidden_size:
    return f"dim {dim} is outside 1..{hidden_size} (the model's hidden size)"
  return None


def check_pair(model_config, layer, dim) -> None:
  """Raises a StarbucksError naming the problem when (layer, dim) is not a size of the model."""
  problem = pair_problem(layer, dim, model_config.num_hidden_layers, model_config.hidden_size)
  if problem:
    raise StarbucksError(problem)


def check_pairs(model_config, pairs: Sequence[Pair]) -> None:
  """`check_pair` for each pair; an empty list is an error too."""
  if not pairs:
    raise StarbucksError("no (layer, dim) pairs to evaluate")
  for layer, dim in pairs:
    check_pair(model_config, layer, dim)


def metric_name(prefix: str, pair: Pair) -> str:
  """"loss/n2_d32": a pair's name in metrics.jsonl and TensorBoard."""
  return f"{prefix}/n{pair[0]}_d{pair[1]}"


def result_key(pair: Pair) -> str:
  """"2,32": a pair's key in evaluation results."""
  return f"{pair[0]},{pair[1]}"


def parse_result_key(key: str) -> Pair:
  layer, dim = key.split(",")
  return int(layer), int(dim)


def default_dims(model_config) -> list[int]:
  """The five largest powers of two below the hidden size, then the hidden size (384: 16..256, 384)."""
  hidden_size = model_config.hidden_size
  below = [2 ** k for k in range(hidden_size.bit_length()) if 2 ** k < hidden_size]
  return below[-5:] + [hidden_size]


def default_pairs(model_config) -> list[Pair]:
  """Pair i of k = len(default_dims) (six unless the model is tiny) is (ceil(i * L / k), i-th dim).

  6 layers, hidden 384: (1,16) (2,32) (3,64) (4,128) (5,256) (6,384);
  12 layers, hidden 768: the paper's (2,32) (4,64) (6,128) (8,256) (10,512) (12,768).
  """
  dims = default_dims(model_config)
  layers = model_config.num_hidden_layers
  return [(math.ceil(i * layers / len(dims)), d) for i, d in enumerate(dims, 1)]


def grid_pairs(model_config) -> list[Pair]:
  """Every layer 1..L with every default dim."""
  return [(n, d) for n in range(1, model_config.num_hidden_layers + 1) for d in default_dims(model_config)]
