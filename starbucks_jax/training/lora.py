"""LoRA fine-tuning (`config.lora`): low-rank adapters on chosen matrices, trained with the base frozen.

    --config.lora.rank=8 [--config.lora.alpha=16] [--config.lora.targets="('attention/(query|value)/kernel$',)"]

`lora.rank` 0 (the default) is full fine-tuning. With a rank, each parameter whose "/"-joined path
("encoder/layer_0/attention/query/kernel") a `lora.targets` regex finds gets adapters a [in, r], b [r, out]
(`model/lora.py`), and the model the loss sees is the base with W + (alpha / r) * a @ b in place of each W.

Why our own and not Google's qwix (checked in qwix 0.1.8, `qwix.LoraProvider` / `qwix.apply_lora_to_model`):
- qwix wraps the root linen or nnx Module given to it and intercepts `jax.lax.dot_general`, `jnp.dot` and
  `jnp.einsum` called inside it. Our families build their root module inside `forward(params, tokens,
  ...)`, so every family's forward, and the `ModelFamily` interface, would have to take qwix's module.
- The bfloat16 product on the CPU is `model/dense.dot`, a `jax.custom_vjp`: qwix computes its delta
  inside it, and the gradient trace fails (UnexpectedTracerError: the adapter weights escape the custom
  VJP; tried on our `BertEncoder`: float32 works, `dtype=bfloat16` does not).
- Its adapters are new leaves inside the base tree (`kernel_lora_a`, `kernel_lora_b`), and it has no merge
  of linen adapters into the base for an export.
So the adapters are a tree of their own, and the step merges them into the frozen base inside the loss
(`training/step.py`): every family, remat policy, packing, GradCache and the FSDP rules work without a line
of a family's code. The cost: each step computes the merged matrices (r x in x out multiply-adds each)
and holds them while it runs. No dropout on the adapters: LoRA's drops the adapter's input x in
x @ a @ b, a product the merged form never computes.

The state (`step.TrainState`): `params` are the adapters, `opt_state` AdamW's for them alone, `frozen`
the base, which is never checkpointed: a resumed run re-reads it from the starting model (`model.name` or
`init_from`), and `workdir/model/starbucks.json` records which ("lora": base, step, rank, alpha, scale,
parts, fingerprint), so that encode, evaluate, export and init_from of the workdir merge the adapters
into it (`model/lora.merged_into_base`) and a base whose weights changed is refused. Task `smae` refuses
LoRA: it starts a fresh MLM head and MAE decoder, which must train whole.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re

import jax
from flax import traverse_util

from starbucks_jax import storage
from starbucks_jax.errors import StarbucksError
from starbucks_jax.hf.load import default_model_dir
from starbucks_jax.model import lora as lora_tree
from starbucks_jax.model.registry import family_of
from starbucks_jax.runtime import checkpoints, sharding, workdir as workdir_lib
from starbucks_jax.training import step as train_step

# The attention projections of every family: BERT and RoBERTa (query, key, value, output), ModernBERT
# (qkv, output), Qwen3 and Gemma 3 (q_proj, k_proj, v_proj, o_proj).
DEFAULT_TARGETS = (r"(attention|self_attn)/(query|key|value|qkv|output|[qkvo]_proj)/kernel$",)
_ADAPTER_STREAM = 0x10A  # folded into the run's seed for the adapters' initialisation


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """Low-rank adapters (`config.lora`).

  Attributes:
    rank: r, the adapters' inner size; 0: off (full fine-tuning).
    alpha: the update is (alpha / rank) * a @ b.
    targets: regexes searched in each parameter's path ("encoder/layer_0/attention/query/kernel"); each
      must find at least one matrix. The default: every family's attention projections.
  """
  rank: int = 0
  alpha: float = 16.0
  targets: tuple[str, ...] = DEFAULT_TARGETS

  def __post_init__(self):
    if self.rank < 0:
      raise StarbucksError(f"lora.rank must be 0 (off) or a positive integer, got {self.rank}")
    if not (self.alpha > 0 and math.isfinite(self.alpha)):
      raise StarbucksError(f"lora.alpha must be a positive number, got {self.alpha}")
    if self.enabled and not self.targets:
      raise StarbucksError("lora.targets is empty: name the matrices to adapt (regexes on parameter paths)")
    for target in self.targets:
      try:
        re.compile(target)
      except re.error as e:
        raise StarbucksError(f"lora.targets {target!r} is not a regular expression ({e})") from None

  @property
  def enabled(self) -> bool:
    return self.rank > 0

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def matrices(self, shapes: dict[str, tuple]) -> tuple[str, ...]:
    """The paths of `shapes` ({path: shape}) the targets adapt; an error for a target that finds nothing,
    finds a parameter that is not a matrix, or a matrix the rank would not make low-rank."""
    found = []
    for target in self.targets:
      hits = sorted(path for path in shapes if re.search(target, path))
      if not hits:
        example = next((p for p, s in shapes.items() if len(s) == 2 and "kernel" in p), next(iter(shapes), ""))
        raise StarbucksError(f"lora.targets {target!r} matches no parameter of the model (paths look like "
                             f"{example})")
      for path in hits:
        if len(shapes[path]) != 2:
          raise StarbucksError(f"lora.targets {target!r} matches {path}, of shape {tuple(shapes[path])}: LoRA "
                               "adapts matrices (kernels)")
        if self.rank >= min(shapes[path]):
          raise StarbucksError(f"lora.rank {self.rank} is not below the smaller side of {path} "
                               f"{tuple(shapes[path])}: that is no low-rank update (use full fine-tuning)")
      found += hits
    return tuple(sorted(set(found)))


def check_targets(lora: LoraConfig, model_config) -> None:
  """The targets against the family's parameter shapes, before any weight is read."""
  if lora.enabled:
    lora.matrices(family_of(model_config).hf_names.expected_shapes(model_config))


@dataclasses.dataclass(frozen=True)
class Trainable:
  """What a run's optimizer trains: the model's parts named in `parts` (full fine-tuning), or, with
  `paths`, LoRA adapters on those matrices, the base frozen (`parts` then names the adapter tree's parts).
  `record` goes into workdir/model/starbucks.json: what a reader of the workdir merges by."""
  parts: tuple[str, ...]
  lora: LoraConfig
  paths: tuple[str, ...] = ()
  record: dict = dataclasses.field(default_factory=dict)

  def init_state(self, tx, seed: int):
    """params -> the run's first TrainState (jitted or shape-evaluated by the loop and the dry run)."""
    if not self.paths:
      return functools.partial(train_step.init_state, tx=tx, seed=seed)
    return functools.partial(_adapter_state, tx=tx, seed=seed, paths=self.paths, rank=self.lora.rank,
                             scale=self.lora.scale)


def _adapter_state(params, *, tx, seed: int, paths, rank: int, scale: float):
  adapters = lora_tree.init_adapters(params, paths, rank, jax.random.fold_in(jax.random.key(seed), _ADAPTER_STREAM))
  return train_step.init_state(adapters, tx, seed).replace(frozen=params, lora_scale=scale)


def trainable(config, setup, params: dict) -> Trainable:
  """Full fine-tuning of the task's parts, or (lora.rank > 0) adapters on the targets' matrices of the
  starting `params` (host arrays, or a dry run's shapes: no fingerprint then), with the record of the base
  they are trained on."""
  lora = config.lora
  if not lora.enabled:
    return Trainable(tuple(setup.trainable), lora)
  flat = traverse_util.flatten_dict(params, sep="/")
  paths = lora.matrices({path: tuple(getattr(value, "shape", ())) for path, value in flat.items()})
  base, step = _base_of(config)
  record = {"lora": {"base": base, "base_step": step, "rank": lora.rank, "alpha": lora.alpha, "scale": lora.scale,
                     "targets": list(lora.targets), "parts": sorted(params),
                     "fingerprint": None if _is_abstract(params) else lora_tree.fingerprint(params)}}
  return Trainable(tuple(sorted({path.split("/")[0] for path in paths})), lora, paths, record)


def _is_abstract(params: dict) -> bool:
  return any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(params))


def _base_of(config) -> tuple[str, int | None]:
  """Where a resumed run and the workdir's readers re-read the base: `init_from` (a workdir pinned at the
  step it started from) or `model.name`, local paths made absolute."""
  name = config.init_from or (default_model_dir() if config.model.name == "minilm" else config.model.name)
  if storage.as_path(name).exists():
    name = str(storage.absolute(name))
  step = config.init_from_step
  if config.init_from and step is None and workdir_lib.is_workdir(name):
    step = checkpoints.saved_steps(name)[-1]
  return str(name), step


def check_base_unchanged(workdir, model_settings: dict) -> None:
  """A resumed LoRA run must train on the base its checkpoints' adapters were trained on."""
  new = model_settings.get("lora")
  if not new or not workdir_lib.is_workdir(workdir) or not checkpoints.saved_steps(workdir):
    return
  old = workdir_lib.read_model_dir(workdir)[1].get("lora") or {}
  if old.get("fingerprint") != new["fingerprint"]:
    raise StarbucksError(f"the LoRA base {new['base']} is not the model this run's checkpoints were trained on "
                         f"(its weights changed since the run started); use a new --workdir")


def host_params(state, mesh) -> dict:
  """The model of a TrainState as host arrays: its params, or, for LoRA, the base with the adapters merged
  in (a collective: every process must call it)."""
  params = sharding.gather_to_host(state.params, mesh)
  if state.frozen is None:
    return params
  return lora_tree.merge(sharding.gather_to_host(state.frozen, mesh), params, state.lora_scale)
