"""Matrix products shaped for XLA:CPU: bfloat16 ones that accumulate in float32, and the vocabulary bias gradient.

Two things the profile of our training steps showed on the CPU (`bench/profile_step.py`):
- A bias gradient is a column sum of the output gradient ([tokens, features] -> [features]). For an
  array as large as the MLM head's vocabulary logits XLA:CPU runs that reduction at a few hundred
  million elements a second, many times slower than the same sum written as a product with a ones
  vector (BENCHMARKS.md, "Profile first, then change", change 4). `add_bias` has its own VJP that
  takes the product. (On other backends the plain reduction is kept.)
- XLA:CPU runs a bfloat16 x bfloat16 -> bfloat16 dot through its generic path, at about the float32
  rate, but a bfloat16 x bfloat16 -> float32 dot through the BF16 instructions, at about twice that
  (`bench/matmul_rate.py`; BENCHMARKS.md).
  Asking the forward dot for float32 is not enough: JAX's transpose of that dot feeds the float32
  cotangent to the backward dots, which then run at the float32 rate. `dot` therefore has its own VJP,
  whose two backward dots also take bfloat16 operands and return float32.
  So with `dtype=bfloat16` on the CPU, the dense layers multiply in bfloat16 and everything between
  them (bias, GELU, residuals, attention, LayerNorm input) stays float32, as under PyTorch's CPU
  autocast: the float32 activations measured faster here than casting each result back to
  bfloat16 (BENCHMARKS.md, "Profile first, then change", change 5). On GPU and TPU, whose matrix
  units accumulate bfloat16 in float32 anyway and where activation memory matters more, the plain
  bfloat16 dot is kept (this rule is unmeasured there).
  The environment variable STARBUCKS_BF16_DOT overrides the rule: `auto` (the default: `dot` on the CPU
  only), `on` (`dot` for bfloat16 on every backend) or `off` (the plain bfloat16 dot everywhere). It is
  read when a step is traced, so set it before the first step compiles; `bench/device_check.sh` times
  both settings on a GPU (the bench scripts' --bf16-dot flag sets it).
Float32 operands always take the plain dot. `Dense` has the parameters of `flax.linen.Dense`
({kernel [in, out], bias [out]}, float32), so checkpoints and the Hugging Face mapping do not see it.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


def _on_cpu() -> bool:
  return jax.default_backend() == "cpu"


@jax.custom_vjp
def dot(x: jnp.ndarray, w: jnp.ndarray) -> jnp.ndarray:
  """x [..., k] @ w [k, n] -> [..., n] float32, from operands of one dtype."""
  return jnp.dot(x, w, preferred_element_type=jnp.float32)


def _dot_forward(x, w):
  return dot(x, w), (x, w)


def _dot_backward(residuals, cotangent):
  x, w = residuals
  g = cotangent.astype(x.dtype)  # the backward products take operands in the compute dtype too
  # Both as einsums: one dot_general each, no transposed copy of an operand (the copy slowed the MiniLM
  # SRL step: BENCHMARKS.md, "Profile first, then change", change 5).
  dx = jnp.einsum("...n,kn->...k", g, w, preferred_element_type=jnp.float32).astype(x.dtype)
  dw = jnp.einsum("...k,...n->kn", x, g, preferred_element_type=jnp.float32).astype(w.dtype)
  return dx, dw


dot.defvjp(_dot_forward, _dot_backward)


BF16_DOT_ENV = "STARBUCKS_BF16_DOT"
BF16_DOT_SETTINGS = ("auto", "on", "off")


def bf16_dot_setting() -> str:
  """STARBUCKS_BF16_DOT: "auto" (unset or empty too), "on" or "off"; a ValueError for anything else."""
  value = os.environ.get(BF16_DOT_ENV, "").strip().lower() or "auto"
  if value not in BF16_DOT_SETTINGS:
    raise ValueError(f"{BF16_DOT_ENV} must be one of {', '.join(BF16_DOT_SETTINGS)}, got {value!r}")
  return value


def uses_bf16_dot(dtype) -> bool:
  """True where `dot` is taken instead of the plain dot: bfloat16 compute on the CPU backend (`auto`), or
  on every backend (`on`), or nowhere (`off`), as STARBUCKS_BF16_DOT says (module docstring)."""
  if jnp.dtype(dtype) != jnp.bfloat16:
    return False
  setting = bf16_dot_setting()
  return _on_cpu() if setting == "auto" else setting == "on"


def matmul(x: jnp.ndarray, w: jnp.ndarray, dtype, out_dtype=None) -> jnp.ndarray:
  """x @ w, both cast to `dtype`; the result in `out_dtype` (default `dtype`), or float32 where `dot` is used."""
  x, w = x.astype(dtype), w.astype(dtype)
  if uses_bf16_dot(dtype):
    return dot(x, w)
  return jnp.dot(x, w, preferred_element_type=out_dtype or dtype)


@jax.custom_vjp
def _add_bias_column_sum_by_product(y: jnp.ndarray, bias: jnp.ndarray) -> jnp.ndarray:
  return y + bias.astype(y.dtype)


def _add_bias_forward(y, bias):
  return _add_bias_column_sum_by_product(y, bias), bias


def _add_bias_backward(bias, cotangent):
  rows = cotangent.reshape(-1, cotangent.shape[-1]).astype(jnp.float32)
  bias_grad = jnp.dot(jnp.ones((rows.shape[0],), jnp.float32), rows)  # the column sum, as a product
  return cotangent, bias_grad.astype(bias.dtype)


_add_bias_column_sum_by_product.defvjp(_add_bias_forward, _add_bias_backward)


def add_bias(y: jnp.ndarray, bias: jnp.ndarray) -> jnp.ndarray:
  """y [..., n] + bias [n] in y's dtype; on the CPU its gradient's column sum is a product (see above).

  For the vocabulary-wide MLM logits. The dense layers' biases keep the plain add: at their widths
  XLA:CPU's sum is as fast or faster, and the product, outside XLA's fusions, made the MiniLM SRL step
  slower (BENCHMARKS.md, "Profile first, then change", change 4)."""
  if _on_cpu():
    return _add_bias_column_sum_by_product(y, bias)
  return y + bias.astype(y.dtype)


class Dense(nn.Module):
  """`flax.linen.Dense` with the same parameters, computing `matmul(x, kernel, dtype) + bias` (no bias
  parameter when `use_bias` is False, as in ModernBERT)."""
  features: int
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
    y = matmul(x, kernel, self.dtype)
    if not self.use_bias:
      return y
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    return y + bias.astype(y.dtype)
