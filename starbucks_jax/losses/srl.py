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
2dmse: sentence-transformers' `Matryoshka2dLoss`; `mse2d.py` documents its exact semantics
  and the sentence-transformers version followed (6.2.0).

Pair embeddings are `pooling.cut(pooled[n], d, normalize)`; "cosine" similarity normalises after
the cut regardless, and `normalize` matters for "dot" only. `pair_weights` are w_p in the order of
`train_pairs()` (for 2dmse: ST's `matryoshka_weights`, one per dim).

Metrics: "loss/n{n}_d{d}" is the (unweighted) contrastive / CoSENT loss of each `log_pairs()` pair,
"kl/n{n}_d{d}" the (unweighted) KL of each sub-model that has one. 2dmse adds its "2dmse/..." metrics
(see `mse2d.py`). With clean negatives (`negatives.py`), "masked_negatives" is the number of (query,
candidate) entries taken out of the batch's softmaxes. The spec and its validation: `srl_spec.py`.
"""

from __future__ import annotations

from typing import Mapping, Optional

import jax
import jax.numpy as jnp

from starbucks_jax.errors import StarbucksError
from starbucks_jax.losses import contrastive, mse2d
from starbucks_jax.losses.negatives import mask_scores
from starbucks_jax.losses.objectives import get_objective
from starbucks_jax.losses.srl_spec import SrlLossSpec, objective_loss, pair_scores
from starbucks_jax.model.pooling import cut
from starbucks_jax.pairs import metric_name

MASKED_NEGATIVES = "masked_negatives"  # the metric: (query, candidate) entries masked in the batch

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
  if get_objective(spec.objective).scored and (labels is None or labels.shape != (batch,)):
    raise StarbucksError(f"the {spec.objective} objective needs labels of shape ({batch},), got "
                         f"{None if labels is None else labels.shape}")


# --- starbucks, grid, separate ----------------------------------------------------------------


def _pair_schedule_loss(query, passage, labels, spec: SrlLossSpec, false_negatives=None):
  pairs = spec.train_pairs()
  full = pairs[-1]
  normalize = spec.normalize and spec.similarity == "dot"  # cosine normalises inside similarity_scores
  use_kl = spec.mode != "separate" and spec.kl != "none"
  scores = {pair: pair_scores(cut(query[pair[0]], pair[1]), cut(passage[pair[0]], pair[1]), spec,
                              normalize=normalize)
            for pair in pairs}
  metrics = {}
  total = jnp.zeros((), jnp.float32)
  for pair, weight in zip(pairs, spec.weights()):
    pair_loss = objective_loss(mask_scores(scores[pair], false_negatives), labels, spec)
    metrics[metric_name("loss", pair)] = pair_loss
    total = total + weight * pair_loss
  if not use_kl:
    return total, metrics
  kl_terms = []
  for pair in pairs[:-1]:
    if spec.kl == "scores":
      kl = contrastive.score_kl(scores[pair], scores[full], spec.kl_temperature, false_negatives)
    else:
      student = _all_rows(query, passage, pair[0])[:, :pair[1]]
      teacher = _all_rows(query, passage, full[0])[:, :pair[1]]  # not detached, as the official STS code
      kl = contrastive.embedding_kl(student, teacher)
    metrics[metric_name("kl", pair)] = kl
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
             spec: SrlLossSpec, rng: jax.Array, false_negatives: Optional[jnp.ndarray] = None
             ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """The SRL loss of one (global) batch, and its metrics.

  Args:
    query: {layer: [B, H]} pooled query (cosent: sentence1) vectors, for every `spec.pooled_layers()`.
    passage: {layer: [B*G, H]} pooled docs, query-major (doc i*G is query i's positive, the next G-1
      its hard negatives); cosent: {layer: [B, H]} sentence2 vectors.
    labels: [B] similarity labels for cosent; None for mnrl.
    spec: the schedule (a static argument under jit).
    rng: drives the 2dmse draws; unused by the other modes.
    false_negatives: bool [B, B*G], candidates taken out of each query's softmax (`negatives.py`), or None.

  Returns:
    (scalar loss, {metric name: scalar}); see the module docstring for the metric names.
  """
  _check_inputs(query, passage, labels, spec)
  if spec.mode == "2dmse":
    loss, metrics = mse2d.mse2d_loss(query, passage, labels, spec, mse2d.sample_2dmse(spec, rng), false_negatives)
  else:
    loss, metrics = _pair_schedule_loss(query, passage, labels, spec, false_negatives)
  if false_negatives is not None:
    metrics[MASKED_NEGATIVES] = jnp.sum(false_negatives, dtype=jnp.float32)
  return loss, metrics
