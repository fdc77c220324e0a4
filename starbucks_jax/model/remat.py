"""Rematerialisation of encoder layers: which activations a layer keeps for the backward pass.

`model.remat` (and the step settings' `remat`) takes one of
  "none"  every layer keeps what its backward pass reads (the fastest, the most memory);
  "dots"  a layer keeps the outputs of its dense layers (`dots_with_no_batch_dims_saveable`) and
          recomputes the rest in the backward pass: bias adds, GELU, LayerNorm, dropout and the whole
          attention core (scores, softmax, dropout, context), all cheap next to the dense products;
  "full"  a layer keeps only its input and recomputes everything (the least memory, the slowest).
True and False are accepted for "full" and "none", the option's meanings when it was a boolean.

Each policy's peak memory and step time, measured with bench/srl_step.py: BENCHMARKS.md, "Step memory".

Two things make remat work on XLA:CPU (`apply_layer`):
- The recomputation is tied to the layer's output cotangent. JAX keeps a rematerialised computation apart
  from the forward pass with optimization barriers, but XLA:CPU removes those before its CSE and
  scheduling: the recomputed values were merged with the forward ones or computed before the backward
  pass began, and `nn.remat` saved no memory at all (BENCHMARKS.md, "Step memory"). Here the backward
  pass adds 0 * (one element of the cotangent) to every floating residual before it recomputes, a data dependence no compiler pass removes; the values are
  unchanged (a non-finite cotangent makes the gradients non-finite either way, and the step is skipped).
- The step is compiled with XLA's default CPU schedule when remat is on (`training/step.py`
  `compiler_options`): the memory-optimised one left the weight-gradient products of every layer to the
  end of the backward pass, keeping every layer's recomputed activations live.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from starbucks_jax.errors import StarbucksError

REMAT_POLICIES = ("none", "dots", "full")


def remat_policy(remat: Any, what: str = "remat") -> str:
  """`remat` as one of REMAT_POLICIES: True is "full", False (or None) "none"."""
  if remat is True:
    return "full"
  if remat is False or remat is None:
    return "none"
  if isinstance(remat, str) and remat in REMAT_POLICIES:
    return remat
  raise StarbucksError(f"{what} must be one of {', '.join(REMAT_POLICIES)} (or True / False), got {remat!r}")


def parse_remat(value: Any, what: str = "remat") -> str:
  """A config's remat value, also from the command line's text ("True", "false", "dots")."""
  if isinstance(value, str) and value.lower() in ("true", "false"):
    value = value.lower() == "true"
  return remat_policy(value, what)


def layer_class(layer_cls: type[nn.Module], remat: Any) -> type[nn.Module]:
  """`layer_cls` (called as layer(x, mask, deterministic, row_ids)), or its `nn.remat` under the policy."""
  policy = remat_policy(remat)
  if policy == "none":
    return layer_cls
  saveable = jax.checkpoint_policies.dots_with_no_batch_dims_saveable if policy == "dots" else None
  # `deterministic` (argument 3, counting self) must stay a Python bool under remat.
  return nn.remat(layer_cls, static_argnums=(3,), policy=saveable)


def apply_layer(layer: nn.Module, remat: Any, x, mask, deterministic: bool, row_ids=None):
  """`layer(x, mask, deterministic, row_ids)`; for a remat layer (`layer_class`), with its recomputation
  tied to the output's cotangent (see the module docstring)."""
  if remat_policy(remat) == "none":
    return layer(x, mask, deterministic, row_ids)

  def call(module, x, mask, row_ids):
    return module(x, mask, deterministic, row_ids)

  def forward(module, x, mask, row_ids):
    return nn.vjp(call, module, x, mask, row_ids)  # residuals: what the policy saves, and the inputs

  def backward(vjp_fn, cotangent):
    zero = 0 * cotangent.reshape(-1)[0].astype(jnp.float32)
    tie = lambda r: r + zero.astype(r.dtype) if jnp.issubdtype(r.dtype, jnp.inexact) else r
    return jax.tree.map(tie, vjp_fn)(cotangent)

  return nn.custom_vjp(call, forward_fn=forward, backward_fn=backward)(layer, x, mask, row_ids)
