"""Time one SMAE pre-training step (forward, backward, AdamW) with and without gathering the masked
positions before the vocabulary projection; prints figures, asserts nothing.

    python bench/smae_step_time.py [--shape bert-base|minilm] [--batch 8] [--length 128] \
        [--mode smae|mlm2d|mlm] [--dtype float32|bfloat16] [--repeats 3] [--peak-gflops 390]

`--shape bert-base` is a random BERT-base (12 layers, hidden 768, vocabulary 30522) with the paper's six
pairs (2,32) ... (12,768); `minilm` is the packaged all-MiniLM-L6-v2 with a fresh head and the quickstart's
pairs. The batch is real text masked as in training (0.2 / 0.4, whole words): the SciFact abstracts of
`data/quickstart/pretrain_text.jsonl`, each longer than 128 tokens, so every row is a full random
window of `--length` tokens, as in pre-training on web documents. "gather" computes logits at each row's masked positions only (the
default); "no gather" at every position, as the official PyTorch code does. FLOPs are XLA's count for the
compiled step; the peak defaults to the 390 GFLOP/s a large float32 matmul reaches on the 2-core
development machine.
"""

import argparse
import json
import os
import statistics
import tempfile
import time

import jax

from starbucks_jax import bert, optim, train_step
from starbucks_jax.bert_config import BertConfig
from starbucks_jax.encoder import load_tokenizer
from starbucks_jax.mlm_head import init_mlm_head_params
from starbucks_jax.pretrain_data import TextData, TextDataConfig
from starbucks_jax.pretrained import default_model_dir, load_pretrained
from starbucks_jax.smae_loss import SmaeSpec, init_decoder_params
from starbucks_jax.train_config import BERT_BASE_PAIRS, smae_base_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINILM_PAIRS = ((1, 16), (2, 32), (3, 64), (4, 128), (5, 256), (6, 384))


def model_and_pairs(shape: str):
  if shape == "bert-base":
    config = BertConfig()  # bert-base-uncased's shape; random weights
    params = bert.init_params(config, jax.random.key(0), with_mlm_head=True)
    return config, params, BERT_BASE_PAIRS
  model = load_pretrained(default_model_dir())
  params = dict(model.params, mlm_head=init_mlm_head_params(model.config, jax.random.key(0)))
  return model.config, params, MINILM_PAIRS


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--shape", default="bert-base", choices=["bert-base", "minilm"])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--length", type=int, default=128)
  p.add_argument("--mode", default="smae", choices=["smae", "mlm2d", "mlm"])
  p.add_argument("--dtype", default="float32", choices=sorted(train_step.DTYPES))
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--peak-gflops", type=float, default=390.0)
  args = p.parse_args()

  config, params, pairs = model_and_pairs(args.shape)
  config = config.replace(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
  params["mae_decoder"] = init_decoder_params(params["encoder"])
  if args.mode == "mlm":
    pairs = ((config.num_hidden_layers, config.hidden_size),)
  long_texts = os.path.join(tempfile.mkdtemp(), "long_texts.jsonl")
  with open(os.path.join(REPO, "data", "quickstart", "pretrain_text.jsonl")) as f, open(long_texts, "w") as out:
    out.writelines(line for line in f if json.loads(line)["source"] == "scifact")
  data = TextData(TextDataConfig(source=long_texts, max_length=args.length), load_tokenizer(default_model_dir()),
                  global_batch_size=args.batch, seed=0, fixed_lengths=True)
  batch = data.batch(0)
  masked = int((batch["labels"] != -100).sum()), int((batch["decoder_labels"] != -100).sum())
  tx, _ = optim.make_optimizer(smae_base_config().optimizer, total_steps=1000,
                               trainable=("encoder", "mlm_head", "mae_decoder"))
  print(f"{args.shape}: {config.num_hidden_layers} layers, hidden {config.hidden_size}, vocabulary "
        f"{config.vocab_size}; mode {args.mode}; pairs {pairs}; {args.dtype}; dropout 0.1; batch {args.batch} x "
        f"{args.length} tokens; {masked[0]} encoder / {masked[1]} decoder masked tokens; {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s)")
  results = {}
  for gather in (True, False):
    spec = SmaeSpec(pairs=pairs, num_model_layers=config.num_hidden_layers, hidden_size=config.hidden_size,
                    mode=args.mode, encoder_mask_rate=0.2, decoder_mask_rate=0.4, gather=gather)
    settings = train_step.SmaeStepSettings(model_config=config, spec=spec, dtype=args.dtype)
    state = train_step.init_state(params, tx, seed=0)
    start = time.perf_counter()
    compiled = jax.jit(lambda s, b: train_step.train_step(s, b, tx, settings)).lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    flops = (cost[0] if isinstance(cost, (list, tuple)) else cost or {}).get("flops", 0.0)
    memory = compiled.memory_analysis()
    temp_gb = getattr(memory, "temp_size_in_bytes", 0) / 1e9
    jax.block_until_ready(compiled(state, batch))
    times = []
    for _ in range(args.repeats):
      begin = time.perf_counter()
      jax.block_until_ready(compiled(state, batch))
      times.append(time.perf_counter() - begin)
    step_s = statistics.median(times)
    results[gather] = step_s
    print(f"{'gather   ' if gather else 'no gather'}: step median of {args.repeats} {step_s:.2f} s "
          f"({min(times):.2f}-{max(times):.2f}); {args.batch / step_s:.2f} examples/s; "
          f"{args.batch * args.length / step_s:.0f} tokens/s; {flops / 1e9:.0f} GFLOP (XLA); "
          f"{flops / step_s / 1e9:.0f} GFLOP/s = {100 * flops / step_s / 1e9 / args.peak_gflops:.0f}% of "
          f"{args.peak_gflops:.0f}; compile {compile_s:.1f} s; XLA temp buffers {temp_gb:.2f} GB")
  print(f"gathering is {results[False] / results[True]:.2f}x faster")


if __name__ == "__main__":
  main()
