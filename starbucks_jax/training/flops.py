"""Model FLOPs of a training step, counted by hand: the work the loss needs, whatever the code executes.

Only matrix products count (2 FLOPs per multiply-add), as in the usual MFU convention; LayerNorm,
softmax, GELU and the optimizer are left out. A training step is 3x the forward pass (the backward
pass computes gradients of both activations and weights). Rematerialised work and padding beyond the
given shapes are not model FLOPs.

The encoder's forward FLOPs are `model/flops.py`'s (per layer and token: 8 H^2 + 4 H I + 4 S H).
SRL adds each (layer, dim) pair's [queries x docs] similarity matrix: 2 B D d.
SMAE adds, per pair (n, d): the MLM head at the encoder-masked tokens (transform 2 d H, vocabulary
2 H V), the head transform of the CLS vector (2 d H), one decoder layer over the sequence, and the
head at the decoder-masked tokens (2 H H + 2 H V). The head runs only where a token is predicted:
the official code's logits at every position are work the loss does not need.
"""

from __future__ import annotations

from starbucks_jax.model.config import EncoderConfig
from starbucks_jax.model.flops import encoder_flops, layer_flops

TRAIN_FACTOR = 3  # forward + backward (activation gradients + weight gradients)


def srl_step_flops(config: EncoderConfig, *, pairs, queries: int, group_size: int, query_length: int,
                   passage_length: int) -> float:
  """Model FLOPs of one SRL step: queries and their passages through the encoder, plus every pair's scores.

  Args:
    pairs: the trained (layer, dim) pairs; the encoder runs up to the highest layer.
    queries: B; there are B * group_size passages.
  """
  layers = max(n for n, _ in pairs)
  docs = queries * group_size
  forward = (encoder_flops(config, queries, query_length, layers)
             + encoder_flops(config, docs, passage_length, layers)
             + sum(2.0 * queries * docs * d for _, d in pairs))
  return TRAIN_FACTOR * forward


def smae_step_flops(config: EncoderConfig, *, pairs, rows: int, length: int, encoder_predicted: int,
                    decoder_predicted: int = 0, decoder: bool = True) -> float:
  """Model FLOPs of one SMAE step.

  Args:
    pairs: the (layer, dim) pairs.
    rows, length: the batch's shape.
    encoder_predicted: masked tokens the MLM heads predict (each pair predicts all of them).
    decoder_predicted: decoder-masked tokens each pair's MAE decoder predicts.
    decoder: mode "smae" (with the MAE decoder); False for "mlm2d" / "mlm".
  """
  h, v = config.hidden_size, config.vocab_size
  layers = max(n for n, _ in pairs)
  forward = encoder_flops(config, rows, length, layers)
  for _, d in pairs:
    forward += encoder_predicted * (2.0 * d * h + 2.0 * h * v)
    if decoder:
      forward += rows * 2.0 * d * h  # the CLS vector's head transform
      forward += layer_flops(config, rows, length)
      forward += decoder_predicted * (2.0 * h * h + 2.0 * h * v)
  return TRAIN_FACTOR * forward
