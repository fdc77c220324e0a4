"""`python -m starbucks_jax.train --config ... --dry_run`: compile the training step for the configured
mesh without running it, and print what each device must hold.

The step is lowered with abstract arguments (shapes, dtypes and the run's shardings, so nothing is
placed on a device) for the longest batch the data can give, and compiled by XLA for the backend at
hand. The parameters are abstract too (the family's random init, shape-evaluated: `tasks/base.py`
`start_params`): no weight is read, so a model folder with only config.json and a tokenizer serves, and
an 8B model costs no host memory. Parameter and optimizer-state bytes per device follow from the sharding rules; activation bytes
are XLA's temporaries of the compiled step. With GradCache on, the plain step is compiled too and both
figures are printed. With LoRA (`lora.py`) the parameters are the frozen base plus the adapters, and
the trainable bytes and the optimizer state are the adapters' alone. With `--cpu_devices N` a pod's mesh
can be compiled on a workstation; the figures are then the CPU backend's. Nothing is written.
"""

from __future__ import annotations

import dataclasses
import time

import jax

from starbucks_jax.runtime import sharding
from starbucks_jax.training import tasks
from starbucks_jax.training.loop import build, jit_step


def dry_run(config_dict) -> dict:
  """Compiles the step for the configured mesh without running it; prints memory per device. A mixture's
  sources each compile their own step (`data/mixture.py`); the report is the one that needs the most."""
  config = tasks.read_config(config_dict)
  run = build(config, abstract_params=True)  # shapes only: no weight is read
  abstract = lambda tree, shardings: jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
  state = abstract(jax.eval_shape(run.init_state, run.params), run.state_shardings)
  run.setup.data.fixed_lengths = True  # the longest batch the run can meet: padded to the max lengths
  steps = run.setup.step_settings()  # one, or a step per source of a mixture (mixed batches: one)
  sources = run.setup.data.parts if len(steps) > 1 else [run.setup.data]
  reports = [_compile_source(run, k, data, state) for k, data in enumerate(sources)]
  report = max(reports, key=lambda r: r["total_bytes"])
  if len(reports) > 1:
    names = run.setup.source_names
    report["source"] = names[reports.index(report)]
    report["total_bytes_by_source"] = {name: r["total_bytes"] for name, r in zip(names, reports)}
  if jax.process_index() == 0:
    print(format_dry_run(report, config, jax.devices()[0].platform))
  return report


def _compile_source(run, k: int, data, state) -> dict:
  """The report of step k (its source's `data`, or the only data), and of its plain step when GradCache is on."""
  settings = run.setup.step_settings()[k]
  local_batch = data.batch(0)
  rows = sharding.batch_sharding(run.mesh)
  batch = {key: jax.ShapeDtypeStruct((v.shape[0] * jax.process_count(),) + v.shape[1:], v.dtype, sharding=rows)
           for key, v in local_batch.items()}
  started = time.perf_counter()
  compiled = run.step_fns[k].lower(state, batch).compile()
  report = _report(compiled, time.perf_counter() - started, run, state, local_batch)
  if settings.grad_cache:  # what the same batch needs without it
    plain = jit_step(dataclasses.replace(settings, grad_cache=None), run.tx, run.mesh, run.state_shardings)
    started = time.perf_counter()
    memory = plain.lower(state, batch).compile().memory_analysis()
    report["plain_compile_seconds"] = time.perf_counter() - started
    report["plain_activations_bytes"] = int(memory.temp_size_in_bytes)
    report["plain_total_bytes"] = report["total_bytes"] - report["activations_bytes"] + int(memory.temp_size_in_bytes)
  return report


def _report(compiled, compile_seconds: float, run, state, local_batch) -> dict:
  """Bytes per device (parameters and optimizer state from their shardings, activations from XLA)."""
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  report = {
      "devices": int(run.mesh.devices.size),
      "mesh": {axis: int(size) for axis, size in run.mesh.shape.items()},
      # With LoRA the parameters are the frozen base and the adapters, which alone train.
      "parameters_bytes": sharding.bytes_per_device((state.params, state.frozen),
                                                    (run.state_shardings.params, run.state_shardings.frozen)),
      "trainable_bytes": sharding.bytes_per_device(state.params, run.state_shardings.params),
      "optimizer_state_bytes": sharding.bytes_per_device(state.opt_state, run.state_shardings.opt_state),
      "batch_bytes": sum(v.size * v.dtype.itemsize for v in local_batch.values()) // jax.local_device_count(),
      "activations_bytes": int(memory.temp_size_in_bytes),  # XLA's temporaries: activations, gradients
      "total_bytes": int(memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
                         + memory.temp_size_in_bytes),
      "gflops_per_device": float(cost.get("flops", 0.0)) / 1e9 if cost else None,
      "compile_seconds": compile_seconds,
  }
  stats = jax.local_devices()[0].memory_stats() or {}
  report["device_limit_bytes"] = stats.get("bytes_limit")
  return report


def format_dry_run(report: dict, config, platform: str) -> str:
  def gib(n):  # the largest unit that keeps the figure at least 1
    unit = next((u for u, size in (("GiB", 2**30), ("MiB", 2**20)) if n >= size), "KiB")
    return f"{n / {'GiB': 2**30, 'MiB': 2**20, 'KiB': 2**10}[unit]:9.3f} {unit}"
  mesh = " x ".join(f"{axis}={size}" for axis, size in report["mesh"].items())
  cache = config.grad_cache
  how = (f", GradCache chunks of {cache.query_chunk} queries" if cache.enabled
         else f" x {config.grad_accum_steps} accumulation")
  lines = [f"dry run: {config.task} step, batch {config.batch_size}{how}, "
           f"mesh {mesh} on {report['devices']} {platform} device(s), compiled in {report['compile_seconds']:.1f} s",
           "memory per device:",
           f"  parameters        {gib(report['parameters_bytes'])}",
           *([f"    trainable       {gib(report['trainable_bytes'])}  (LoRA adapters, rank {config.lora.rank})"]
             if config.lora.enabled else []),
           f"  optimizer state   {gib(report['optimizer_state_bytes'])}",
           f"  batch             {gib(report['batch_bytes'])}",
           f"  activations       {gib(report['activations_bytes'])}  (XLA temporaries of the step)",
           f"  total             {gib(report['total_bytes'])}"]
  if "source" in report:
    lines.append(f"  (the mixture's largest step, source {report['source']}; totals: "
                 + ", ".join(f"{name} {gib(n).strip()}" for name, n in report["total_bytes_by_source"].items()) + ")")
  if report["device_limit_bytes"]:
    fits = report["total_bytes"] <= report["device_limit_bytes"]
    lines.append(f"  device limit      {gib(report['device_limit_bytes'])}  ({'fits' if fits else 'DOES NOT FIT'})")
  if report["gflops_per_device"]:
    lines.append(f"compute: {report['gflops_per_device']:.1f} GFLOP per device per step")
  if "plain_activations_bytes" in report:
    lines += ["without grad_cache (the plain step, same batch):",
              f"  activations       {gib(report['plain_activations_bytes'])}",
              f"  total             {gib(report['plain_total_bytes'])}",
              f"  compiled in       {report['plain_compile_seconds']:9.1f} s"]
  return "\n".join(lines)
