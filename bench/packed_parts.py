"""How far packed micro-batches and packed GradCache chunks are from the unpacked steps, printed.

    python bench/packed_parts.py

The setup of `tests/training/test_packing_exact.py` (which holds each figure to 1e-5): three layers of
all-MiniLM-L6-v2 with dropout off, batch 8 of the shipped SNLI triplets (step 1), float32. For each case it
prints the loss of both steps, their relative difference and the largest gradient difference as a
fraction of the largest gradient entry:

  SRL in 2 packed micro-batches      against the unpacked micro-batches (the same in-batch negatives)
  SRL with packed GradCache, 4 chunks against the unpacked one-pass step (the same objective)
  SMAE in 2 packed micro-batches     against the unpacked micro-batches
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from starbucks_jax.data.smae import TextData, TextDataConfig
from starbucks_jax.data.srl import DataConfig, TrainData
from starbucks_jax.hf.load import default_model_dir, load_pretrained, load_tokenizer
from starbucks_jax.losses.smae import SmaeSpec, init_decoder_params
from starbucks_jax.model.mlm_head import init_mlm_head_params
from starbucks_jax.model.registry import family_of
from starbucks_jax.training import step as step_lib
from starbucks_jax.training.grad_cache import GradCacheConfig
from starbucks_jax.training.tasks.smae import SmaeStepSettings
from starbucks_jax.training.tasks.srl import SrlStepSettings, StarbucksConfig, make_loss_spec

SNLI = Path(__file__).resolve().parents[1] / "data" / "quickstart" / "snli_triplets.jsonl"


def loss_and_grads(settings, params, batch):
  fn = jax.jit(lambda p, b: step_lib.value_and_grad(settings, p, b, jax.random.key(0)))
  (loss, _), grads = fn(params, batch)
  return float(loss), jax.device_get(grads)


def report(name: str, unpacked, packed) -> None:
  (loss_a, grads_a), (loss_b, grads_b) = unpacked, packed
  scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(grads_a))
  worst = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)))
  print(f"{name:<36} loss {loss_a:.6f} / {loss_b:.6f} (relative {abs(loss_a - loss_b) / abs(loss_a):.1e}), "
        f"largest gradient difference {worst / scale:.1e} of the largest gradient")


def main() -> None:
  model_dir = default_model_dir()
  loaded, tokenizer = load_pretrained(model_dir), load_tokenizer(model_dir)
  config = loaded.config.replace(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_hidden_layers=3)
  params = dict(loaded.params, encoder=family_of(config).keep_layers(loaded.params["encoder"], 3))

  data = dict(source=str(SNLI), query_max_length=32, passage_max_length=48)
  spec = dataclasses.replace(make_loss_spec(StarbucksConfig(pairs=((1, 32), (3, 384))), config), group_size=2)
  plain = SrlStepSettings(model_config=config, spec=spec, pooling="mean")
  unpacked = TrainData(DataConfig(**data, same_length=False), tokenizer, global_batch_size=8, seed=0).batch(1)
  packed = lambda groups: TrainData(DataConfig(**data, packing=True), tokenizer, global_batch_size=8, seed=0,
                                    pack_groups=groups).batch(1)
  accum = dataclasses.replace(plain, grad_accum_steps=2)
  report("SRL, 2 micro-batches", loss_and_grads(accum, params, unpacked), loss_and_grads(accum, params, packed(2)))
  cached = dataclasses.replace(plain, grad_cache=GradCacheConfig(query_chunk=2))
  report("SRL, GradCache in 4 chunks", loss_and_grads(plain, params, unpacked),
         loss_and_grads(cached, params, packed(4)))

  params = dict(params, mlm_head=init_mlm_head_params(config, jax.random.key(1)))
  params["mae_decoder"] = init_decoder_params(params["encoder"], config)
  spec = SmaeSpec(pairs=((1, 32), (3, 384)), num_model_layers=3, hidden_size=384, encoder_mask_rate=0.2,
                  decoder_mask_rate=0.4)
  settings = SmaeStepSettings(model_config=config, spec=spec, grad_accum_steps=2)
  text = dict(source=str(SNLI), text_column="anchor", max_length=48)
  report("SMAE, 2 micro-batches",
         loss_and_grads(settings, params, TextData(TextDataConfig(**text), tokenizer, global_batch_size=8,
                                                   seed=0).batch(1)),
         loss_and_grads(settings, params, TextData(TextDataConfig(**text, packing=True), tokenizer,
                                                   global_batch_size=8, seed=0, pack_groups=2).batch(1)))


if __name__ == "__main__":
  main()
