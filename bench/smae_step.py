"""SMAE pre-training step (forward, backward, AdamW) in starbucks_jax and in the official PyTorch form.

    python bench/smae_step.py --shape bert-base                    # 8 x 128 tokens, six pairs, fp32 CPU
    python bench/smae_step.py --shape minilm --batch 16
    python bench/smae_step.py --shape bert-base --dtype bfloat16 --batch 64 --length 512 --variants jax  # GPU

Variants (--variants, comma-separated):
  jax           our step: vocabulary logits only at the masked positions (gathered first)
  jax-nogather  our step with logits at every position (what the official code computes)
  torch         the official formulation (bench/torch_peers.py `OfficialSmae`): transformers'
                BertForMaskedLM, full-vocabulary logits at every position for every pair, the
                one-layer MAE decoder fed each pair's transformed CLS vector
Shapes: bert-base (12 layers, hidden 768, the paper's six pairs) or minilm (6 layers, hidden 384, 12
heads, the quickstart's pairs), random weights saved once to a Hugging Face folder that both frameworks
load. The batch is real text masked as in training (0.2 encoder / 0.4 decoder, whole words): the SciFact
abstracts of data/quickstart/pretrain_text.jsonl, each longer than 128 tokens, as full windows of
--length tokens. Model FLOPs (`starbucks_jax/training/flops.py`) count the heads at the masked tokens only: the
logits elsewhere are work the loss does not need, so the no-gather variants get no credit for them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


import harness  # noqa: E402
from starbucks_jax import pairs as pairs_lib  # noqa: E402
from starbucks_jax.data.smae import TextData, TextDataConfig  # noqa: E402
from starbucks_jax.hf.load import default_model_dir, load_pretrained, load_tokenizer  # noqa: E402
from starbucks_jax.losses.smae import SmaeSpec, init_decoder_params  # noqa: E402
from starbucks_jax.training import flops, optim, step as train_step  # noqa: E402
from starbucks_jax.training.tasks import smae as smae_task  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHAPES = {"bert-base": dict(hidden=768, layers=12, heads=12, intermediate=3072),
          "minilm": dict(hidden=384, layers=6, heads=12, intermediate=1536)}
VARIANTS = ("jax", "jax-nogather", "torch")
ENCODER_RATE, DECODER_RATE = 0.2, 0.4


def load(shape: str):
  """(Hugging Face folder with random weights and an MLM head, our model loaded from it, the pairs)."""
  import torch_peers
  folder = torch_peers.random_bert_folder(**SHAPES[shape], tokenizer_dir=default_model_dir())
  model = load_pretrained(folder)
  return folder, model, tuple(pairs_lib.default_pairs(model.config))


def make_batch(folder: str, batch: int, length: int) -> dict:
  long_texts = os.path.join(tempfile.mkdtemp(), "long_texts.jsonl")
  with open(REPO / "data" / "quickstart" / "pretrain_text.jsonl") as f, open(long_texts, "w") as out:
    out.writelines(line for line in f if json.loads(line)["source"] == "scifact")
  data = TextData(TextDataConfig(source=long_texts, max_length=length, encoder_mask_rate=ENCODER_RATE,
                                 decoder_mask_rate=DECODER_RATE),
                  load_tokenizer(folder), global_batch_size=batch, seed=0, fixed_lengths=True)
  return data.batch(0)


def jax_step(model, pairs, batch: dict, dtype: str = "float32", gather: bool = True, dropout: float = 0.1):
  """(step function, (state, batch)): our SMAE training step and its arguments."""
  config = model.config.replace(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
  params = dict(model.params, mae_decoder=init_decoder_params(model.params["encoder"], model.config))
  spec = SmaeSpec(pairs=pairs, num_model_layers=config.num_hidden_layers, hidden_size=config.hidden_size,
                  mode="smae", encoder_mask_rate=ENCODER_RATE, decoder_mask_rate=DECODER_RATE, gather=gather)
  settings = smae_task.SmaeStepSettings(model_config=config, spec=spec, dtype=dtype)
  tx, _ = optim.make_optimizer(smae_task.TASK.defaults["optimizer"], total_steps=1000,
                               trainable=("encoder", "mlm_head", "mae_decoder"))
  state = train_step.init_state(params, tx, seed=0)
  return (lambda s, b: train_step.train_step(s, b, tx, settings)), (state, batch)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--shape", default="bert-base", choices=sorted(SHAPES))
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--length", type=int, default=128)
  harness.add_step_flags(p, default_variants="jax,torch", default_repeats=3)
  args = p.parse_args()
  variants = harness.parse_variants(p, args, VARIANTS)

  folder, model, pairs = load(args.shape)
  batch = make_batch(folder, args.batch, args.length)
  if args.memory_of:
    harness.print_peak_memory(build(args.memory_of, args, folder, model, pairs, batch)[0])
    return
  masked = int((batch["labels"] != -100).sum()), int((batch["decoder_labels"] != -100).sum())
  peak, peak_note = harness.peak_gflops(args.peak_gflops, args.dtype)
  model_flops = flops.smae_step_flops(model.config, pairs=pairs, rows=args.batch, length=args.length,
                                      encoder_predicted=masked[0], decoder_predicted=masked[1])
  shape = f"{args.shape} {args.batch} x {args.length} tok"
  print(harness.machine())
  rows = harness.measure_variants(
      variants, args, lambda v: build(v, args, folder, model, pairs, batch),
      lambda v, timing, peak_bytes, xla: harness.Row("smae_step", v, shape, args.dtype, timing, args.batch,
                                                     args.batch * args.length, model_flops, peak, peak_bytes,
                                                     xla, harness.command_line()))
  print(f"\nSMAE step, {shape}, {args.dtype}, pairs {pairs}, dropout 0.1, {masked[0]} encoder / {masked[1]} "
        f"decoder masked tokens, median of {args.repeats}")
  harness.print_table(rows, f"{peak:.0f} GFLOP/s ({peak_note})")
  by_name = {r.variant: r.step_s for r in rows}
  for ours in ("jax", "jax-nogather"):
    if ours in by_name and "torch" in by_name:
      print(f"{ours} is {by_name['torch'] / by_name[ours]:.2f}x as fast as the official-style torch step")
  harness.save_rows(rows, args.json)


def build(variant: str, args, folder: str, model, pairs, batch: dict):
  """(run one step, compile seconds or None, XLA's FLOP count or None) for `variant`."""
  if variant.startswith("jax"):
    fn, (state, batch) = jax_step(model, pairs, batch, args.dtype, gather=variant == "jax")
    step = harness.JaxStep(fn, state, batch)
    return step.run, step.compile_s, harness.xla_flops(step)
  import torch
  import torch_peers
  torch.manual_seed(0)
  smae = torch_peers.OfficialSmae(folder, pairs).train()
  tensors = {k: torch.as_tensor(batch[k]).long() for k in ("input_ids", "attention_mask", "labels",
                                                          "decoder_input_ids", "decoder_labels")}
  optimizer = torch_peers.adamw(smae.parameters())
  return (lambda: torch_peers.train_step(lambda: smae(**tensors), optimizer, args.dtype)), None, None


if __name__ == "__main__":
  main()
