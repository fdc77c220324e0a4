"""What every benchmark script shares: the machine, its peak, timing, peak memory and the result table.

- `machine()`: one line naming the CPU / accelerator, the cores and the library versions.
- `measured_matmul_gflops()`: the rate a large jitted float32 (or bfloat16) matmul reaches here, now;
  CPU MFU is measured against it (the issue's "measured large-matmul rate").
- `time_jax(fn, *args)`: compile time, then the median of `repeats` timed calls after one warm call.
- `time_torch(step)`: the same for a PyTorch step (its first call, the warm-up, stands in for compile).
- `PeakMemory`: peak resident memory above the level at entry, from Linux's VmHWM (reset on entry via
  /proc/self/clear_refs), so JAX and PyTorch are measured the same way; on a GPU it reads the
  allocator's peak instead.
- `Row` / `print_table` / `save_rows`: one line per measured variant, printed and optionally appended
  as JSON lines (`--json FILE`) for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import statistics
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

# NVIDIA H200 SXM: 989 TFLOP/s dense bfloat16 (1979 with sparsity), the figure GPU MFU is taken against.
H200_BF16_DENSE_TFLOPS = 989.0


def machine() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
  device = jax.devices()[0]
  parts = [f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB", f"jax {jax.__version__} on {device.platform}"
           f" ({device.device_kind}) x{jax.device_count()}"]
  try:
    import torch
    parts.append(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
  except ImportError:
    pass
  return "; ".join(parts)


def measured_matmul_gflops(size: int = 4096, dtype=jnp.float32, repeats: int = 5) -> float:
  """GFLOP/s of a jitted [size x size] @ [size x size] matmul on the default device (median of repeats).

  Accumulated in float32, as our dense layers do (`starbucks_jax/model/dense.py`): on XLA:CPU a bfloat16 dot with
  a bfloat16 result runs at about the float32 rate, one with a float32 result at twice it."""
  a = jnp.ones((size, size), dtype)
  matmul = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
  timing = time_steps(lambda: jax.block_until_ready(matmul(a, a)), repeats)
  return 2 * size ** 3 / timing.median / 1e9


def peak_gflops(args_peak: Optional[float], dtype: str) -> tuple[float, str]:
  """The peak to take MFU against, and where it comes from: --peak-gflops, the H200 sheet, or measured."""
  if args_peak:
    return args_peak, "given"
  if jax.devices()[0].platform == "gpu" and "H200" in jax.devices()[0].device_kind and dtype == "bfloat16":
    return H200_BF16_DENSE_TFLOPS * 1000, "H200 bf16 dense peak"
  jnp_dtype = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
  return measured_matmul_gflops(dtype=jnp_dtype), f"measured {dtype} 4096^3 matmul"


@dataclasses.dataclass
class Timing:
  compile_s: float
  times: list

  @property
  def median(self) -> float:
    return statistics.median(self.times)

  @property
  def spread(self) -> str:
    return f"{min(self.times):.3f}-{max(self.times):.3f}"


class JaxStep:
  """A compiled training step `fn(state, *rest) -> (state, metrics)` with its state donated, as in training.

  `run()` takes one step and keeps the new state for the next, so every timed call updates its
  parameters in place, exactly as the training loop's jitted step does.
  """

  def __init__(self, fn: Callable, state, *rest, remat="dots"):
    start = time.perf_counter()
    from starbucks_jax.training.step import compiler_options  # the options training compiles its step with
    self.compiled = jax.jit(fn, donate_argnums=0, compiler_options=compiler_options(remat)).lower(state, *rest).compile()
    self.compile_s = time.perf_counter() - start
    self.state = jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else jnp.asarray(x), state)
    self.rest = rest

  def run(self):
    self.state, metrics = self.compiled(self.state, *self.rest)
    jax.block_until_ready((self.state, metrics))
    return metrics


def time_jax(fn: Callable, state, *rest, repeats: int = 5, remat="dots") -> tuple[Timing, JaxStep]:
  """Compiles the step `fn(state, *rest)` (timed; `remat`: the step's, for its compiler options), runs it
  once, then times `repeats` steps."""
  step = JaxStep(fn, state, *rest, remat=remat)
  return time_steps(step.run, repeats, compile_s=step.compile_s), step


def time_steps(run: Callable, repeats: int = 5, compile_s: Optional[float] = None) -> Timing:
  """Times `run()` (which must finish its work before returning) `repeats` times after one warm-up call.

  The warm-up's own time stands for the compile time unless `compile_s` is given (PyTorch's first
  step is its start-up cost).
  """
  start = time.perf_counter()
  run()
  first_s = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return Timing(first_s if compile_s is None else compile_s, times)


# glibc keeps freed memory below its (adaptive) mmap threshold in the heap, so after a warm-up step
# PyTorch's activations would not show in the resident set at all. A fixed, low threshold returns
# every large block to the system when freed: the resident peak is then the live peak, for both
# frameworks. It slows allocation, so memory is measured in its own process, not while timing.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_TOP_PAD_": "0"}
_PEAK_LINE = "PEAK_BYTES "


def add_step_flags(parser, default_variants: str, default_repeats: int) -> None:
  """The flags every training-step benchmark takes, beside its shape."""
  parser.add_argument("--dtype", default="float32", choices=["bfloat16", "float32"])
  parser.add_argument("--variants", default=default_variants, help="comma-separated")
  parser.add_argument("--repeats", type=int, default=default_repeats)
  parser.add_argument("--peak-gflops", type=float, default=0.0, help="default: measured here (CPU) or the H200 sheet")
  parser.add_argument("--json", default=None, help="append the rows to this JSON-lines file")
  add_memory_flags(parser)


def parse_variants(parser, args, known: tuple) -> list:
  """args.variants as a list; a parser error for an unknown one, or for a PyTorch peer on an accelerator."""
  variants = args.variants.split(",")
  unknown = [v for v in variants if v not in known]
  if unknown:
    parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(known)}")
  if jax.devices()[0].platform != "cpu" and any(v.startswith("torch") for v in variants):
    ours = ",".join(v for v in known if not v.startswith("torch"))
    parser.error(f"the PyTorch peers run on the CPU only here; use --variants {ours} on an accelerator")
  return variants


def measure_variants(variants, args, build: Callable, make_row: Callable) -> list:
  """For each variant: `build(variant) -> (run, compile_s, xla_flops)`, timed, its peak memory, a Row."""
  rows = []
  for variant in variants:
    run, compile_s, xla = build(variant)
    timing = time_steps(run, args.repeats, compile_s)
    peak_bytes = None if args.no_memory else step_peak_memory(variant, run)
    del run
    rows.append(make_row(variant, timing, peak_bytes, xla))
    print(f"  {variant}: median {rows[-1].step_s:.3f} s", flush=True)
  return rows


def add_memory_flags(parser) -> None:
  parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
  parser.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)  # set for the child process


def print_peak_memory(run: Callable) -> None:
  """The child's side of `peak_memory_in_subprocess`: a warm step, then the measured one."""
  run()
  print(_PEAK_LINE + str(peak_memory(run)), flush=True)


def step_peak_memory(variant: str, run: Callable) -> Optional[int]:
  """Peak bytes of one step: in a child process on CPU (see MALLOC_ENV); in this process on a GPU, from
  the allocator's statistics (a child could not allocate beside this process's preallocated memory)."""
  if jax.devices()[0].platform == "gpu":
    return peak_memory(run)
  return peak_memory_in_subprocess(variant)


def peak_memory_in_subprocess(variant: str) -> Optional[int]:
  """Peak bytes of one step of `variant`: this script again, with --memory-of and MALLOC_ENV."""
  import subprocess
  import sys
  argv = [sys.executable, sys.argv[0]] + sys.argv[1:] + ["--memory-of", variant]
  done = subprocess.run(argv, env={**os.environ, **MALLOC_ENV}, capture_output=True, text=True)
  lines = [line for line in done.stdout.splitlines() if line.startswith(_PEAK_LINE)]
  if done.returncode != 0 or not lines:
    print(f"  (peak memory of {variant} not measured: exit {done.returncode}; {done.stderr.strip()[-300:]})")
    return None
  return int(lines[-1][len(_PEAK_LINE):])


def xla_flops(step: JaxStep) -> float:
  cost = step.compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
  return float(cost.get("flops", 0.0))


def _status_kib(field: str) -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  raise RuntimeError(f"/proc/self/status has no {field}")


class PeakMemory:
  """Peak memory in bytes above the level at entry, while the block runs (`.bytes` after exit).

  CPU: resident set size; the high-water mark is reset on entry (Linux `clear_refs` 5), so the figure
  is this block's own peak, JAX or PyTorch alike. GPU: the JAX allocator's peak_bytes_in_use minus
  bytes_in_use at entry (the allocator's peak is not resettable, so run the block first in a fresh
  process for a true figure).
  """

  def __enter__(self):
    gc.collect()
    self.gpu = jax.devices()[0].platform == "gpu"
    if self.gpu:
      self.start = jax.devices()[0].memory_stats()["bytes_in_use"]
    else:
      with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
      self.start = _status_kib("VmRSS") * 1024
    return self

  def __exit__(self, *exc):
    if self.gpu:
      peak = jax.devices()[0].memory_stats()["peak_bytes_in_use"]
    else:
      peak = _status_kib("VmHWM") * 1024
    self.bytes = max(peak - self.start, 0)
    return False


def peak_memory(fn: Callable) -> int:
  with PeakMemory() as peak:
    fn()
  return peak.bytes


@dataclasses.dataclass
class Row:
  """One measured variant. `model_flops`: hand-counted (starbucks_jax/training/flops.py); `xla_flops`: XLA's count."""
  bench: str
  variant: str
  shape: str
  dtype: str
  timing: Timing
  examples: int
  tokens: int
  model_flops: float
  peak_gflops: float
  peak_bytes: Optional[int] = None
  xla_flops: Optional[float] = None
  command: str = ""

  @property
  def step_s(self) -> float:
    return self.timing.median

  def as_dict(self) -> dict:
    s = self.step_s
    return {"bench": self.bench, "variant": self.variant, "shape": self.shape, "dtype": self.dtype,
            "step_s": s, "step_s_range": self.timing.spread, "repeats": len(self.timing.times),
            "compile_s": self.timing.compile_s, "examples_per_s": self.examples / s, "tokens_per_s": self.tokens / s,
            "model_gflop": self.model_flops / 1e9, "gflops_per_s": self.model_flops / s / 1e9,
            "mfu": self.model_flops / s / 1e9 / self.peak_gflops,
            "peak_mib": None if self.peak_bytes is None else self.peak_bytes / 2 ** 20,
            "xla_gflop": None if self.xla_flops is None else self.xla_flops / 1e9,
            "machine": machine(), "command": self.command}


def print_table(rows: list, peak_note: str = "") -> None:
  header = (f"{'variant':<34} {'step s':>8} {'range':>13} {'ex/s':>8} {'tok/s':>8} {'GFLOP':>8} {'GFLOP/s':>8} "
            f"{'MFU':>6} {'compile':>8} {'peak MiB':>9}")
  print(header)
  for row in rows:
    d = row.as_dict()
    peak = "" if d["peak_mib"] is None else f"{d['peak_mib']:.0f}"
    print(f"{d['variant']:<34} {d['step_s']:>8.3f} {d['step_s_range']:>13} {d['examples_per_s']:>8.1f} "
          f"{d['tokens_per_s']:>8.0f} {d['model_gflop']:>8.1f} {d['gflops_per_s']:>8.1f} {100 * d['mfu']:>5.1f}% "
          f"{d['compile_s']:>7.1f}s {peak:>9}")
  if peak_note:
    print(f"MFU against {peak_note}")


def save_rows(rows: list, path: Optional[str]) -> None:
  if not path:
    return
  with open(path, "a") as f:
    for row in rows:
      f.write(json.dumps(row.as_dict()) + "\n")


def command_line() -> str:
  import sys
  return "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])


def random_ids(rng: np.random.Generator, rows: int, length: int) -> np.ndarray:
  """Token ids from the ordinary part of the BERT vocabulary, [CLS] first, every position real."""
  ids = rng.integers(1000, 29000, (rows, length)).astype(np.int32)
  ids[:, 0] = 101
  return ids


def sample_lengths(path: str, count: int, max_length: int, rng: np.random.Generator, least: int = 2) -> np.ndarray:
  """`count` token counts drawn from a bench/lengths histogram, clipped to [least, max_length]."""
  with open(path) as f:
    counts = json.load(f)["counts"]
  values = np.asarray([int(k) for k in counts])
  weights = np.asarray([counts[k] for k in counts], np.float64)
  return np.clip(rng.choice(values, size=count, p=weights / weights.sum()), least, max_length)


def bf16_dot_label() -> str:
  """STARBUCKS_BF16_DOT and what it comes to here for bfloat16: e.g. "auto->on" on the CPU, "auto->off" on a GPU."""
  from starbucks_jax.model import dense
  return f"{dense.bf16_dot_setting()}->{'on' if dense.uses_bf16_dot('bfloat16') else 'off'}"


@dataclasses.dataclass
class LayoutRow(Row):
  """A Row with the layout's figures (padding, useful FLOPs) added to its JSON."""
  extra: dict = dataclasses.field(default_factory=dict)

  def as_dict(self) -> dict:
    d = super().as_dict()
    useful = self.extra.get("useful_gflop")
    if useful is not None:
      d["useful_gflops_per_s"] = useful / self.step_s
      d["useful_mfu"] = useful / self.step_s / self.peak_gflops
    return {**d, **self.extra}


def print_layout(rows: list) -> None:
  for row in rows:
    d = row.as_dict()
    print(f"  {d['variant']}: {d['layout']}, {d['real_tokens']} real of {d['executed_tokens']} tokens "
          f"(padding {100 * d['padding_ratio']:.1f}%), {d['texts']} texts; executed {d['model_gflop']:.1f} GFLOP "
          f"(MFU {100 * d['mfu']:.1f}%), useful {d['useful_gflop']:.1f} GFLOP (MFU {100 * d['useful_mfu']:.1f}%)")


def set_bf16_dot_env(argv: list) -> None:
  """--bf16-dot X sets STARBUCKS_BF16_DOT before starbucks_jax is imported (dense.py reads it)."""
  for i, arg in enumerate(argv):
    if arg == "--bf16-dot" and i + 1 < len(argv):
      os.environ["STARBUCKS_BF16_DOT"] = argv[i + 1]
    elif arg.startswith("--bf16-dot="):
      os.environ["STARBUCKS_BF16_DOT"] = arg.split("=", 1)[1]
