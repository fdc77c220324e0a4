"""What an SRL loss trains: `SrlLossSpec`, and one sub-model's scores and loss under it.

`SrlLossSpec` names the schedule (`mode`), its (layer, dim) pairs or grid, the objective, the
similarity and the KL settings; construction validates all of it against the model's size. It is
frozen and hashable: `jax.jit` takes it as a static argument. `srl.py` documents the schedules and
computes the loss; `mse2d.py` computes the 2dmse schedule.

`pair_scores` gives one (layer, dim) sub-model's logits under the spec's similarity, and
`objective_loss` the spec's objective on them (`objectives.py`).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Optional

import jax.numpy as jnp

from starbucks_jax.errors import StarbucksError
from starbucks_jax.losses.contrastive import similarity_scores
from starbucks_jax.losses.objectives import OBJECTIVES, get_objective
from starbucks_jax.model.pooling import SIMILARITIES, l2_normalize
from starbucks_jax.pairs import Pair, pair_problem

MODES = ("starbucks", "2dmse", "grid", "separate")
KL_KINDS = ("scores", "embeddings", "none")

# Fields that only one family of modes reads; setting them elsewhere is a configuration mistake.
_STARBUCKS_KL_FIELDS = {"kl_weight": 1.0, "kl_temperature": 1.0, "embedding_kl_scale": 0.3}
_MSE2D_FIELDS = {"n_layers_per_step": 1, "n_dims_per_step": 1, "last_layer_weight": 1.0,
                 "prior_layers_weight": 1.0, "kl_div_weight": 1.0, "st_kl_temperature": 0.3}


@dataclasses.dataclass(frozen=True, kw_only=True)
class SrlLossSpec:
  """What `srl_loss` trains; frozen and hashable, so it can be a static argument of `jax.jit`.

  Construction validates (see `validate`) and turns lists into tuples.

  Attributes:
    mode: "starbucks" | "2dmse" | "grid" | "separate" (see the module docstring).
    num_model_layers: L, the encoder's number of layers.
    hidden_size: the pooled vectors' size.
    pairs: (layer, dim) pairs. starbucks: the trained pairs, strictly increasing in both layer and
      dim, the last one the full model; separate: exactly one pair; 2dmse: pairs to monitor
      (logged, not trained); grid: unused (must be empty).
    layers: grid: the layers; 2dmse: the candidate prior layers (0..L-1, 0 = embedding output).
    dims: grid: the dims; 2dmse: ST's matryoshka_dims. Both strictly increasing.
    objective: "mnrl" (in-batch negatives, G docs per query) or "cosent" (labelled pairs).
    similarity: "cosine" (scale * cos) or "dot" (dot / temperature).
    scale: cosine logit scale (sentence-transformers' default 20).
    temperature: dot-product temperature (Tevatron's default 1).
    normalize: L2-normalise after the cut (matters for "dot"; cosine normalises anyway).
    group_size: G, docs per query (1 for pairs, 2 for triplets); 1 for cosent.
    pair_weights: w_p per `train_pairs()` entry (2dmse: one per dim); None = all 1.
    kl: starbucks / grid KL kind: "scores" | "embeddings" | "none" (unused by separate and 2dmse).
    kl_weight: lambda, the weight of the starbucks / grid KL terms.
    kl_temperature: tau of the score KL.
    embedding_kl_scale: the extra factor of the embedding KL (0.3 in the paper's STS code).
    n_layers_per_step: 2dmse: prior layers sampled per step (-1: all); ST default 1.
    n_dims_per_step: 2dmse: dims sampled per layer per step (-1: all); ST default 1.
    last_layer_weight: 2dmse: weight of the last layer's loss; ST default 1.
    prior_layers_weight: 2dmse: weight of the (averaged) prior layers' loss; ST default 1.
    kl_div_weight: 2dmse: weight of the embedding KL; ST default 1.
    st_kl_temperature: 2dmse: ST's kl_temperature T (softmax over coordinates of e / T, and the KL
      is multiplied by T); 0 switches the KL off; ST default 0.3.
  """
  mode: str = "starbucks"
  num_model_layers: int
  hidden_size: int
  pairs: tuple[Pair, ...] = ()
  layers: tuple[int, ...] = ()
  dims: tuple[int, ...] = ()
  objective: str = "mnrl"
  similarity: str = "cosine"
  scale: float = 20.0
  temperature: float = 1.0
  normalize: bool = False
  group_size: int = 1
  pair_weights: Optional[tuple[float, ...]] = None
  kl: str = "scores"
  kl_weight: float = 1.0
  kl_temperature: float = 1.0
  embedding_kl_scale: float = 0.3
  n_layers_per_step: int = 1
  n_dims_per_step: int = 1
  last_layer_weight: float = 1.0
  prior_layers_weight: float = 1.0
  kl_div_weight: float = 1.0
  st_kl_temperature: float = 0.3

  def __post_init__(self):
    # Lists (from a config file) become tuples, so the spec stays hashable.
    try:
      object.__setattr__(self, "pairs", tuple(tuple(p) for p in self.pairs))
    except TypeError:
      raise StarbucksError(f"pairs must be a sequence of (layer, dim) pairs, got {self.pairs!r}") from None
    object.__setattr__(self, "layers", tuple(self.layers))
    object.__setattr__(self, "dims", tuple(self.dims))
    if self.pair_weights is not None:
      object.__setattr__(self, "pair_weights", tuple(float(w) for w in self.pair_weights))
    self.validate()

  # --- validation -------------------------------------------------------------------------------

  def validate(self) -> None:
    """Raises StarbucksError naming the first problem found; construction calls it."""
    _one_of("mode", self.mode, MODES)
    _one_of("objective", self.objective, tuple(OBJECTIVES))
    _one_of("similarity", self.similarity, SIMILARITIES)
    _one_of("kl", self.kl, KL_KINDS)
    for name in ("num_model_layers", "hidden_size", "group_size"):
      value = getattr(self, name)
      if not _is_int(value) or value < 1:
        raise StarbucksError(f"{name} must be a positive integer, got {value!r}")
    if get_objective(self.objective).scored and self.group_size != 1:
      raise StarbucksError(f"the {self.objective} objective scores (sentence1, sentence2) pairs, so group_size "
                           f"must be 1, got {self.group_size}")
    for name in ("scale", "temperature", "kl_temperature"):
      if not getattr(self, name) > 0:
        raise StarbucksError(f"{name} must be > 0, got {getattr(self, name)!r}")
    if not self.st_kl_temperature >= 0:
      raise StarbucksError(f"st_kl_temperature must be >= 0 (0 switches the 2dmse KL off), got "
                           f"{self.st_kl_temperature!r}")
    for pair in self.pairs:
      if len(pair) != 2 or not all(_is_int(v) for v in pair):
        raise StarbucksError(f"each pair must be (layer, dim) integers, got {pair!r}")
    self._validate_mode_fields()
    self._validate_ranges()
    expected = len(self.dims) if self.mode == "2dmse" else len(self.train_pairs())
    if self.pair_weights is not None and len(self.pair_weights) != expected:
      what = "one per dim in dims" if self.mode == "2dmse" else "one per trained (layer, dim) pair"
      raise StarbucksError(f"pair_weights has {len(self.pair_weights)} entries, expected {expected} ({what}): "
                           f"{self.pair_weights}")

  def _validate_mode_fields(self) -> None:
    used = {"starbucks": ("pairs",), "separate": ("pairs",), "grid": ("layers", "dims"),
            "2dmse": ("pairs", "layers", "dims")}[self.mode]
    for name in ("pairs", "layers", "dims"):
      if name not in used and getattr(self, name):
        raise StarbucksError(f"mode {self.mode!r} does not use {name} (got {getattr(self, name)}); "
                             f"it reads {' and '.join(used)}")
    if self.mode in ("starbucks", "separate") and not self.pairs:
      raise StarbucksError(f"mode {self.mode!r} needs at least one (layer, dim) pair in pairs")
    if self.mode == "separate" and len(self.pairs) != 1:
      raise StarbucksError(f"mode 'separate' trains exactly one (layer, dim) pair, got {len(self.pairs)}: "
                           f"{self.pairs}")
    if self.mode in ("grid", "2dmse"):
      for name in ("layers", "dims"):
        values = getattr(self, name)
        if not values:
          raise StarbucksError(f"mode {self.mode!r} needs a non-empty {name}")
        if not all(_is_int(v) for v in values):
          raise StarbucksError(f"{name} must be integers, got {values}")
        if any(b <= a for a, b in zip(values, values[1:])):
          raise StarbucksError(f"{name} must be strictly increasing, got {values}")
    if self.mode == "starbucks":
      for before, after in zip(self.pairs, self.pairs[1:]):
        if not (after[0] > before[0] and after[1] > before[1]):
          raise StarbucksError(f"starbucks pairs must be strictly increasing in both layer and dim; {after} "
                               f"does not follow {before} (pairs {self.pairs})")
    if self.mode == "2dmse":
      if len(set(self.pairs)) != len(self.pairs):
        raise StarbucksError(f"2dmse monitor pairs contain a duplicate: {self.pairs}")
      if self.similarity == "dot" and not self.normalize:
        raise StarbucksError("2dmse L2-normalises every cut embedding (as sentence-transformers' MatryoshkaLoss "
                             "does); with dot similarity set normalize=True")
      for name in ("n_layers_per_step", "n_dims_per_step"):
        value = getattr(self, name)
        if not _is_int(value) or not (value == -1 or value >= 1):
          raise StarbucksError(f"{name} must be -1 (all) or a positive integer, got {value!r}")
    mode_fields = _MSE2D_FIELDS if self.mode != "2dmse" else _STARBUCKS_KL_FIELDS
    for name, default in mode_fields.items():
      if getattr(self, name) != default:
        owner = "mode '2dmse'" if self.mode != "2dmse" else "the starbucks and grid KL"
        raise StarbucksError(f"{name}={getattr(self, name)!r} only applies to {owner}, not mode {self.mode!r}")

  def _validate_ranges(self) -> None:
    last = self.num_model_layers
    if self.mode == "2dmse":
      for layer in self.layers:
        if not 0 <= layer < last:
          raise StarbucksError(f"2dmse layer {layer} is not a prior-layer candidate: use 0..{last - 1} (0 is the "
                               f"embedding output; the last layer {last} is always trained)")
    else:
      for layer in self.layers:
        if not 1 <= layer <= last:
          raise StarbucksError(f"layer {layer} is outside 1..{last} (num_model_layers)")
    for dim in self.dims:
      if not 1 <= dim <= self.hidden_size:
        raise StarbucksError(f"dim {dim} is outside 1..{self.hidden_size} (hidden_size)")
    for layer, dim in self.pairs:
      problem = pair_problem(layer, dim, last, self.hidden_size)
      if problem:
        raise StarbucksError(f"pair {(layer, dim)}: {problem}")

  # --- what the schedule trains, pools and logs -------------------------------------------------

  def train_pairs(self) -> tuple[Pair, ...]:
    """The fixed (layer, dim) pairs trained; for 2dmse, every candidate pair the sampling can pick."""
    if self.mode in ("starbucks", "separate"):
      return self.pairs
    layers = self.layers + (self.num_model_layers,) if self.mode == "2dmse" else self.layers
    return tuple(itertools.product(layers, self.dims))

  def weights(self) -> tuple[float, ...]:
    """pair_weights with the default filled in (2dmse: one per dim, else one per train pair)."""
    count = len(self.dims) if self.mode == "2dmse" else len(self.train_pairs())
    return self.pair_weights if self.pair_weights is not None else (1.0,) * count

  def pooled_layers(self) -> tuple[int, ...]:
    """The layers whose pooled vectors srl_loss reads, ascending (2dmse may include 0, the embeddings)."""
    layers = {layer for layer, _ in self.train_pairs()} | {layer for layer, _ in self.log_pairs()}
    return tuple(sorted(layers))

  def forward_layers(self) -> int:
    """The highest layer the encoder's forward pass must reach."""
    return max(self.pooled_layers())

  def log_pairs(self) -> tuple[Pair, ...]:
    """Pairs whose loss is logged every step (2dmse: the monitor pairs)."""
    return self.pairs if self.mode == "2dmse" else self.train_pairs()


def _one_of(name: str, value, allowed: tuple[str, ...]) -> None:
  if value not in allowed:
    raise StarbucksError(f"unknown {name} {value!r}; expected one of {', '.join(allowed)}")


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def pair_scores(query: jnp.ndarray, passage: jnp.ndarray, spec: SrlLossSpec, *, normalize: bool) -> jnp.ndarray:
  """[B, B*G] logits of (already cut) embeddings under `spec`'s similarity; normalise first when asked.

  `normalize` matters for "dot" only: "cosine" normalises inside `similarity_scores` anyway.
  """
  if normalize:
    query, passage = l2_normalize(query), l2_normalize(passage)
  return similarity_scores(query, passage, similarity=spec.similarity, scale=spec.scale,
                           temperature=spec.temperature)


def objective_loss(scores: jnp.ndarray, labels: Optional[jnp.ndarray], spec: SrlLossSpec) -> jnp.ndarray:
  """`spec`'s objective (`objectives.py`) on a pair's `pair_scores`."""
  return get_objective(spec.objective).loss(scores, labels, spec.group_size)
