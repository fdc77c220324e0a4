"""The 2dmse schedule: a reproduction of sentence-transformers' `Matryoshka2dLoss`.

`srl_loss` (in `srl.py`; `srl_spec.py` validates the `SrlLossSpec`) calls
`mse2d_loss(query, passage, labels, spec, sample_2dmse(spec, rng))` for mode "2dmse", with the same
{layer: [rows, hidden] float32} pooled vectors as every mode. `pair_weights` are ST's
`matryoshka_weights`, one per dim.

Matryoshka2dLoss semantics (sentence-transformers 6.2.0: `sentence_transformer/losses/`
`matryoshka_2d.py`, `adaptive_layer.py`, `matryoshka.py`), with L = num_model_layers:
- Layer numbering is Hugging Face's hidden_states: 0 is the embedding output, n the output of layer
  n. ST's candidate prior layers are hidden_states 0 .. L-1: the embedding output IS a candidate.
  Here the candidates are `layers` (0 .. L-1 allowed); `st_2dmse_layers(L)` gives ST's set. The last
  layer L is always trained.
- Matryoshka dims: `dims` with `pair_weights` as ST's matryoshka_weights (default all 1). Each call
  of ST's MatryoshkaLoss draws `n_dims_per_step` distinct dims uniformly (all dims when -1 or >=
  len(dims)) and sums weight_k * loss at dim k; the embeddings are cut to d and ALWAYS L2-normalised
  (ST's `shrink`), which is why 2dmse with dot similarity requires normalize=True.
- loss = last_layer_weight * Matryoshka(layer L, dims drawn once)
       + sum over sampled prior layers j of Matryoshka(layer j, dims drawn afresh for each j)
         * layer_weight(j) / num_sampled_layers * prior_layers_weight
       + sum over sampled prior layers j of st_kl_temperature * kl_div_weight *
         KL(softmax(stop_grad(e_L) / T) || softmax(e_j / T)), T = st_kl_temperature, batchmean.
  `n_layers_per_step` distinct prior layers are drawn uniformly from the candidates (all when -1
  or >= the number of candidates). layer_weight is ST 6.2's default "uniform" weighting, 1 for
  every layer (older ST versions used 1 / (1 + j), now its "linear" option; the "log" and "linear"
  options are not offered here).
- The KL uses each layer's FULL-dimension, unnormalised pooled vectors (ST collects the model's
  output before `shrink`; for a Transformer + Pooling model, with no Normalize module, that is the
  pooled vector), for every column of the batch (queries, positives, negatives: N = B * (1 + G) rows),
  and DETACHES the last layer (ST #3757; older versions did not). T = 0 switches the KL off, as in ST.
- The sampled dims here are drawn by index from ascending `dims`; ST sorts descending, and uniform
  draws make that the same distribution.
Sampling runs inside jit from `rng`: the sampled layer is a dynamic index into a stacked
[layers, rows, hidden] array, and a sampled dim d zeroes the coordinates >= d, which leaves dot
products and norms (hence the normalised cut) exactly as cutting would, so nothing recompiles.
The `pairs` of a 2dmse spec are monitor pairs: their losses are logged (under stop_gradient) and
do not train.

Metrics: "loss/n{n}_d{d}" is the (unweighted) contrastive / CoSENT loss of each monitor pair (cut,
then normalised, as 2dmse trains); "2dmse/last_layer_loss", "2dmse/prior_layer_loss" (mean over
sampled layers), "2dmse/kl" (sum over sampled layers, unweighted), "2dmse/prior_layer",
"2dmse/last_dim" and "2dmse/prior_dim" (the first sampled layer / dims).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from starbucks_jax.errors import StarbucksError
from starbucks_jax.losses.contrastive import embedding_kl
from starbucks_jax.losses.negatives import mask_scores
from starbucks_jax.losses.srl_spec import SrlLossSpec, objective_loss, pair_scores
from starbucks_jax.model.pooling import cut
from starbucks_jax.pairs import metric_name


def st_2dmse_layers(num_model_layers: int) -> tuple[int, ...]:
  """sentence-transformers' 2dmse prior-layer candidates: the embedding output (0) and layers 1..L-1."""
  return tuple(range(num_model_layers))


class Mse2dSample(NamedTuple):
  """One step's 2dmse draws, as int32 indices (arrays, so they can be traced).

  Attributes:
    prior_layer_index: [k_l] indices into spec.layers of the sampled prior layers.
    last_dim_index: [k_d] indices into spec.dims for the last layer, ascending.
    prior_dim_index: [k_l, k_d] indices into spec.dims for each sampled prior layer, ascending.
  """
  prior_layer_index: jnp.ndarray
  last_dim_index: jnp.ndarray
  prior_dim_index: jnp.ndarray


def _num_drawn(per_step: int, available: int) -> int:
  return available if per_step == -1 or per_step >= available else per_step


def _draw(uniforms: jnp.ndarray, count: int) -> jnp.ndarray:
  """`count` distinct indices out of len(uniforms), uniformly, ascending; all of them when count == len.

  The indices of the `count` largest of iid uniforms form a uniformly random subset.
  """
  if count == uniforms.shape[0]:  # ST does not sample then; neither do we (no randomness, same order)
    return jnp.arange(count, dtype=jnp.int32)
  _, chosen = jax.lax.top_k(uniforms, count)
  return jnp.sort(chosen).astype(jnp.int32)


def sample_2dmse(spec: SrlLossSpec, rng: jax.Array) -> Mse2dSample:
  """The layers and dims that `srl_loss` draws for a 2dmse spec from `rng` (deterministic in rng)."""
  if spec.mode != "2dmse":
    raise StarbucksError(f"sample_2dmse needs a 2dmse spec, got mode {spec.mode!r}")
  num_candidates, num_all_dims = len(spec.layers), len(spec.dims)
  num_layers = _num_drawn(spec.n_layers_per_step, num_candidates)
  num_dims = _num_drawn(spec.n_dims_per_step, num_all_dims)
  # One draw of random bits for everything: row 0 picks the prior layers, row 1 the last layer's
  # dims, row 2 + j the dims of prior layer j (random-bit generation dominates compile time here).
  uniforms = jax.random.uniform(rng, (2 + num_layers, max(num_candidates, num_all_dims)))
  return Mse2dSample(
      prior_layer_index=_draw(uniforms[0, :num_candidates], num_layers),
      last_dim_index=_draw(uniforms[1, :num_all_dims], num_dims),
      prior_dim_index=jnp.stack([_draw(uniforms[2 + j, :num_all_dims], num_dims) for j in range(num_layers)]),
  )


def mse2d_loss(query, passage, labels, spec: SrlLossSpec, sample: Mse2dSample, false_negatives=None):
  """The 2dmse loss and metrics for given draws; `srl_loss` calls it with `sample_2dmse(spec, rng)`.
  `false_negatives` (or None) leave every contrastive loss's softmax (`negatives.py`); the KL has no candidates."""
  last = spec.num_model_layers
  hidden = spec.hidden_size
  dims = jnp.asarray(spec.dims, jnp.int32)
  dim_weights = jnp.asarray(spec.weights(), jnp.float32)

  def matryoshka(q, p, dim_index):
    """ST's MatryoshkaLoss at one layer: sum over the drawn dims of weight * loss of the normalised cut."""
    def at_dim(i):
      keep = (jnp.arange(hidden) < dims[i]).astype(jnp.float32)  # zeroing coords >= d == cutting to d
      scores = pair_scores(q * keep, p * keep, spec, normalize=True)
      return dim_weights[i] * objective_loss(mask_scores(scores, false_negatives), labels, spec)
    return jnp.sum(jax.vmap(at_dim)(dim_index))

  query = {layer: query[layer].astype(jnp.float32) for layer in spec.pooled_layers()}
  passage = {layer: passage[layer].astype(jnp.float32) for layer in spec.pooled_layers()}
  last_layer_loss = matryoshka(query[last], passage[last], sample.last_dim_index)

  stacked_query = jnp.stack([query[layer] for layer in spec.layers])      # [C, B, H]
  stacked_passage = jnp.stack([passage[layer] for layer in spec.layers])  # [C, B*G, H]
  prior_query = stacked_query[sample.prior_layer_index]                   # [k_l, B, H], dynamic index
  prior_passage = stacked_passage[sample.prior_layer_index]
  prior_losses = jax.vmap(matryoshka)(prior_query, prior_passage, sample.prior_dim_index)
  prior_layer_loss = jnp.mean(prior_losses)  # uniform layer weighting (1), averaged over the drawn layers

  total = spec.last_layer_weight * last_layer_loss + spec.prior_layers_weight * prior_layer_loss
  kl_sum = jnp.zeros((), jnp.float32)
  if spec.st_kl_temperature > 0:
    temperature = spec.st_kl_temperature
    every_row = jnp.concatenate([query[last], passage[last]], axis=0)  # [N, H], queries then docs
    teacher = jax.lax.stop_gradient(every_row) / temperature
    students = jnp.concatenate([prior_query, prior_passage], axis=1) / temperature  # [k_l, N, H]
    kl_sum = jnp.sum(jax.vmap(lambda student: embedding_kl(student, teacher))(students))
    total = total + kl_sum * temperature * spec.kl_div_weight

  layers = jnp.asarray(spec.layers, jnp.int32)
  metrics = {
      "2dmse/last_layer_loss": last_layer_loss,
      "2dmse/prior_layer_loss": prior_layer_loss,
      "2dmse/kl": kl_sum,
      "2dmse/prior_layer": layers[sample.prior_layer_index[0]].astype(jnp.float32),
      "2dmse/last_dim": dims[sample.last_dim_index[0]].astype(jnp.float32),
      "2dmse/prior_dim": dims[sample.prior_dim_index[0, 0]].astype(jnp.float32),
  }
  for layer, dim in spec.log_pairs():  # monitor pairs, normalised after the cut as 2dmse trains them
    q = jax.lax.stop_gradient(cut(query[layer], dim))
    p = jax.lax.stop_gradient(cut(passage[layer], dim))
    scores = pair_scores(q, p, spec, normalize=True)
    metrics[metric_name("loss", (layer, dim))] = objective_loss(mask_scores(scores, false_negatives), labels, spec)
  return total, metrics
