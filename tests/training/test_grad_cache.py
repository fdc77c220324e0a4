"""GradCache (`training/grad_cache.py`): the cached step's loss, metrics and gradients equal the plain
full-batch step's for every schedule and objective with dropout on (one device here; 8 simulated devices
and two real processes in tests/runtime/test_grad_cache_mesh.py), dropout masks that do not depend on how
the batch is split, training and `--dry_run` with it, and its settings checked before anything compiles."""

import dataclasses
import importlib
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from starbucks_jax.errors import StarbucksError
from starbucks_jax.model.dropout import hash_bits
from starbucks_jax.runtime import sharding
from starbucks_jax.training.grad_cache import GradCacheConfig, merge, split
from tests.helpers import REPO, tiny_config
from tests.training import grad_cache_probe as probe

TOLERANCE = 1e-5  # relative, float32


# tests/runtime/test_grad_cache_mesh.py runs the two cases that differ in what crosses devices (fused and
# separate passes) on 8 simulated devices and in two processes; every other schedule and objective runs here.
MESH_CASES = ("starbucks-scores-kl", "two-lengths-dot-remat")


@pytest.mark.parametrize("case", [case for case in probe.CASES if case not in MESH_CASES])
def test_cached_step_equals_the_plain_step_on_one_device(case):
  result = probe.compare(case, sharding.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 1})))
  assert result["loss_diff"] < TOLERANCE and result["metric_diff"] < TOLERANCE, result
  assert result["grad_diff"] < TOLERANCE and result["grad_norm_diff"] < TOLERANCE, result
  assert result["grad_norm"] > 1  # there were gradients to compare


@pytest.mark.parametrize("case", ["2dmse", "two-lengths-dot-remat"])
def test_cached_step_equals_the_plain_step_for_a_decoder_family(case):
  """A tiny Qwen3 (causal, grouped heads, last pooling): GradCache's step is the plain one, one pass and two."""
  result = probe.compare(case, sharding.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 1})), family="qwen3")
  print(f"\nqwen3 {case}: loss {result['loss_diff']:.1e}, gradients {result['grad_diff']:.1e}")
  assert result["loss_diff"] < TOLERANCE and result["metric_diff"] < TOLERANCE, result
  assert result["grad_diff"] < TOLERANCE and result["grad_norm_diff"] < TOLERANCE, result
  assert result["grad_norm"] > 0.1  # there were gradients to compare


def test_cached_bfloat16_gradients_are_as_close_to_float32_as_the_plain_steps():
  errors = probe.bfloat16_errors("starbucks-scores-kl", sharding.make_mesh(ml_collections.ConfigDict({"data": 1})))
  assert errors["plain"] < 0.1 and errors["cached"] < 1.5 * errors["plain"], errors  # measured: 0.027, 0.018


def test_dropout_masks_follow_the_row_not_the_chunk():
  key = jax.random.key(7)
  whole = hash_bits(key, (12, 5, 3))
  row_ids = split(jnp.arange(12), 3)  # chunk k: rows k, k + 3, k + 6, k + 9
  chunks = jnp.stack([hash_bits(key, (4, 5, 3), row_ids[k]) for k in range(3)])
  assert np.array_equal(merge(chunks), whole)
  assert np.array_equal(merge(split(whole, 3)), whole)
  # Without the rows' indices, a chunk would reuse the first rows' masks: the check above can fail.
  assert not np.array_equal(merge(jnp.stack([hash_bits(key, (4, 5, 3))] * 3)), whole)


def test_chunks_must_divide_the_batch_and_the_mesh():
  GradCacheConfig(8).check(queries=32, group_size=2, devices=8)
  with pytest.raises(StarbucksError, match="grad_cache.query_chunk 12 does not divide batch_size, 32"):
    GradCacheConfig(12).check(queries=32, group_size=2, devices=1)
  with pytest.raises(StarbucksError, match=r"grad_cache.passage_chunk 24 does not divide the passages of a batch "
                                           r"\(batch_size x train_group_size\), 64"):
    GradCacheConfig(8, 24).check(queries=32, group_size=2, devices=1)
  with pytest.raises(StarbucksError, match="grad_cache.query_chunk 4 must be a multiple of the mesh's 8 data x fsdp"):
    GradCacheConfig(4).check(queries=32, group_size=2, devices=8)
  assert GradCacheConfig(8).chunk_rows(group_size=3) == (8, 24)  # a chunk's queries and their passages


@pytest.mark.parametrize("overrides, message", [
    (["--config.grad_cache.query_chunk=5"], "grad_cache.query_chunk 5 does not divide batch_size, 32"),
    (["--config.grad_cache.query_chunk=-1"], r"grad_cache.query_chunk must be >= 0 \(0: off\), got -1"),
    (["--config.grad_cache.passage_chunk=8"], "grad_cache.passage_chunk is set but grad_cache.query_chunk is 0"),
    (["--config.grad_cache.query_chunk=8", "--config.grad_accum_steps=2"],
     "grad_cache and grad_accum_steps=2 do not combine"),
    (["--config", str(REPO / "configs" / "smae_quickstart.py"), "--config.grad_cache.query_chunk=8"],
     "grad_cache is for SRL's in-batch negatives"),
])
def test_bad_grad_cache_settings_are_refused_before_compiling(overrides, message, tiny_dir, tmp_path, monkeypatch):
  from starbucks_jax.cli.train import main
  importlib.import_module("starbucks_jax.training.loop")
  monkeypatch.setattr(jax, "jit", lambda *a, **k: pytest.fail("compiled before the error"))
  config = overrides[1] if overrides[0] == "--config" else str(REPO / "configs" / "quickstart.py")
  rest = overrides[2:] if overrides[0] == "--config" else overrides
  pairs = "--config.smae.pairs=((1,8),(4,32))" if "smae" in config else "--config.starbucks.pairs=((1,8),(4,32))"
  with pytest.raises(StarbucksError, match=message):
    main(["--config", config, "--workdir", str(tmp_path / "run"), f"--config.model.name={tiny_dir}", pairs, *rest])
  assert not (tmp_path / "run").exists()


def metric_rows(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def train_command(workdir, tiny_dir, *extra, **env):
  """`python -m starbucks_jax.train` as tests/runtime/test_preemption.py runs it: the tiny model, dropout 0.1,
  10 steps of 8 triplets, a checkpoint every 4."""
  import os
  import subprocess
  from tests.runtime.test_preemption import command
  return subprocess.run(command(workdir, tiny_dir, packing=False) + list(extra), env=dict(os.environ, **env), capture_output=True,
                        text=True, timeout=600)


CACHED = "--config.grad_cache.query_chunk=4"


@pytest.fixture(scope="module")
def cached_run(tiny_dir, tmp_path_factory):
  """An uninterrupted run in GradCache chunks of 4 queries: (workdir, its stderr)."""
  workdir = tmp_path_factory.mktemp("cached") / "whole"
  out = train_command(workdir, tiny_dir, CACHED)
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir, out.stderr


def test_training_with_grad_cache_logs_what_plain_training_logs(cached_run, tiny_dir, tmp_path):
  """The same run plain and in chunks of 4 queries: every loss, KL and gradient norm of the first 3 steps
  agrees (later, Adam's updates let float32 rounding grow), and the run says it uses GradCache."""
  cached, stderr = cached_run
  assert "GradCache in chunks of 4 queries and 8 passages" in stderr
  plain = train_command(tmp_path / "plain", tiny_dir)
  assert plain.returncode == 0, plain.stderr[-3000:]
  rows = list(zip(metric_rows(tmp_path / "plain"), metric_rows(cached), strict=True))
  for a, b in rows[:3]:
    assert a.keys() == b.keys()
    worst = max(abs(a[k] - b[k]) / max(1.0, abs(a[k])) for k in a if k != "examples_per_sec")
    assert worst < TOLERANCE, (a, b)
  assert rows[-1][0]["loss"] != rows[0][0]["loss"]


@pytest.mark.parametrize("packing", [False, True])
def test_dry_run_reports_memory_with_and_without_grad_cache(tiny_dir, capsys, packing):
  """Packed, each chunk is a packing group of its own rows (`data/packing.py`): the same saving."""
  from starbucks_jax.training.dry_run import dry_run
  report = dry_run(tiny_config(tiny_dir, batch_size=64, **{"grad_cache.query_chunk": 8, "data.packing": packing,
                                                           "data.max_examples": 128}))
  out = capsys.readouterr().out
  assert "batch 64, GradCache chunks of 8 queries" in out and "without grad_cache (the plain step, same batch):" in out
  # 8 of 64 queries (and their passages) at a time: far fewer activations than the whole batch's. Packed,
  # the whole batch has no padding to start with (24.9 MB against 8.3 for a chunk and the gradient sums).
  assert report["activations_bytes"] * (2 if packing else 3) < report["plain_activations_bytes"], report


def test_the_one_device_msmarco_config_is_the_pod_config_through_grad_cache():
  import runpy
  from starbucks_jax.training import tasks
  read = lambda name: tasks.read_config(runpy.run_path(str(REPO / "configs" / name))["get_config"]())
  pod, one_device = read("srl_msmarco_bert_base.py"), read("srl_msmarco_bert_base_one_device.py")
  assert one_device.grad_cache == GradCacheConfig(query_chunk=16) and not pod.grad_cache.enabled
  assert dataclasses.replace(one_device, grad_cache=pod.grad_cache) == pod


def test_a_cached_step_that_is_not_finite_is_skipped():
  import optax
  from starbucks_jax.training import step as train_step
  config, params = probe.model()
  params["encoder"]["layer_0"]["output"]["bias"] = params["encoder"]["layer_0"]["output"]["bias"].at[3].set(jnp.nan)
  settings = probe.settings_for("starbucks-scores-kl", config, grad_cache=GradCacheConfig(8))
  tx = optax.sgd(0.1)
  state = train_step.init_state(params, tx, seed=0)
  new_state, metrics = jax.jit(lambda s, b: train_step.train_step(s, b, tx, settings))(
      state, probe.make_batch(2, 12, 12, scored=False))
  assert not np.isfinite(float(metrics["loss"])) and int(new_state.skipped_steps) == 1
  assert int(new_state.step) == 1
  for old, new in zip(jax.tree.leaves(state.params), jax.tree.leaves(new_state.params)):
    assert np.array_equal(np.asarray(old), np.asarray(new), equal_nan=True)


def test_a_killed_cached_run_resumes_bit_identically(cached_run, tiny_dir, tmp_path):
  """kill -9 after the checkpoint at step 4 of 10, then the same command: the final parameters and Adam
  state equal an uninterrupted cached run's bit for bit."""
  from tests.runtime.test_preemption import assert_bit_identical
  killed = train_command(tmp_path / "killed", tiny_dir, CACHED, STARBUCKS_FAULT_KILL_AT_STEP="5")
  assert killed.returncode == -9, killed.stderr[-2000:]
  resumed = train_command(tmp_path / "killed", tiny_dir, CACHED)
  assert resumed.returncode == 0 and "resuming from the checkpoint at step 4" in resumed.stderr, resumed.stderr[-2000:]
  assert_bit_identical(cached_run[0], tmp_path / "killed")