"""Starbucks Representation Learning (SRL) losses: which (layer, dim) sub-models train, and how.

A sub-model (n, d) embeds a text as the first d coordinates of layer n's pooled vector. The
training loop pools every layer of `spec.pooled_layers()` (running the encoder up to
`spec.forward_layers()`) and calls `srl_loss(query, passage, labels, spec, rng)` with dicts
{layer: [rows, hidden] float32}. `SrlLossSpec` is frozen and hashable: pass it to `jax.jit` as a
static argument. Four schedules (`mode`):

starbucks (the paper): a fixed, strictly increasing list of (n, d) pairs; "full" is the last one.
  loss = sum_p w_p * L_p + KL terms, where L_p is the contrastive (MNRL) or CoSENT loss of pair p.
  kl="scores" (default; the paper's retrieval code, ielab/Starbucks `retrieval/modeling.py`):
    + kl_weight * sum_{p != full} score_kl(s_p, s_full, kl_temperature), s_p the pair's in-batch
    logits [B, B*G] (the same logits L_p uses: scale * cos, or dot / temperature), teacher detached.
    For the cosent objective, s_p is the [B, B] matrix of scale * cos(sentence1_i, sentence2_j):
    CoSENT itself only looks at the diagonal, and the matrix is the distribution the KL compares.
  kl="embeddings" (the paper's sentence-transformers code, `sts/starbucks_loss.py`):
    + embedding_kl_scale * kl_weight * sum_{p != full} embedding_kl(e_p[:, :d_p], e_full[:, :d_p]),
    e the concatenated query and passage pooled vectors (unnormalised, not temperature-scaled),
    both cut to the sub-model's d, softmax over coordinates, teacher NOT detached (as the official
    code: its teacher `final_embeddings.clone()` keeps the graph). embedding_kl_scale is the
    official code's `kl_temperature` (0.3), which multiplies the KL there.
  kl="none": no KL term.
grid: starbucks over every n in `layers` x every d in `dims`; full = (max layer, max dim).
separate: one pair's loss alone (the caller cuts the model to n layers); no KL.
2dmse: sentence-transformers' `Matryoshka2dLoss`; `matryoshka2d_loss.py` documents its exact semantics
  and the sentence-transformers version followed (6.2.0).

Pair embeddings are `pooling.cut(pooled[n], d, normalize)`; "cosine" similarity normalises after
the cut regardless, and `normalize` matters for "dot" only. `pair_weights` are w_p in the order of
`train_pairs()` (for 2dmse: ST's `matryoshka_weights`, one per dim).

Metrics: "loss/n{n}_d{d}" is the (unweighted) contrastive / CoSENT loss of each `log_pairs()` pair,
"kl/n{n}_d{d}" the (unweighted) KL of each sub-model that has one. 2dmse adds its "2dmse/..." metrics
(see `matryoshka2d_loss.py`).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Mapping, Optional

import jax
import jax.numpy as jnp

from starbucks_jax import losses
from starbucks_jax import matryoshka2d_loss
from starbucks_jax import pooling
from starbucks_jax.errors import StarbucksError

MODES = ("starbucks", "2dmse", "grid", "separate")
OBJECTIVES = ("mnrl", "cosent")
KL_KINDS = ("scores", "embeddings", "none")

Pair = tuple[int, int]

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
    _one_of("objective", self.objective, OBJECTIVES)
    _one_of("similarity", self.similarity, losses.SIMILARITIES)
    _one_of("kl", self.kl, KL_KINDS)
    for name in ("num_model_layers", "hidden_size", "group_size"):
      value = getattr(self, name)
      if not _is_int(value) or value < 1:
        raise StarbucksError(f"{name} must be a positive integer, got {value!r}")
    if self.objective == "cosent" and self.group_size != 1:
      raise StarbucksError(f"the cosent objective scores (sentence1, sentence2) pairs, so group_size must be 1, "
                           f"got {self.group_size}")
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
      if not 1 <= layer <= last:
        raise StarbucksError(f"pair {(layer, dim)}: layer {layer} is outside 1..{last} (num_model_layers)")
      if not 1 <= dim <= self.hidden_size:
        raise StarbucksError(f"pair {(layer, dim)}: dim {dim} is outside 1..{self.hidden_size} (hidden_size)")

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


# --- input checks and metric names ------------------------------------------------------------


def _check_inputs(query: Mapping[int, jnp.ndarray], passage: Mapping[int, jnp.ndarray],
                  labels: Optional[jnp.ndarray], spec: SrlLossSpec) -> None:
  for name, pooled in (("query", query), ("passage", passage)):
    missing = [layer for layer in spec.pooled_layers() if layer not in pooled]
    if missing:
      raise StarbucksError(f"{name} pooled vectors lack layer(s) {missing}; pool spec.pooled_layers() = "
                           f"{spec.pooled_layers()}")
  some_layer = spec.pooled_layers()[0]
  batch, hidden = query[some_layer].shape
  rows = passage[some_layer].shape[0]
  if hidden != spec.hidden_size:
    raise StarbucksError(f"pooled vectors have {hidden} dims but the spec's hidden_size is {spec.hidden_size}")
  if rows != batch * spec.group_size:
    raise StarbucksError(f"passage has {rows} rows for {batch} queries; group_size {spec.group_size} needs "
                         f"{batch * spec.group_size}")
  if spec.objective == "cosent" and (labels is None or labels.shape != (batch,)):
    raise StarbucksError(f"the cosent objective needs labels of shape ({batch},), got "
                         f"{None if labels is None else labels.shape}")


def _key(prefix: str, pair: Pair) -> str:
  return f"{prefix}/n{pair[0]}_d{pair[1]}"


# --- starbucks, grid, separate ----------------------------------------------------------------


def _pair_schedule_loss(query, passage, labels, spec: SrlLossSpec):
  pairs = spec.train_pairs()
  full = pairs[-1]
  normalize = spec.normalize and spec.similarity == "dot"  # cosine normalises inside similarity_scores
  use_kl = spec.mode != "separate" and spec.kl != "none"
  scores = {pair: losses.pair_scores(pooling.cut(query[pair[0]], pair[1]), pooling.cut(passage[pair[0]], pair[1]),
                                     spec, normalize=normalize)
            for pair in pairs}
  metrics = {}
  total = jnp.zeros((), jnp.float32)
  for pair, weight in zip(pairs, spec.weights()):
    pair_loss = losses.objective_loss(scores[pair], labels, spec)
    metrics[_key("loss", pair)] = pair_loss
    total = total + weight * pair_loss
  if not use_kl:
    return total, metrics
  kl_terms = []
  for pair in pairs[:-1]:
    if spec.kl == "scores":
      kl = losses.score_kl(scores[pair], scores[full], spec.kl_temperature)
    else:
      student = _all_rows(query, passage, pair[0])[:, :pair[1]]
      teacher = _all_rows(query, passage, full[0])[:, :pair[1]]  # not detached, as the official STS code
      kl = losses.embedding_kl(student, teacher)
    metrics[_key("kl", pair)] = kl
    kl_terms.append(kl)
  if kl_terms:
    factor = spec.kl_weight * (spec.embedding_kl_scale if spec.kl == "embeddings" else 1.0)
    total = total + factor * sum(kl_terms)
  return total, metrics


def _all_rows(query, passage, layer: int) -> jnp.ndarray:
  """Every text of the batch at `layer`: [B + B*G, H] (order is irrelevant to a batchmean KL)."""
  return jnp.concatenate([query[layer], passage[layer]], axis=0).astype(jnp.float32)


# --- entry point ------------------------------------------------------------------------------


def srl_loss(query: Mapping[int, jnp.ndarray], passage: Mapping[int, jnp.ndarray], labels: Optional[jnp.ndarray],
             spec: SrlLossSpec, rng: jax.Array) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """The SRL loss of one (global) batch, and its metrics.

  Args:
    query: {layer: [B, H]} pooled query (cosent: sentence1) vectors, for every `spec.pooled_layers()`.
    passage: {layer: [B*G, H]} pooled docs, query-major (doc i*G is query i's positive, the next G-1
      its hard negatives); cosent: {layer: [B, H]} sentence2 vectors.
    labels: [B] similarity labels for cosent; None for mnrl.
    spec: the schedule (a static argument under jit).
    rng: drives the 2dmse draws; unused by the other modes.

  Returns:
    (scalar loss, {metric name: scalar}); see the module docstring for the metric names.
  """
  _check_inputs(query, passage, labels, spec)
  if spec.mode == "2dmse":
    return matryoshka2d_loss.mse2d_loss(query, passage, labels, spec, matryoshka2d_loss.sample_2dmse(spec, rng))
  return _pair_schedule_loss(query, passage, labels, spec)
