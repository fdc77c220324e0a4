"""MLPs: the activations the families use, and the gated MLP (GeGLU, SwiGLU) in its two weight layouts.

BERT's plain MLP (dense, GELU, dense) is two `dense.Dense` calls in `bert.py`; a gated MLP computes
act(x W_gate) * (x W_up), then W_down, either from one fused projection (ModernBERT's `wi`: [activated |
linear] halves) or from two (Qwen3's and Gemma's `gate` and `up`)."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from starbucks_jax.model import dense
from starbucks_jax.model.dropout import Dropout

Dtype = Any


def gelu(x: jnp.ndarray) -> jnp.ndarray:
  """The exact GELU, written with erf as PyTorch computes it.

  jax.nn.gelu(approximate=False) goes through erfc, which XLA's CPU backend evaluates more slowly.
  """
  return x * (0.5 + 0.5 * jax.lax.erf(x * (2 ** -0.5)))


def gelu_tanh(x: jnp.ndarray) -> jnp.ndarray:
  """GELU's tanh approximation (Gemma's `gelu_pytorch_tanh`)."""
  return jax.nn.gelu(x, approximate=True)


ACTIVATIONS: dict[str, Callable] = {"gelu": gelu, "gelu_pytorch_tanh": gelu_tanh, "silu": jax.nn.silu}


class GatedMlp(nn.Module):
  """act(gate) * up, dropout, then the down projection, without biases.

  Attributes:
    hidden_size, intermediate_size: the model's and the MLP's widths.
    activation: applied to the gate half.
    fused: one projection `wi` making [gate | up] and `wo` (ModernBERT), else `gate`, `up`, `down`.
    dropout_rate: on the product, before the down projection.
    init_range: the kernels' normal initialiser's standard deviation.
  """
  hidden_size: int
  intermediate_size: int
  activation: Callable = gelu
  fused: bool = False
  dropout_rate: float = 0.0
  init_range: float = 0.02
  dtype: Dtype = jnp.float32

  def _dense(self, features: int, name: str) -> dense.Dense:
    return dense.Dense(features, dtype=self.dtype, name=name, use_bias=False,
                       kernel_init=nn.initializers.normal(self.init_range))

  @nn.compact
  def __call__(self, x, deterministic: bool, row_ids=None):
    width = self.intermediate_size
    if self.fused:
      projected = self._dense(2 * width, "wi")(x)
      h = self.activation(projected[..., :width]) * projected[..., width:]
    else:
      h = self.activation(self._dense(width, "gate")(x)) * self._dense(width, "up")(x)
    h = Dropout(self.dropout_rate)(h, deterministic=deterministic, row_ids=row_ids)
    return self._dense(self.hidden_size, "wo" if self.fused else "down")(h)
