"""GradCache against the plain step: the loss, every metric and every gradient of one training step on the
same batch, for each SRL schedule, with dropout on. Imported by test_grad_cache.py (one device), and run
as a script on 8 simulated devices (`python grad_cache_probe.py 2 4 [CASE ...]`: data=2 x fsdp=4) or in
several real processes (launch/local_cpu.sh N D python grad_cache_probe.py DATA FSDP [CASE ...]); it
prints one JSON line of the worst relative differences per case (process 0)."""

import json
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from starbucks_jax.losses.srl_spec import SrlLossSpec
from starbucks_jax.model import bert
from starbucks_jax.model.bert import BertConfig
from starbucks_jax.model.registry import family_for_type, family_of
from starbucks_jax.runtime import distributed, sharding
from starbucks_jax.training import step as train_step
from starbucks_jax.training.grad_cache import GradCacheConfig
from starbucks_jax.training.tasks.srl import SrlStepSettings

LAYERS, HIDDEN, VOCAB, QUERIES = 3, 32, 120, 16
PAIRS = ((1, 8), (2, 16), (3, 32))
# name: (SrlLossSpec fields, passages per query, query length, passage length, settings fields, GradCache).
# Queries and passages of one length are chunked together (8 queries and their passages a chunk); of two
# lengths apart (here 2 chunks of queries, 6 of passages).
CASES = {
    "starbucks-scores-kl": (dict(mode="starbucks", kl="scores"), 2, 12, 12, {}, GradCacheConfig(8)),
    "starbucks-embedding-kl": (dict(mode="starbucks", kl="embeddings"), 2, 12, 12, {}, GradCacheConfig(8)),
    "2dmse": (dict(mode="2dmse", layers=(0, 1, 2), dims=(8, 16, 32)), 2, 12, 12, {}, GradCacheConfig(8)),
    "grid": (dict(mode="grid", layers=(2, 3), dims=(16, 32), pairs=()), 2, 12, 12, {}, GradCacheConfig(8)),
    "cosent": (dict(mode="starbucks", kl="scores", objective="cosent"), 1, 12, 12, {}, GradCacheConfig(8)),
    "two-lengths-dot-remat": (dict(mode="starbucks", kl="scores", similarity="dot", temperature=0.5), 3, 8, 16,
                              {"remat": True, "pooling": "cls"}, GradCacheConfig(8, 8)),
    # Clean negatives (`losses/negatives.py`): the batch carries text ids with duplicated texts (`make_batch`).
    "starbucks-clean": (dict(mode="starbucks", kl="scores"), 2, 12, 12, {}, GradCacheConfig(8)),
    "2dmse-clean": (dict(mode="2dmse", layers=(0, 1, 2), dims=(8, 16, 32)), 2, 12, 12, {}, GradCacheConfig(8)),
}
CLEAN_CASES = ("starbucks-clean", "2dmse-clean")

# An "optimizer" that keeps the step's gradients as its state and changes nothing: the step's program
# then returns exactly the gradients it would apply.
KEEP_GRADS = optax.GradientTransformation(
    lambda p: {"grads": jax.tree.map(jnp.zeros_like, p)},
    lambda g, state, p=None: (jax.tree.map(jnp.zeros_like, g), {"grads": g}))


def model(dropout: float = 0.1, family: str = "bert"):
  """(config, random parameters) of a tiny BERT, or of a tiny Qwen3 (grouped heads, causal attention)."""
  if family == "qwen3":
    config = family_for_type("qwen3").config_class(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, intermediate_size=48, max_position_embeddings=64, attention_probs_dropout_prob=dropout,
        rope_theta=1e4)
    return config, family_for_type("qwen3").init_params(config, jax.random.key(0))
  config = BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
                      intermediate_size=48, max_position_embeddings=64, hidden_dropout_prob=dropout,
                      attention_probs_dropout_prob=dropout)
  return config, bert.init_params(config, jax.random.key(0))


def make_batch(group: int, query_length: int, passage_length: int, scored: bool, clean: bool = False) -> dict:
  """Random texts; `clean`: with text ids and duplicates (rows and ids copied): query 9 is query 2, query 5's
  hard negative is query 0's positive, query 7's positive is query 3's, query 11's hard negative its own
  positive; and labelled positives (3 a query): query 4 lists query 6's hard negative, query 13 query 1's
  positive, query 2 (and so query 9) query 12's positive."""
  rng = np.random.default_rng(0)

  def side(rows, length):
    ids = rng.integers(5, VOCAB, (rows, length)).astype(np.int32)
    mask = (np.arange(length)[None] < rng.integers(3, length + 1, (rows, 1))).astype(np.int32)
    return ids * mask, mask

  qi, qm = side(QUERIES, query_length)
  pi, pm = side(QUERIES * group, passage_length)
  batch = {"query_input_ids": qi, "query_attention_mask": qm, "passage_input_ids": pi, "passage_attention_mask": pm}
  if scored:
    batch["labels"] = rng.random(QUERIES).astype(np.float32)
  if clean:
    batch["query_text_ids"] = np.arange(QUERIES, dtype=np.int32)
    batch["passage_text_ids"] = np.arange(QUERIES * group, dtype=np.int32) + 1000
    for side, to, source in (("query", 9, 2), ("passage", 5 * group + 1, 0), ("passage", 7 * group, 3 * group),
                             ("passage", 11 * group + 1, 11 * group)):
      for key in (f"{side}_input_ids", f"{side}_attention_mask", f"{side}_text_ids"):
        batch[key][to] = batch[key][source]
    labelled = np.repeat(batch["passage_text_ids"][::group, None], 3, axis=1)
    for query, passage in ((4, 6 * group + 1), (13, 1 * group), (2, 12 * group)):
      labelled[query, 1:] = batch["passage_text_ids"][passage]
    batch["labelled_positive_ids"] = labelled
  return batch


def settings_for(case: str, config, dtype: str = "float32", grad_cache=None) -> SrlStepSettings:
  fields, group, _, _, extra, _ = CASES[case]
  spec = SrlLossSpec(**{"pairs": PAIRS, **fields}, num_model_layers=LAYERS, hidden_size=HIDDEN, group_size=group)
  pooling = {"pooling": family_of(config).default_pooling} if family_of(config).name != "bert" else {}
  return SrlStepSettings(model_config=config, spec=spec, dtype=dtype, grad_cache=grad_cache,
                         **{"pooling": "mean", **extra, **pooling})


def step_results(settings, params, batch: dict, mesh):
  """(metrics, gradients) of one step on `mesh`, as host numpy arrays on every process."""
  state_layout = sharding.tree_shardings(jax.eval_shape(lambda: train_step.init_state(params, KEEP_GRADS, 3)),
                                         mesh, family_of(settings.model_config).param_axes)
  rows = sharding.batch_sharding(mesh)

  def run_step(s, b):
    with sharding.activation_layout(mesh):  # as training/loop.py traces it
      return train_step.train_step(s, b, KEEP_GRADS, settings)

  state = jax.jit(lambda p: train_step.init_state(p, KEEP_GRADS, 3), out_shardings=state_layout)(params)
  local = {k: np.split(v, jax.process_count())[jax.process_index()] for k, v in batch.items()}
  step = jax.jit(run_step, in_shardings=(state_layout, rows), out_shardings=(state_layout, sharding.replicated(mesh)))
  new_state, metrics = step(state, sharding.put_batch(local, mesh))
  return jax.device_get(metrics), sharding.gather_to_host(new_state.opt_state["grads"], mesh)


def compare(case: str, mesh, dtype: str = "float32", family: str = "bert") -> dict:
  """The worst relative differences between the plain and the cached step: the loss; every metric (each
  pair's loss and KL, the gradient norm) relative to its size or 1, whichever is larger; and gradients: the largest difference in a leaf relative to the
  leaf's largest entry, or 1e-3 of the largest gradient anywhere if that is larger (a key bias's gradient
  is zero but for rounding), and the norm of all differences relative to the gradient's norm. `family`:
  "bert", or "qwen3" with its own default pooling (last)."""
  config, params = model(family=family)
  _, group, query_length, passage_length, _, chunks = CASES[case]
  batch = make_batch(group, query_length, passage_length, scored=CASES[case][0].get("objective") == "cosent",
                     clean=case in CLEAN_CASES)
  plain_metrics, plain_grads = step_results(settings_for(case, config, dtype), params, batch, mesh)
  cached_metrics, cached_grads = step_results(settings_for(case, config, dtype, chunks), params, batch, mesh)
  assert plain_metrics.keys() == cached_metrics.keys()
  loss_diff = abs(float(plain_metrics["loss"]) - float(cached_metrics["loss"])) / abs(float(plain_metrics["loss"]))
  metric_diff = max(abs(float(plain_metrics[k]) - float(cached_metrics[k])) / max(1.0, abs(float(plain_metrics[k])))
                    for k in plain_metrics)
  pairs = list(zip(jax.tree.leaves(plain_grads), jax.tree.leaves(cached_grads)))
  largest = max(float(np.abs(a).max()) for a, _ in pairs)
  grad_diff = max(float(np.abs(a - b).max()) / max(float(np.abs(a).max()), 1e-3 * largest) for a, b in pairs)
  norm = lambda arrays: float(np.sqrt(sum(float(np.sum(np.square(x, dtype=np.float64))) for x in arrays)))
  grad_norm_diff = norm([a - b for a, b in pairs]) / norm([a for a, _ in pairs])
  return {"loss": float(plain_metrics["loss"]), "loss_diff": loss_diff, "metric_diff": metric_diff, "grad_diff": grad_diff,
          "grad_norm_diff": grad_norm_diff,
          "grad_norm": float(plain_metrics["grad_norm"]), "metrics": len(plain_metrics),
          "masked_negatives": float(plain_metrics.get("masked_negatives", -1))}


def bfloat16_errors(case: str, mesh) -> dict:
  """How far the plain and the cached step's bfloat16 gradients are from the plain float32 step's (norm of
  the difference over the norm): bfloat16 rounds each chunk's weight gradients, so the two differ by
  bfloat16's error, not float32's."""
  config, params = model()
  _, group, query_length, passage_length, _, chunks = CASES[case]
  batch = make_batch(group, query_length, passage_length, scored=False)
  norm = lambda tree: float(np.sqrt(sum(float(np.sum(np.square(x, dtype=np.float64))) for x in jax.tree.leaves(tree))))
  distance = lambda a, b: norm(jax.tree.map(np.subtract, a, b)) / norm(b)
  _, reference = step_results(settings_for(case, config), params, batch, mesh)
  _, plain = step_results(settings_for(case, config, "bfloat16"), params, batch, mesh)
  _, cached = step_results(settings_for(case, config, "bfloat16", chunks), params, batch, mesh)
  return {"plain": distance(plain, reference), "cached": distance(cached, reference)}


def main(data: int, fsdp: int, cases: list[str]):
  distributed.initialize()
  mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": data, "fsdp": fsdp}))
  results = {case: compare(case, mesh) for case in cases or CASES}
  if jax.process_index() == 0:
    print(json.dumps({"devices": jax.device_count(), "processes": jax.process_count(), "cases": results}))


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])
