"""SRL fine-tuning step (forward, backward, AdamW) in starbucks_jax and in its PyTorch peers, same batch.

    python bench/srl_step.py --shape minilm                         # all-MiniLM-L6-v2, 32 x (1+2) x 32 tokens
    python bench/srl_step.py --shape bert-base --queries 16 --length 64
    python bench/srl_step.py --shape bert-base --dtype bfloat16 --queries 128 --group 8 \
        --query-length 32 --length 196 --variants jax       # the MS MARCO shape, on a GPU
    python bench/srl_step.py --queries 256 --group 4 --variants jax,jax-cached --grad-cache 32
                                                            # GradCache against the plain step, same batch

Variants (--variants, comma-separated):
  jax         our step: SrlLossSpec starbucks, six pairs, score KL, cosine x 20, one forward pass
  torch       the PyTorch Starbucks-style step: a SentenceTransformer, forward hooks catching the six
              pairs' layers, ST's MultipleNegativesRankingLoss per pair plus the score KL (bench/torch_peers.py)
  jax-cached  our step through GradCache (training/grad_cache.py): chunks of --grad-cache queries and
              their passages, the same loss and gradients
  jax-2dmse   our 2DMSE step (mode 2dmse: ST's Matryoshka2dLoss semantics)
  torch-2dmse sentence-transformers' Matryoshka2dLoss(MultipleNegativesRankingLoss)
The batch: `--queries` queries and `--group` passages each (positive + hard negatives), fixed random
token ids, every position real, dropout 0.1. Both frameworks load the same weights from one Hugging Face
folder (MiniLM: the packaged model; BERT-base: random weights saved once). Model FLOPs are counted by
`starbucks_jax/training/flops.py` (matmuls only); the peak is the large-matmul rate measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import harness  # noqa: E402
from starbucks_jax import pairs as pairs_lib  # noqa: E402
from starbucks_jax.hf import load as pretrained  # noqa: E402
from starbucks_jax.losses.srl_spec import SrlLossSpec  # noqa: E402
from starbucks_jax.training import flops, optim, step as train_step  # noqa: E402
from starbucks_jax.training.grad_cache import GradCacheConfig  # noqa: E402
from starbucks_jax.training.tasks.srl import SrlStepSettings  # noqa: E402

VARIANTS = ("jax", "torch", "jax-cached", "jax-2dmse", "torch-2dmse")


def load(shape: str):
  """(Hugging Face folder, our model loaded from it, the six pairs) for --shape."""
  if shape == "minilm":
    folder = pretrained.default_model_dir()
  else:
    import torch_peers
    folder = torch_peers.random_bert_folder(tokenizer_dir=pretrained.default_model_dir())
  model = pretrained.load_pretrained(folder)
  return folder, model, tuple(pairs_lib.default_pairs(model.config))


def make_batch(queries: int, group: int, length: int, query_length: int = 0) -> dict:
  """Fixed random token ids, every position real; passages query-major (row i*G is query i's positive)."""
  rng = np.random.default_rng(0)
  q = harness.random_ids(rng, queries, query_length or length)
  p = harness.random_ids(rng, queries * group, length)
  return {"query_input_ids": q, "query_attention_mask": np.ones_like(q),
          "passage_input_ids": p, "passage_attention_mask": np.ones_like(p)}


def jax_step(model, pairs, batch: dict, group: int, dtype: str = "float32", mode: str = "starbucks",
             dropout: float = 0.1, remat: bool = False, grad_cache_chunk: int = 0):
  """(step function, (state, batch)): our SRL training step (SrlLossSpec `mode`) and its arguments."""
  config = model.config.replace(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
  layers, hidden = config.num_hidden_layers, config.hidden_size
  if mode == "starbucks":
    spec = SrlLossSpec(mode="starbucks", num_model_layers=layers, hidden_size=hidden, pairs=pairs, group_size=group)
  else:
    spec = SrlLossSpec(mode="2dmse", num_model_layers=layers, hidden_size=hidden, pairs=pairs,
                       layers=tuple(range(layers)), dims=tuple(d for _, d in pairs), group_size=group)
  settings = SrlStepSettings(model_config=config, spec=spec, dtype=dtype, remat=remat,
                             grad_cache=GradCacheConfig(grad_cache_chunk) if grad_cache_chunk else None)
  tx, _ = optim.make_optimizer(optim.OptimizerConfig(), total_steps=1000)
  state = train_step.init_state(model.params, tx, seed=0)
  return (lambda s, b: train_step.train_step(s, b, tx, settings)), (state, batch)


def build(variant: str, args, folder: str, model, pairs, batch: dict):
  """(run one step, compile seconds or None, XLA's FLOP count or None) for `variant`."""
  if variant.startswith("jax"):
    mode = "2dmse" if variant == "jax-2dmse" else "starbucks"
    chunk = args.grad_cache if variant == "jax-cached" else 0
    fn, (state, batch) = jax_step(model, pairs, batch, args.group, args.dtype, mode, remat=args.remat,
                                  grad_cache_chunk=chunk)
    step = harness.JaxStep(fn, state, batch)
    return step.run, step.compile_s, harness.xla_flops(step)
  import torch
  import torch_peers
  torch.manual_seed(0)
  st_model = torch_peers.sentence_transformer(folder, pooling="mean")
  st_model.train()
  if variant == "torch":
    loss = torch_peers.StarbucksStyleLoss(st_model, pairs)
  else:
    loss = torch_peers.st_matryoshka2d(st_model, [d for _, d in pairs])
  columns = [torch_peers.features_from_ids(batch["query_input_ids"], batch["query_attention_mask"])]
  passages = batch["passage_input_ids"].reshape(args.queries, args.group, -1)
  for k in range(args.group):  # ST's columns: positive, then each hard negative
    columns.append(torch_peers.features_from_ids(passages[:, k], np.ones_like(passages[:, k])))
  optimizer = torch_peers.adamw(st_model.parameters())
  return (lambda: torch_peers.train_step(lambda: loss(columns, None), optimizer, args.dtype)), None, None


def make_row(variant, args, timing, model_flops, peak, peak_bytes, xla) -> harness.Row:
  query_length = args.query_length or args.length
  tokens = args.queries * (query_length + args.group * args.length)
  shape = f"{args.shape} {args.queries}q x {args.group} x {query_length}/{args.length} tok"
  return harness.Row("srl_step", variant, shape, args.dtype, timing, args.queries, tokens, model_flops, peak,
                     peak_bytes, xla, harness.command_line())


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--shape", default="minilm", choices=["minilm", "bert-base"])
  p.add_argument("--queries", type=int, default=32)
  p.add_argument("--group", type=int, default=2, help="passages per query (1 positive + group-1 hard negatives)")
  p.add_argument("--length", type=int, default=32, help="passage tokens (and query tokens unless --query-length)")
  p.add_argument("--query-length", type=int, default=0)
  p.add_argument("--remat", action="store_true")
  p.add_argument("--grad-cache", type=int, default=32, help="jax-cached: queries per chunk")
  harness.add_step_flags(p, default_variants="jax,torch", default_repeats=5)
  args = p.parse_args()
  variants = harness.parse_variants(p, args, VARIANTS)

  folder, model, pairs = load(args.shape)
  batch = make_batch(args.queries, args.group, args.length, args.query_length)
  if args.memory_of:
    harness.print_peak_memory(build(args.memory_of, args, folder, model, pairs, batch)[0])
    return
  peak, peak_note = harness.peak_gflops(args.peak_gflops, args.dtype)
  # 2dmse trains two of the pairs a step, but the encoder work (all of the count that matters) is the same.
  model_flops = flops.srl_step_flops(model.config, pairs=pairs, queries=args.queries, group_size=args.group,
                                     query_length=args.query_length or args.length, passage_length=args.length)
  print(harness.machine())
  rows = harness.measure_variants(
      variants, args, lambda v: build(v, args, folder, model, pairs, batch),
      lambda v, timing, peak_bytes, xla: make_row(v, args, timing, model_flops, peak, peak_bytes, xla))
  print(f"\nSRL step, {rows[0].shape}, {args.dtype}, pairs {pairs}, score KL, dropout 0.1, median of {args.repeats}")
  harness.print_table(rows, f"{peak:.0f} GFLOP/s ({peak_note})")
  by_name = {r.variant: r.step_s for r in rows}
  for ours, theirs in (("jax", "torch"), ("jax-2dmse", "torch-2dmse")):
    if ours in by_name and theirs in by_name:
      print(f"{ours} is {by_name[theirs] / by_name[ours]:.2f}x as fast as {theirs}")
  if "jax" in by_name and "jax-cached" in by_name:
    memory = {r.variant: r.peak_bytes for r in rows}
    print(f"jax-cached takes {by_name['jax-cached'] / by_name['jax']:.2f}x the time of jax", end="")
    if memory.get("jax") and memory.get("jax-cached"):
      print(f", with {memory['jax'] / memory['jax-cached']:.2f}x less peak memory", end="")
    print()
  harness.save_rows(rows, args.json)


if __name__ == "__main__":
  main()
