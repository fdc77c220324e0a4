"""An encoder's forward FLOPs, counted by hand (matrix products only, 2 FLOPs a multiply-add).

Per layer and token of a length-S sequence, the family's config says (`EncoderConfig.flops_per_token`);
for an encoder (hidden H, intermediate I): 8 H^2 (query, key, value, output projections) + 4 H I (the
MLP; 6 H I for a gated MLP such as ModernBERT's GeGLU: `config.mlp_projections`) + 4 S H (scores and
mixing; every key counted, also in sliding-window and causal layers, whose masked scores are computed too).
Training steps (`training/flops.py`) and the cost of each size (`evaluation/cost.py`) count from here.
"""

from __future__ import annotations

from starbucks_jax.model.config import EncoderConfig


def layer_flops(config: EncoderConfig, rows: int, length: int) -> float:
  """One encoder layer's forward matmul FLOPs over `rows` sequences of `length` tokens."""
  return float(rows) * length * config.flops_per_token(length)


def encoder_flops(config: EncoderConfig, rows: int, length: int, layers: int) -> float:
  """Forward FLOPs of the embeddings (lookups: none) and the first `layers` layers."""
  return layers * layer_flops(config, rows, length)
