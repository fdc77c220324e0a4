"""LoRA (`training/lora.py`): adapters on the attention projections, trained with the base frozen.

The step: the loss falls, the frozen base stays bit-unchanged, only adapters have optimizer state, and
GradCache's chunked gradients are the plain step's. A real run (`python -m starbucks_jax.train`, packed
batches, dropout on, a tiny BERT with spread weights): its checkpoints hold the adapters alone, its export
is the base plus (alpha / r) a @ b and loads in transformers and sentence-transformers, `--adapters-only`
writes PEFT's layout, a run killed with SIGKILL after a checkpoint resumes bit-identically, and 1 vs 8
devices under FSDP agree. Bad settings end in one error line."""

import json
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from starbucks_jax.errors import StarbucksError
from tests.helpers import REPO, run_train, spread_bert, tiny_config
from tests.runtime.test_preemption import EVERY, STEPS, command, final_state

RANK, ALPHA = 4, 8.0
LORA = (f"--config.lora.rank={RANK}", f"--config.lora.alpha={ALPHA}", "--config.optimizer.lr=1e-2")


def tiny_srl(grad_cache=None):
  """A random 4-layer BERT (dropout off), its SRL step settings and one batch of 16 queries, 2 passages each."""
  from starbucks_jax.losses.srl_spec import SrlLossSpec
  from starbucks_jax.model.bert import BertConfig
  from starbucks_jax.model.registry import family_of
  from starbucks_jax.training.tasks.srl import SrlStepSettings
  config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=48,
                      max_position_embeddings=66, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  params = jax.device_get(family_of(config).init_params(config, jax.random.key(0)))
  spec = SrlLossSpec(mode="starbucks", num_model_layers=4, hidden_size=32, pairs=((1, 8), (2, 16), (4, 32)),
                     group_size=2)
  settings = SrlStepSettings(model_config=config, spec=spec, pooling="mean", grad_cache=grad_cache)
  rng = np.random.default_rng(0)
  ids = lambda rows: rng.integers(5, 120, (rows, 12)).astype(np.int32)
  batch = {"query_input_ids": ids(16), "query_attention_mask": np.ones((16, 12), np.int32),
           "passage_input_ids": ids(32), "passage_attention_mask": np.ones((32, 12), np.int32)}
  return params, settings, batch


def lora_state(params, tx):
  from flax import traverse_util
  from starbucks_jax.training.lora import LoraConfig, Trainable
  lora = LoraConfig(rank=RANK, alpha=ALPHA)
  paths = lora.matrices({k: v.shape for k, v in traverse_util.flatten_dict(params, sep="/").items()})
  assert len(paths) == 16  # query, key, value and output of 4 layers
  return jax.jit(Trainable(("encoder",), lora, paths).init_state(tx, seed=0))(params), paths


def test_a_lora_step_trains_the_adapters_alone_on_a_bit_unchanged_base():
  from starbucks_jax.model.lora import adapted
  from starbucks_jax.training import optim, step as train_step
  params, settings, batch = tiny_srl()
  tx, _ = optim.make_optimizer(optim.OptimizerConfig(lr=1e-2, warmup_steps=0, schedule="constant"), 8,
                               trainable=("encoder",))
  state, paths = lora_state(params, tx)
  step = jax.jit(lambda s, b: train_step.train_step(s, b, tx, settings))
  losses = []
  for _ in range(8):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0] - 0.05, losses
  frozen = jax.device_get(state.frozen)
  assert jax.tree.structure(frozen) == jax.tree.structure(params)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(params)))
  adapters = adapted(jax.device_get(state.params))
  assert sorted(adapters) == list(paths) and all(np.abs(pair["b"]).max() > 0 for pair in adapters.values())
  adapter_size = sum(x.size for x in jax.tree.leaves(state.params))
  moments = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim)  # Adam's mu and nu, no scalars
  assert moments == 2 * adapter_size
  assert adapter_size < sum(x.size for x in jax.tree.leaves(params)) / 8  # a small vocabulary: the base is small


def test_lora_under_grad_cache_gets_the_plain_steps_gradients():
  """GradCache encodes chunk by chunk through the adapters merged into the base, as the plain step does."""
  import optax
  from starbucks_jax.training import step as train_step
  from starbucks_jax.training.grad_cache import GradCacheConfig
  keep_grads = optax.GradientTransformation(lambda p: {"grads": jax.tree.map(jnp.zeros_like, p)},
                                            lambda g, state, p=None: (jax.tree.map(jnp.zeros_like, g), {"grads": g}))
  grads = []
  for grad_cache in (None, GradCacheConfig(query_chunk=4)):
    params, settings, batch = tiny_srl(grad_cache)
    state, _ = lora_state(params, keep_grads)
    state = state.replace(params=jax.tree.map(lambda x: x + 0.05, state.params))  # b not zero: both get gradients
    state, metrics = jax.jit(lambda s, b: train_step.train_step(s, b, keep_grads, settings))(state, batch)
    grads.append(jax.device_get(state.opt_state["grads"]))
  for plain, chunked in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(chunked, plain, rtol=1e-4, atol=1e-6)
  assert max(float(np.abs(g).max()) for g in jax.tree.leaves(grads[0])) > 1e-3


def train(workdir, model_dir, extra=(), **env):
  return subprocess.run(command(workdir, model_dir, extra=LORA + tuple(extra)), env=dict(os.environ, **env),
                        capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def spread_dir(tmp_path_factory, minilm_dir):
  """The tiny BERT with weights that keep texts apart, so a loss has gradients worth following."""
  return spread_bert(tmp_path_factory.mktemp("spread"), minilm_dir)


@pytest.fixture(scope="module")
def lora_run(spread_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("lora") / "run"
  out = train(workdir, spread_dir)
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir


def dir_bytes(folder):
  return sum(p.stat().st_size for p in Path(str(folder)).rglob("*") if p.is_file())


def test_the_checkpoints_hold_the_adapters_alone(lora_run, spread_dir):
  from starbucks_jax.runtime import checkpoints
  from starbucks_jax.runtime.metrics import read_metrics
  losses = [row["loss"] for row in read_metrics(lora_run) if "loss" in row]
  assert len(losses) == STEPS and np.mean(losses[-3:]) < np.mean(losses[:3]), losses
  step, arrays = final_state(lora_run)
  names = [k for k in arrays if k.startswith("params")]
  assert len(names) == 32 and all(k.endswith(("['a']", "['b']")) for k in names), names[:4]
  moments = [k for k in arrays if k.startswith("opt_state") and arrays[k].ndim]
  assert len(moments) == 2 * len(names) and all(k.endswith(("['a']", "['b']")) for k in moments)
  base_bytes = (spread_dir / "model.safetensors").stat().st_size
  # A full fine-tuning checkpoint holds the parameters and two Adam moments: three times the model.
  lora_bytes = dir_bytes(checkpoints.step_dir(lora_run, step))
  print(f"LoRA checkpoint: {lora_bytes} bytes; the model: {base_bytes} bytes")
  assert lora_bytes < 3 * base_bytes / 20
  record = json.loads((lora_run / "model" / "starbucks.json").read_text())["lora"]
  assert record["rank"] == RANK and record["base"] == str(spread_dir) and record["parts"] == ["encoder", "pooler"]


def test_the_export_is_the_base_plus_the_scaled_adapters(lora_run, spread_dir, tmp_path):
  from safetensors.numpy import load_file
  from sentence_transformers import SentenceTransformer
  from starbucks_jax.hf.convert import name_table
  from starbucks_jax.inference.encoder import Encoder
  from starbucks_jax.model.lora import adapted
  from starbucks_jax.model.registry import family_of
  from starbucks_jax.runtime import checkpoints, workdir
  base = load_file(spread_dir / "model.safetensors")
  merged = load_file(lora_run / "export" / "model.safetensors")
  adapters = adapted(checkpoints.restore_params(lora_run)[0])
  config = workdir.read_model_dir(lora_run)[0]
  hf_of = {ours: hf for hf, ours, _ in name_table(family_of(config).hf_names, config.num_hidden_layers)}
  targets = {hf_of[path]: pair for path, pair in adapters.items()}
  assert len(targets) == 16 and set(merged) == set(base)
  for name, value in base.items():
    if name in targets:
      update = (ALPHA / RANK) * (targets[name]["a"] @ targets[name]["b"]).T
      assert np.abs(update).max() > 1e-4, name
      np.testing.assert_allclose(merged[name], value + update, rtol=0, atol=2e-6)
    else:
      assert np.array_equal(merged[name], value), name
  texts = ["a man plays a guitar", "two dogs run on the beach", "the cat sleeps on the sofa"]
  st = SentenceTransformer(str(lora_run / "export"), device="cpu").encode(texts, convert_to_numpy=True)
  ours = Encoder.from_pretrained(lora_run).encode(texts)  # the workdir: adapters merged into the re-read base
  np.testing.assert_allclose(st, ours, atol=2e-5)

  from starbucks_jax.cli.export import main as export
  export(["--workdir", str(lora_run), "--adapters-only", "--output", str(tmp_path / "adapters")])
  peft = load_file(tmp_path / "adapters" / "adapter_model.safetensors")
  peft_config = json.loads((tmp_path / "adapters" / "adapter_config.json").read_text())
  assert peft_config["r"] == RANK and peft_config["lora_alpha"] == ALPHA and len(peft_config["target_modules"]) == 16
  for module in peft_config["target_modules"]:  # PEFT's update: (lora_alpha / r) * B @ A on the torch weight
    key = f"base_model.model.{module}"
    update = (ALPHA / RANK) * peft[f"{key}.lora_B.weight"] @ peft[f"{key}.lora_A.weight"]
    np.testing.assert_allclose(base[f"{module}.weight"] + update, merged[f"{module}.weight"], atol=2e-6)


def test_a_killed_lora_run_resumes_bit_identically(lora_run, spread_dir, tmp_path):
  from starbucks_jax.runtime.metrics import read_metrics
  kill_at = random.randrange(EVERY + 1, STEPS)
  killed = train(tmp_path, spread_dir, STARBUCKS_FAULT_KILL_AT_STEP=str(kill_at))
  assert killed.returncode == -signal.SIGKILL, (kill_at, killed.stderr[-3000:])
  resumed = train(tmp_path, spread_dir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resuming from the checkpoint at step {kill_at // EVERY * EVERY}" in resumed.stderr
  (step_a, a), (step_b, b) = final_state(tmp_path), final_state(lora_run)
  assert step_a == step_b == STEPS and a.keys() == b.keys()
  assert not [k for k in a if not np.array_equal(a[k], b[k])]
  drop_timing = lambda rows: [{k: v for k, v in r.items() if k != "examples_per_sec"} for r in rows]
  assert drop_timing(read_metrics(tmp_path)) == drop_timing(read_metrics(lora_run))


def test_a_base_whose_weights_changed_is_refused(lora_run, spread_dir, tmp_path):
  """The adapters fit the base they were trained on: a reader of the workdir, and a resumed run, refuse
  another one."""
  import shutil
  from safetensors.numpy import load_file, save_file
  from starbucks_jax.inference.encoder import Encoder
  from starbucks_jax.training import lora
  base, workdir = tmp_path / "base", tmp_path / "run"
  shutil.copytree(spread_dir, base)
  shutil.copytree(lora_run, workdir)
  tensors = load_file(base / "model.safetensors")
  name = sorted(tensors)[0]
  save_file({**tensors, name: tensors[name] + 1e-3}, base / "model.safetensors", metadata={"format": "pt"})
  settings_file = workdir / "model" / "starbucks.json"
  settings = json.loads(settings_file.read_text())
  settings["lora"]["base"] = str(base)
  settings_file.write_text(json.dumps(settings))
  with pytest.raises(StarbucksError, match="is not the model this run's adapters were trained on"):
    Encoder.from_pretrained(workdir)
  with pytest.raises(StarbucksError, match="is not the model this run's checkpoints were trained on"):
    lora.check_base_unchanged(workdir, {"lora": dict(settings["lora"], fingerprint="0")})


def test_one_and_eight_devices_agree_under_fsdp():
  probe = REPO / "tests" / "runtime" / "sharding_probe.py"
  out = subprocess.run([sys.executable, str(probe), "0.1", "2", "starbucks", "fsdp"], capture_output=True, text=True,
                       timeout=600, env=dict(os.environ, PROBE_LORA=str(RANK)))
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["devices"] == 8 and result["loss_1"] > 0.1 and result["grad_scale"] > 1e-3
  assert result["metric_diff"] <= 1e-5 and result["grad_diff"] <= 1e-5, result
  assert result["sharded_params"] >= 10  # the frozen base is split by the FSDP rules


def test_dry_run_reports_the_adapters_optimizer_state(tiny_dir):
  from starbucks_jax.training.dry_run import dry_run
  full = dry_run(tiny_config(tiny_dir, **{"eval.sts": ()}))
  lora = dry_run(tiny_config(tiny_dir, **{"eval.sts": (), "lora.rank": RANK}))
  assert lora["parameters_bytes"] > full["parameters_bytes"] > lora["trainable_bytes"] * 20
  assert lora["optimizer_state_bytes"] < full["optimizer_state_bytes"] / 20


@pytest.mark.parametrize("changes, message", [
    ({"lora.rank": -1}, "lora.rank must be 0 (off) or a positive integer, got -1"),
    ({"lora.rank": 4, "lora.alpha": 0.0}, "lora.alpha must be a positive number"),
    ({"lora.rank": 4, "lora.targets": ("attention/(query",)}, "is not a regular expression"),
    ({"lora.rank": 4, "lora.targets": ("self_attn/q_proj/kernel$",)}, "matches no parameter of the model"),
    ({"lora.rank": 4, "lora.targets": ("attention/query/bias$",)}, "LoRA adapts matrices"),
    ({"lora.rank": 32}, "lora.rank 32 is not below the smaller side"),
    ({"task": "smae", "lora.rank": 4}, "lora is for SRL fine-tuning"),
])
def test_bad_lora_settings_are_one_error_line(tiny_dir, tmp_path, changes, message):
  config = tiny_config(tiny_dir, **{k: v for k, v in changes.items() if k != "task"})
  if "task" in changes:
    from starbucks_jax.training.defaults import smae_base_config
    config = smae_base_config()
    config.model.name = str(tiny_dir)
    config.data.source = str(REPO / "data" / "quickstart" / "pretrain_text.jsonl")
    config.lora.rank = changes["lora.rank"]
  with pytest.raises(StarbucksError, match=re.escape(message)) as raised:
    run_train(config, tmp_path / "run")
  assert "\n" not in str(raised.value)
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_adapters_only_needs_a_lora_workdir(tiny_dir, tmp_path):
  from starbucks_jax.cli.export import main as export
  with pytest.raises(StarbucksError, match="is a model folder"):
    export(["--model", str(tiny_dir), "--adapters-only", "--output", str(tmp_path / "out")])
