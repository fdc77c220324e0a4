"""SMAE pre-training step (forward, backward, AdamW) in starbucks_jax and in the official PyTorch form.

    python bench/smae_step.py --shape bert-base                    # 8 x 128 tokens, six pairs, fp32 CPU
    python bench/smae_step.py --shape minilm --batch 16
    python bench/smae_step.py --shape bert-base --dtype bfloat16 --batch 64 --length 512 --variants jax  # GPU
    python bench/smae_step.py --shape bert-base --dtype bfloat16 --batch 64 --length 512 --variants jax \
        --lengths bench/lengths/scifact_abstracts.json [--packing]     # SciFact abstract lengths (GPU)

Variants (--variants, comma-separated):
  jax           our step: vocabulary logits only at the masked positions (gathered first)
  jax-nogather  our step with logits at every position (what the official code computes)
  torch         the official formulation (bench/torch_peers.py `OfficialSmae`): transformers'
                BertForMaskedLM, full-vocabulary logits at every position for every pair, the
                one-layer MAE decoder fed each pair's transformed CLS vector
Shapes: bert-base (12 layers, hidden 768, the paper's six pairs), minilm (6 layers, hidden 384, 12
heads, the quickstart's pairs) or tiny (2 layers, hidden 128, 2 heads: quick checks), random weights saved
once to a Hugging Face folder that both frameworks load. The batch is real text masked as in training (0.2
encoder / 0.4 decoder, whole words): the SciFact abstracts of data/quickstart/pretrain_text.jsonl, each
longer than 128 tokens, as full windows of --length tokens. Model FLOPs (`starbucks_jax/training/flops.py`)
count the heads at the masked tokens only: the logits elsewhere are work the loss does not need, so the
no-gather variants get no credit for them.

Variable lengths and packing (jax and jax-nogather only):
  --lengths FILE  each text's token count (with [CLS] and [SEP]) drawn from a histogram of real data
              (bench/lengths/*.json, see its README), cut at --length as the data loader crops; random
              token ids, masked as in training (data/masking.py: whole words of the ids' WordPieces, 0.2
              encoder / 0.4 decoder of each text's tokens, BERT's 80/10/10). Unpacked, rows are padded as
              the trainer pads them (data/smae.py): to the smallest bucket (16, 32, ..., --length) that holds
              the longest text.
  --packing   the batch's texts (with --lengths, or the real-text windows without) laid end to end
              (data/packing.py, first-fit decreasing) in rows of --length tokens: as many rows as first-fit
              needs for this batch (a training run fixes ~10% more, data.pack_rows), or --pack-rows.
  With either, the table's FLOPs and MFU count the shapes actually executed: the encoder and each pair's
  decoder layer over the [rows, width] arrays (padding, and packed rows' whole-row attention, included), the
  MLM heads at the gathered slots (spec.slots per row; every position without gather); tok/s counts real
  tokens; a line per variant adds the padding ratio and the useful FLOPs (each text at its own length, heads
  at its labelled tokens) and their MFU. The peak is the H200's dense bf16 989 TFLOP/s there
  (`harness.peak_gflops`), the measured matmul rate on the CPU.
  --bf16-dot auto|on|off sets STARBUCKS_BF16_DOT (starbucks_jax/model/dense.py) before starbucks_jax loads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import harness  # noqa: E402

harness.set_bf16_dot_env(sys.argv)  # before starbucks_jax is imported

from starbucks_jax import pairs as pairs_lib  # noqa: E402
from starbucks_jax.data import packing  # noqa: E402
from starbucks_jax.data.batching import bucket_list  # noqa: E402
from starbucks_jax.data.masking import IGNORE, bert_replace, whole_word_masks  # noqa: E402
from starbucks_jax.data.smae import TextData, TextDataConfig  # noqa: E402
from starbucks_jax.hf.load import default_model_dir, load_pretrained, load_tokenizer  # noqa: E402
from starbucks_jax.losses.smae import SmaeSpec, init_decoder_params  # noqa: E402
from starbucks_jax.training import flops, optim, step as train_step  # noqa: E402
from starbucks_jax.training.tasks import smae as smae_task  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHAPES = {"bert-base": dict(hidden=768, layers=12, heads=12, intermediate=3072),
          "minilm": dict(hidden=384, layers=6, heads=12, intermediate=1536),
          "tiny": dict(hidden=128, layers=2, heads=2, intermediate=512)}  # quick checks
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


def make_variable_batch(folder: str, batch: int, length: int, lengths_file: str) -> dict:
  """`batch` texts of sampled lengths, random ids, each masked as TextData.example masks a text, padded to
  the trainer's bucket that holds the longest."""
  tokenizer = load_tokenizer(folder)
  special, vocab = frozenset(tokenizer.all_special_tokens), len(tokenizer)
  rng = np.random.default_rng(0)
  examples = []
  for n in harness.sample_lengths(lengths_file, batch, length, rng, least=3):
    ids = np.asarray([tokenizer.cls_token_id, *rng.integers(1000, 29000, n - 2), tokenizer.sep_token_id], np.int32)
    encoder_mask, decoder_mask = whole_word_masks(tokenizer.convert_ids_to_tokens(ids.tolist()), special,
                                                  ENCODER_RATE, DECODER_RATE, rng)
    e = {}
    e["input_ids"], e["labels"] = bert_replace(ids, encoder_mask, rng, mask_token_id=tokenizer.mask_token_id,
                                               vocab_size=vocab)
    e["decoder_input_ids"], e["decoder_labels"] = bert_replace(ids, decoder_mask, rng,
                                                               mask_token_id=tokenizer.mask_token_id, vocab_size=vocab)
    examples.append(e)
  width = next(b for b in bucket_list(None, length) if b >= max(len(e["input_ids"]) for e in examples))
  out = {}
  for key, pad in ROW_PADS.items():
    out[key] = np.full((batch, width), pad, np.int32)
    for i, e in enumerate(examples):
      out[key][i, :len(e[key])] = e[key]
  out["attention_mask"] = (np.arange(width)[None, :] < np.asarray([[len(e["input_ids"])] for e in examples]))
  out["attention_mask"] = out["attention_mask"].astype(np.int32)
  return out


ROW_PADS = {"input_ids": 0, "labels": IGNORE, "decoder_input_ids": 0, "decoder_labels": IGNORE}


def pack_batch(batch: dict, row_length: int, rows: int = 0) -> dict:
  """The unpacked batch's texts (each row's real tokens) packed as data/smae.py packs them (text i has id i);
  `rows` 0: as many rows as first-fit needs."""
  n = batch["attention_mask"].sum(axis=1).astype(np.int32)
  columns = {key: [batch[key][i, :n[i]] for i in range(len(n))] for key in ROW_PADS}
  out = packing.pack(columns, ROW_PADS, list(range(len(n))), length=row_length, rows=rows or 1)
  out["text_lengths"] = n
  return out


def layout_of(batch: dict) -> dict:
  """The batch's executed [rows, width], its texts' lengths and each text's labelled tokens."""
  rows, width = batch["input_ids"].shape
  if "segment_ids" in batch:
    texts = len(batch["text_lengths"])
    segment = batch["segment_ids"].reshape(-1)
    counted = lambda key: np.bincount(segment[(batch[key].reshape(-1) != IGNORE)], minlength=texts)[:texts]
    lengths = batch["text_lengths"]
  else:
    counted = lambda key: (batch[key] != IGNORE).sum(axis=1)
    lengths = batch["attention_mask"].sum(axis=1)
  return {"rows": rows, "width": width, "packed": "segment_ids" in batch, "lengths": np.asarray(lengths),
          "encoder_labels": counted("labels"), "decoder_labels": counted("decoder_labels")}


def layout_flops(config, pairs, spec_slots, layout: dict, gather: bool) -> tuple[float, float]:
  """(executed, useful) model FLOPs. Executed: the [rows, width] arrays through the encoder and the decoder
  layers, the heads at each row's gathered slots (every position without gather). Useful: each text at its
  own length, the heads at its labelled tokens."""
  rows, width = layout["rows"], layout["width"]
  slots = spec_slots if gather else (width, width)
  executed = flops.smae_step_flops(config, pairs=pairs, rows=rows, length=width,
                                   encoder_predicted=rows * slots[0], decoder_predicted=rows * slots[1])
  useful = sum(flops.smae_step_flops(config, pairs=pairs, rows=1, length=int(n), encoder_predicted=int(e),
                                     decoder_predicted=int(d))
               for n, e, d in zip(layout["lengths"], layout["encoder_labels"], layout["decoder_labels"]))
  return executed, useful



def jax_step(model, pairs, batch: dict, dtype: str = "float32", gather: bool = True, dropout: float = 0.1,
             remat: str = "dots"):
  """(step function, (state, batch)): our SMAE training step and its arguments."""
  config = model.config.replace(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
  params = dict(model.params, mae_decoder=init_decoder_params(model.params["encoder"], model.config))
  spec = SmaeSpec(pairs=pairs, num_model_layers=config.num_hidden_layers, hidden_size=config.hidden_size,
                  mode="smae", encoder_mask_rate=ENCODER_RATE, decoder_mask_rate=DECODER_RATE, gather=gather)
  settings = smae_task.SmaeStepSettings(model_config=config, spec=spec, dtype=dtype, remat=remat)
  tx, _ = optim.make_optimizer(smae_task.TASK.defaults["optimizer"], total_steps=1000,
                               trainable=("encoder", "mlm_head", "mae_decoder"))
  state = train_step.init_state(params, tx, seed=0)
  return (lambda s, b: train_step.train_step(s, b, tx, settings)), (state, batch)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--shape", default="bert-base", choices=sorted(SHAPES))
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--length", type=int, default=128)
  p.add_argument("--lengths", default=None, help="text lengths histogram (bench/lengths/*.json)")
  p.add_argument("--packing", action="store_true", help="pack the texts in rows of --length (data/packing.py)")
  p.add_argument("--pack-rows", type=int, default=0, help="packed rows; 0: as many as first-fit needs")
  p.add_argument("--remat", nargs="?", const="full", default="dots", choices=["none", "dots", "full"],
                 help="what each encoder layer recomputes (model/remat.py); --remat alone: full")
  p.add_argument("--bf16-dot", default="auto", choices=["auto", "on", "off"],
                 help="STARBUCKS_BF16_DOT: the custom bf16->f32 dot (model/dense.py); auto: on the CPU only")
  harness.add_step_flags(p, default_variants="jax,torch", default_repeats=3)
  args = p.parse_args()
  variants = harness.parse_variants(p, args, VARIANTS)
  variable = bool(args.lengths or args.packing)
  if variable and "torch" in variants:
    p.error("--lengths and --packing take the variants jax and jax-nogather only")

  folder, model, pairs = load(args.shape)
  if args.lengths:
    batch = make_variable_batch(folder, args.batch, args.length, args.lengths)
  else:
    batch = make_batch(folder, args.batch, args.length)
  if args.packing:
    batch = pack_batch(batch, args.length, args.pack_rows)
  if args.memory_of:
    harness.print_peak_memory(build(args.memory_of, args, folder, model, pairs, batch)[0])
    return
  masked = int((batch["labels"] != -100).sum()), int((batch["decoder_labels"] != -100).sum())
  peak, peak_note = harness.peak_gflops(args.peak_gflops, args.dtype)
  model_flops = flops.smae_step_flops(model.config, pairs=pairs, rows=args.batch, length=args.length,
                                      encoder_predicted=masked[0], decoder_predicted=masked[1])
  shape = f"{args.shape} {args.batch} x {args.length} tok"
  if not variable:
    def make_row(v, timing, peak_bytes, xla):
      return harness.Row("smae_step", v, shape, args.dtype, timing, args.batch, args.batch * args.length, model_flops,
                         peak, peak_bytes, xla, harness.command_line())
  else:
    layout = layout_of(batch)
    slots = tuple(smae_slots(layout["width"], rate, layout["packed"]) for rate in (ENCODER_RATE, DECODER_RATE))
    real, executed_tokens = int(layout["lengths"].sum()), layout["rows"] * layout["width"]
    kind = "packed" if layout["packed"] else "padded"
    shape += (" scifact-like lengths" if args.lengths and "scifact" in args.lengths else
              " sampled lengths" if args.lengths else "") + f", {kind} {layout['rows']} x {layout['width']}"

    def make_row(v, timing, peak_bytes, xla):
      executed, useful = layout_flops(model.config, pairs, slots, layout, gather=v == "jax")
      extra = {"layout": f"{kind} {layout['rows']} x {layout['width']}", "packed": layout["packed"],
               "texts": args.batch, "real_tokens": real, "executed_tokens": executed_tokens,
               "padding_ratio": 1 - real / executed_tokens, "useful_gflop": useful / 1e9,
               "bf16_dot": harness.bf16_dot_label(), "flops_counted": "executed shapes"}
      return harness.LayoutRow("smae_step", v, shape, args.dtype, timing, args.batch, real, executed, peak, peak_bytes, xla,
                       harness.command_line(), extra=extra)
  print(harness.machine())
  rows = harness.measure_variants(variants, args, lambda v: build(v, args, folder, model, pairs, batch), make_row)
  print(f"\nSMAE step, {shape}, {args.dtype}, pairs {pairs}, dropout 0.1, {masked[0]} encoder / {masked[1]} "
        f"decoder masked tokens, median of {args.repeats}"
        + (f", bf16 dot {rows[0].extra['bf16_dot']}" if variable else ""))
  harness.print_table(rows, f"{peak:.0f} GFLOP/s ({peak_note})")
  if variable:
    harness.print_layout(rows)
  by_name = {r.variant: r.step_s for r in rows}
  for ours in ("jax", "jax-nogather"):
    if ours in by_name and "torch" in by_name:
      print(f"{ours} is {by_name['torch'] / by_name[ours]:.2f}x as fast as the official-style torch step")
  harness.save_rows(rows, args.json)


def smae_slots(length: int, rate: float, packed: bool) -> int:
  """The loss's gathered positions per row (losses/smae.py SmaeSpec.slots)."""
  return SmaeSpec(pairs=((1, 1),), num_model_layers=1, hidden_size=1).slots(length, rate, packed)


def build(variant: str, args, folder: str, model, pairs, batch: dict):
  """(run one step, compile seconds or None, XLA's FLOP count or None) for `variant`."""
  if variant.startswith("jax"):
    fn, (state, batch) = jax_step(model, pairs, batch, args.dtype, gather=variant == "jax", remat=args.remat)
    step = harness.JaxStep(fn, state, batch, remat=args.remat)
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
