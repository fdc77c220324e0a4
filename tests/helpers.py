"""Shared test helpers: tiny random BERT folders made by transformers, batches, and short training runs."""

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def tiny_hf_config(**overrides):
  import transformers
  values = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                intermediate_size=48, max_position_embeddings=64, type_vocab_size=2, layer_norm_eps=1e-7)
  values.update(overrides)
  return transformers.BertConfig(**values)


def randomize(model, seed: int = 0):
  """Fills every tensor (LayerNorm too) with noise, so a swapped or misnamed tensor cannot go unseen."""
  import torch
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
  return model.eval()


def save_with_tokenizer(model, folder: Path, minilm: Path) -> Path:
  import shutil
  model.save_pretrained(str(folder))
  for name in TOKENIZER_FILES:
    shutil.copyfile(minilm / name, folder / name)
  return folder


def spread_bert(folder: Path, minilm: Path) -> Path:
  """A tiny BERT (tiny_hf_config) with weights N(0, 0.1) and plain LayerNorms, saved with MiniLM's tokenizer.
  `randomize`'s noise sends every text to nearly one direction (all cosines 0.9999x, closer than float32
  resolves); these weights spread texts out, so a search has a ranking worth comparing."""
  import transformers
  return save_with_tokenizer(spread_weights(transformers.BertModel(tiny_hf_config())), folder, minilm)


def spread_weights(model, seed: int = 0):
  """Weights N(0, 0.1) and LayerNorms at 1 and 0 (any family's names: LayerNorm, layer_norm, final_norm):
  texts stay apart, so a loss has gradients worth following."""
  import torch
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name.lower():
        p.fill_(1.0 if name.endswith("weight") else 0.0)
      else:
        p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
  return model.eval()


def mlm_logits(head_params: dict, word_embeddings, hidden, *, layer_norm_eps: float):
  """Our MLM head's [..., vocab] logits of hidden states: the head transform, then the tied decoder."""
  from starbucks_jax.model.mlm_head import head_transform, vocab_logits
  return vocab_logits(head_params, word_embeddings, head_transform(head_params, hidden, layer_norm_eps=layer_norm_eps))


def padded_batch(tokenizer, texts, max_length=64):
  enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
  return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32), \
      enc["token_type_ids"].astype(np.int32)


def set_values(config, changes: dict):
  """Sets dotted keys ("optimizer.lr") of an ml_collections config; returns it."""
  for key, value in changes.items():
    target = config
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = value
  return config


def tiny_run(config, model_dir, changes: dict):
  """The settings every short end-to-end run of the tiny model shares (8 examples, 6 steps, checkpoints
  at 3 and 6, one device), then `changes`."""
  config.model.name = str(model_dir)
  config.data.max_examples = 64
  config.batch_size = 8
  config.num_steps = 6
  config.optimizer.lr = 1e-3
  config.optimizer.warmup_steps = 1
  config.checkpoint.every_steps = 3
  config.log_every_steps = 1
  config.progress_bar = False
  config.mesh.data = 1
  return set_values(config, changes)


def tiny_config(model_dir, **changes):
  """SRL on the shipped SNLI triplets at 32 tokens, pairs (1,8) (2,16) (4,32) of the tiny model: `tiny_run`."""
  from starbucks_jax.training.defaults import base_config
  c = base_config()
  c.data.source = str(REPO / "data" / "quickstart" / "snli_triplets.jsonl")
  c.data.query_max_length = 32
  c.data.passage_max_length = 32
  c.starbucks.pairs = ((1, 8), (2, 16), (4, 32))
  return tiny_run(c, model_dir, changes)


def run_train(config, workdir):
  from starbucks_jax.training.loop import train
  return train(config, Path(workdir))


def check_encode_and_evaluate_commands(workdir: Path, tmp_path: Path) -> dict:
  """`encode` and `evaluate` on a training workdir (any family): the encode command's vectors equal the
  library's, and evaluate scores STS-B (its first 40 pairs) at two sizes. Returns the results."""
  import json
  import math
  from starbucks_jax.cli.encode import main as encode
  from starbucks_jax.cli.evaluate import main as evaluate
  from starbucks_jax.inference.encoder import Encoder
  texts = ["a man plays a guitar", "two dogs run on the beach", "the cat sleeps on the sofa"]
  (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
  encode(["--model", str(workdir), "--layer", "2", "--dim", "16", "--input", str(tmp_path / "texts.txt"),
          "--output", str(tmp_path / "v.npy")])
  np.testing.assert_allclose(np.load(tmp_path / "v.npy"),
                             Encoder.from_pretrained(workdir).encode(texts, layer=2, dim=16), atol=1e-6)
  stsb = (REPO / "data" / "quickstart" / "stsb_test.jsonl").read_text().splitlines()
  rows = [json.loads(line) for line in stsb[:40]]
  sts = tmp_path / "sts_small.csv"
  sts.write_text("sentence1,sentence2,score\n" + "".join(
      f"\"{r['sentence1']}\",\"{r['sentence2']}\",{r['score']}\n" for r in rows))
  evaluate(["--model", str(workdir), "--sts", str(sts), "--pairs", "1:8,4:32", "--output", str(tmp_path / "r.json")])
  results = json.loads((tmp_path / "r.json").read_text())["sts"]["sts_small"]
  assert list(results) == ["1,8", "4,32"]
  assert all(math.isfinite(v) for pair in results.values() for v in pair.values())
  return results


def train_family_briefly(source: Path, torch_mlm, task: str, tmp_path: Path) -> dict:
  """16 steps of SRL or SMAE from a tiny *ForMaskedLM of any family (with spread weights: `spread_weights`)
  and `source`'s tokenizer; the loss must fall. SRL also compiles `--dry_run` and runs the encode and
  evaluate commands on the workdir. Returns the export's config.json."""
  import json
  import shutil
  folder = tmp_path / "spread"
  spread_weights(type(torch_mlm)(torch_mlm.config)).save_pretrained(str(folder))
  for name in source.iterdir():
    if "token" in name.name or name.name == "special_tokens_map.json":
      shutil.copyfile(name, folder / name.name)
  changes = {"num_steps": 16, "optimizer.lr": 1e-3, "eval.sts": ()}
  if task == "srl":
    config = tiny_config(folder, **changes)
    from starbucks_jax.training.dry_run import dry_run
    assert dry_run(config)["activations_bytes"] > 0  # --dry_run compiles the family's step
  else:
    from starbucks_jax.training.defaults import smae_base_config
    config = smae_base_config()
    config.data.source = str(REPO / "data" / "quickstart" / "pretrain_text.jsonl")
    config.data.max_length = 32
    config.smae.pairs = ((1, 8), (2, 16), (4, 32))
    config = tiny_run(config, folder, changes)
  run_train(config, tmp_path / "run")
  rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  losses = [r["loss"] for r in rows if "loss" in r]
  assert len(losses) == 16 and np.mean(losses[-4:]) < np.mean(losses[:4]), losses
  if task == "srl":
    check_encode_and_evaluate_commands(tmp_path / "run", tmp_path)
  return json.loads((tmp_path / "run" / "export" / "config.json").read_text())


SNLI_TRIPLETS = REPO / "data" / "quickstart" / "snli_triplets.jsonl"


def snli_parquet_shards(folder: Path, *, shards: int = 4, row_group_size: int = 128,
                        bad_row: int | None = None) -> list[Path]:
  """The shipped SNLI triplets as `shards` Parquet files of consecutive rows (so their global order is the
  file's), row groups of `row_group_size`; `bad_row` (from 0, global) gets an empty anchor."""
  import json
  import pyarrow as pa
  import pyarrow.parquet as pq
  rows = [json.loads(line) for line in SNLI_TRIPLETS.read_text().splitlines()]
  if bad_row is not None:
    rows[bad_row] = dict(rows[bad_row], anchor="  ")
  folder.mkdir(parents=True, exist_ok=True)
  bounds = np.linspace(0, len(rows), shards + 1).astype(int)
  paths = []
  for k in range(shards):
    paths.append(folder / f"part-{k:05d}.parquet")
    pq.write_table(pa.Table.from_pylist(rows[bounds[k]:bounds[k + 1]]), paths[-1], row_group_size=row_group_size)
  return paths
