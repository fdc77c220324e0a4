"""Run in a subprocess by test_sharding.py: one SRL or SMAE loss-and-gradient computation on a 1-device
mesh and on an 8-device mesh (fake CPU devices), printed as JSON differences. With a fourth argument
"fsdp" the 8 devices form a data=2 x fsdp=4 mesh and parameters, optimizer state and gradients are
sharded by the FSDP rules. A fifth argument sets the compute dtype (default float32). PROBE_FAMILY=roberta
or modernbert in the environment runs that family instead of BERT (its positions, its registry entry and
axes; ModernBERT's windows are 2 tokens each side of the 12-token rows). PROBE_LORA=r trains rank-r LoRA
adapters on the attention projections instead, the base frozen (`training/lora.py`); their b starts at noise
rather than zeros, so that both halves get gradients."""

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import json
import sys

import jax
import ml_collections
import numpy as np

from starbucks_jax.losses.smae import SmaeSpec, init_decoder_params
from starbucks_jax.losses.srl_spec import SrlLossSpec
from starbucks_jax.model.registry import family_for_type, family_of
from starbucks_jax.model.mlm_head import init_mlm_head_params
from starbucks_jax.runtime import sharding
from starbucks_jax.training import step as train_step
from starbucks_jax.training.tasks.smae import SmaeStepSettings
from starbucks_jax.training.tasks.srl import SrlStepSettings


def main(dropout: float, accum: int, mode: str, fsdp: int = 1, dtype: str = "float32"):
  model_type = os.environ.get("PROBE_FAMILY", "bert")
  extra = {"local_attention": 4, "pad_token_id": 0} if model_type == "modernbert" else {}
  config = family_for_type(model_type).config_class(
      vocab_size=120, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=48,
      max_position_embeddings=66, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, **extra)
  params = family_of(config).init_params(config, jax.random.key(0))
  if mode == "smae":
    return main_smae(config, params, accum, fsdp, dtype)
  if mode == "2dmse":
    spec = SrlLossSpec(mode="2dmse", num_model_layers=4, hidden_size=32, pairs=((1, 8), (2, 16), (4, 32)),
                       layers=(0, 1, 2, 3), dims=(8, 16, 32), group_size=2)
  else:
    spec = SrlLossSpec(mode="starbucks", num_model_layers=4, hidden_size=32, pairs=((1, 8), (2, 16), (4, 32)),
                       group_size=2, kl="scores")
  settings = SrlStepSettings(model_config=config, spec=spec, pooling="mean", grad_accum_steps=accum, dtype=dtype)
  rng = np.random.default_rng(0)
  queries, group, length = 16, 2, 12

  def side(rows):
    ids = rng.integers(5, 120, (rows, length)).astype(np.int32)
    mask = (np.arange(length)[None] < rng.integers(3, length + 1, (rows, 1))).astype(np.int32)
    return np.where(mask == 1, ids, config.pad_token_id), mask

  qi, qm = side(queries)
  pi, pm = side(queries * group)
  batch = {"query_input_ids": qi, "query_attention_mask": qm, "passage_input_ids": pi, "passage_attention_mask": pm}
  compare(params, batch, settings, fsdp)


def main_smae(config, params, accum, fsdp, dtype):
  params["mlm_head"] = init_mlm_head_params(config, jax.random.key(1))
  params["mae_decoder"] = init_decoder_params(params["encoder"], config)
  spec = SmaeSpec(pairs=((1, 8), (2, 16), (4, 32)), num_model_layers=4, hidden_size=32, mode="smae",
                  encoder_mask_rate=0.3, decoder_mask_rate=0.5)
  settings = SmaeStepSettings(model_config=config, spec=spec, grad_accum_steps=accum, dtype=dtype)
  rng = np.random.default_rng(0)
  rows, length = 16, 12
  ids = rng.integers(5, 120, (rows, length)).astype(np.int32)
  mask = (np.arange(length)[None] < rng.integers(4, length + 1, (rows, 1))).astype(np.int32)
  ids = ids * mask
  draw = rng.random(ids.shape)
  decoder_mask = (draw < 0.3) & (mask == 1) & (np.arange(length)[None] > 0)  # at most 0.5 x length per row
  encoder_mask = decoder_mask & (draw < 0.15)
  batch = {"input_ids": np.where(encoder_mask, 3, ids), "attention_mask": mask,
           "labels": np.where(encoder_mask, ids, -100).astype(np.int32),
           "decoder_input_ids": np.where(decoder_mask, 3, ids),
           "decoder_labels": np.where(decoder_mask, ids, -100).astype(np.int32)}
  compare(params, batch, settings, fsdp)


def init_state(params, tx):
  """The step's first state: the whole model trains, or (PROBE_LORA=r) rank-r adapters on a frozen base."""
  rank = int(os.environ.get("PROBE_LORA", "0"))
  if not rank:
    return train_step.init_state(params, tx, seed=3)
  from flax import traverse_util
  from starbucks_jax.training.lora import LoraConfig, Trainable
  lora = LoraConfig(rank=rank)
  paths = lora.matrices({k: v.shape for k, v in traverse_util.flatten_dict(params, sep="/").items()})
  state = Trainable(("encoder",), lora, paths).init_state(tx, seed=3)(params)
  leaves, tree = jax.tree_util.tree_flatten_with_path(state.params)
  adapters = tree.unflatten([x + 0.05 * jax.random.normal(jax.random.key(i), x.shape) if path[-1].key == "b" else x
                             for i, (path, x) in enumerate(leaves)])
  return state.replace(params=adapters, opt_state=tx.init(adapters))


def compare(params, batch, settings, fsdp):
  results = {}
  import jax.numpy as jnp
  import optax
  # An "optimizer" that keeps the step's (accumulated) gradients as its state and changes nothing: one
  # program per mesh gives the step's metrics and exactly the gradients it would apply.
  keep_grads = optax.GradientTransformation(
      lambda p: {"grads": jax.tree.map(jnp.zeros_like, p)},
      lambda g, state, p=None: (jax.tree.map(jnp.zeros_like, g), {"grads": g}))
  for devices in (1, 8):
    layout = {"data": devices // fsdp, "fsdp": fsdp} if devices == 8 else {"data": 1}
    mesh = sharding.make_mesh(ml_collections.ConfigDict(layout))
    rep, rows = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    state = init_state(params, keep_grads)
    state_layout = sharding.tree_shardings(state, mesh, family_of(settings.model_config).param_axes)

    def run_step(s, b, mesh=mesh):
      with sharding.activation_layout(mesh):  # as training/loop.py traces it
        return train_step.train_step(s, b, keep_grads, settings)

    step = jax.jit(run_step, in_shardings=(state_layout, rows), out_shardings=(state_layout, rep))
    placed = jax.device_put(state, state_layout)
    new_state, metrics = jax.device_get(step(placed, jax.device_put(batch, rows)))
    if devices == 8:
      sharded = sum(1 for x in jax.tree.leaves((placed.params, placed.frozen)) if not x.is_fully_replicated)
    results[devices] = (metrics, new_state.opt_state["grads"])
  (m1, g1), (m8, g8) = results[1], results[8]
  # Differences relative to each value's size (at least 1): float32 sums in another order differ by
  # about 1e-7 of their size, so a loss of 15 may move by 1e-6 while one of 0.5 moves by 5e-8.
  metric_diff = max(abs(float(m1[k]) - float(m8[k])) / max(1.0, abs(float(m1[k]))) for k in m1)
  grad_diff = max(float(np.abs(a - b).max()) / max(1.0, float(np.abs(a).max()))
                  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g8)))
  grad_scale = max(float(np.abs(a).max()) for a in jax.tree.leaves(g1))
  print(json.dumps({"loss_1": float(m1["loss"]), "loss_8": float(m8["loss"]), "metric_diff": metric_diff,
                    "grad_diff": grad_diff, "grad_scale": grad_scale, "devices": len(jax.devices()),
                    "sharded_params": sharded,
                    "metric_keys": sorted(m1)}))


if __name__ == "__main__":
  main(float(sys.argv[1]), int(sys.argv[2]), sys.argv[3], 4 if sys.argv[4:5] == ["fsdp"] else 1,
       *sys.argv[5:6])
