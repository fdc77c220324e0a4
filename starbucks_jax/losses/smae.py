"""The SMAE pre-training loss: masked-LM at every (layer, dim) pair, plus a masked-autoencoder decoder.

For each pair (n, d), as ielab/Starbucks `smae/modelling.py` computes it:
  MLM  cross-entropy of `head(hidden[n][:, :, :d])` at the encoder-masked positions; the head's transform
       dense layer reads only its first d input rows (full bias), then GELU, LayerNorm and the decoder
       tied to the word embeddings, plus the output bias (`model/mlm_head.py`).
  MAE  `c = head_transform(hidden[n][:, 0, :d])` replaces position 0 of the embedded decoder input (the
       decoder-masked ids through the encoder's own embedding layer); one encoder layer of its own
       (`params["mae_decoder"]`, initialised as a copy of encoder layer 1) runs over it with the padding
       mask, and the shared MLM head predicts the decoder-masked positions.
The encoder, its embedding layer and the decoder layer are the model family's (`model/registry.py`).
Loss = mean over pairs of (MLM + MAE) / 2 (mode "smae"); mean over pairs of MLM ("mlm2d", no decoder);
or the full model's MLM alone ("mlm", plain BERT pre-training). Each cross-entropy is the mean over the
batch's predicted tokens, as torch's `CrossEntropyLoss(ignore_index=-100)` takes it.

Vocabulary logits are the expensive part ([tokens x vocab] per pair). With `gather=True` they are computed
only at the masked positions: each row's labelled positions are gathered into `slots` fixed places first
(a static count, so one compile per padded length). The number of slots comes from the mask rate: the
masker never labels more than `num_to_predict(rate, length)` tokens of a row, and the metric
`dropped_labels` counts any labels that did not fit (0 unless a batch was masked more densely).

Packed rows (`data/packing.py`: the batch has segment_ids, position_ids and text_lengths): the encoder and
the decoder layer attend within each text, each text's CLS vector is its token at position 0, and the
MAE decoder takes each text's transformed CLS vector at that token. A packed row holds several texts,
each of which may round its masked count up, so its slots get length / 8 more than one text's count.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from starbucks_jax.data.masking import IGNORE, num_to_predict
from starbucks_jax.data.smae import BATCH_KEYS
from starbucks_jax.errors import StarbucksError
from starbucks_jax.losses.batch import SmaeBatch
from starbucks_jax.model.config import EncoderConfig
from starbucks_jax.model.mlm_head import head_transform, vocab_logits
from starbucks_jax.model.registry import family_of
from starbucks_jax.pairs import metric_name, pair_problem

MODES = ("smae", "mlm2d", "mlm")


@dataclasses.dataclass(frozen=True)
class SmaeSpec:
  """What the SMAE loss computes; frozen and validated, so it can be a static jit argument.

  Attributes:
    pairs: (layer, dim) pairs, small to large ("mlm" mode: the full model's one pair).
    num_model_layers, hidden_size: the model's size, to check the pairs against.
    mode: "smae" (MLM + MAE at every pair), "mlm2d" (MLM at every pair) or "mlm" (full model only).
    encoder_mask_rate, decoder_mask_rate: the masker's rates; they bound how many labels a row can
      hold, which sets the gathered slots per row. None: one slot per position (any masking fits).
    gather: compute vocabulary logits only at the labelled positions; False computes them at every
      position, as the official PyTorch code does (for comparison and benchmarks).
  """
  pairs: tuple
  num_model_layers: int
  hidden_size: int
  mode: str = "smae"
  encoder_mask_rate: Optional[float] = None
  decoder_mask_rate: Optional[float] = None
  gather: bool = True

  def __post_init__(self):
    if self.mode not in MODES:
      raise StarbucksError(f"smae.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
    if not self.pairs:
      raise StarbucksError("smae.pairs is empty: give at least one (layer, dim) pair")
    for pair in self.pairs:
      if len(pair) != 2:
        raise StarbucksError(f"smae.pairs: {pair!r} is not a (layer, dim) pair")
      problem = pair_problem(pair[0], pair[1], self.num_model_layers, self.hidden_size)
      if problem:
        raise StarbucksError(f"smae pair {tuple(pair)} is beyond the model: {problem}")
    if len(set(self.pairs)) != len(self.pairs):
      raise StarbucksError(f"smae.pairs has a repeated pair: {self.pairs}")
    full = ((self.num_model_layers, self.hidden_size),)
    if self.mode == "mlm" and tuple(self.pairs) != full:
      raise StarbucksError(f"smae.mode 'mlm' trains the full model only: pairs must be {full}, got {self.pairs}")
    for name in ("encoder_mask_rate", "decoder_mask_rate"):
      rate = getattr(self, name)
      if rate is not None and not 0 < rate < 1:
        raise StarbucksError(f"{name} must be in (0, 1), got {rate}")

  @property
  def uses_decoder(self) -> bool:
    return self.mode == "smae"

  def forward_layers(self) -> int:
    return max(n for n, _ in self.pairs)

  def slots(self, length: int, rate: Optional[float], packed: bool = False) -> int:
    """Gathered positions per row for a batch padded (or packed) to `length`."""
    if rate is None:
      return length
    return min(length, num_to_predict(rate, length) + (length // 8 if packed else 0))

  def log_pairs(self) -> tuple:
    return tuple(self.pairs)


def check_batch(batch: dict, spec: SmaeSpec) -> None:
  """Raises a StarbucksError naming a missing key or a shape that disagrees (trace time only)."""
  needed = (BATCH_KEYS if spec.uses_decoder else BATCH_KEYS[:3]) + SmaeBatch.layout_keys(batch)
  missing = [k for k in needed if k not in batch]
  if missing:
    raise StarbucksError(f"SMAE batch lacks {', '.join(missing)}; it needs {', '.join(needed)}")
  shape = batch["input_ids"].shape
  for k in needed:
    if k != "text_lengths" and batch[k].shape != shape:
      raise StarbucksError(f"SMAE batch: {k} has shape {batch[k].shape}, input_ids {shape}")


def _label_positions(labels: jnp.ndarray, slots: int) -> jnp.ndarray:
  """[batch, length] labels -> [batch, slots] positions: the labelled ones first, in order."""
  unlabelled = (labels == IGNORE).astype(jnp.int32)
  return jnp.argsort(unlabelled, axis=1, stable=True)[:, :slots]


class LabelledPositions:
  """Where one branch's labels are: every position (`slots=None`), or each row's first `slots` labelled ones.

  Built once per branch and applied to every pair's hidden states, so the sort happens once.
  """

  def __init__(self, labels: jnp.ndarray, slots: Optional[int]):
    self.positions = None if slots is None else _label_positions(labels, slots)
    self.labels = labels if slots is None else jnp.take_along_axis(labels, self.positions, axis=1)
    # Labels beyond a row's slots (0 unless the batch was masked more densely than the rate allows).
    self.dropped = (jnp.zeros((), jnp.int32) if slots is None else
                    jnp.sum(jnp.maximum(jnp.sum(labels != IGNORE, axis=1) - slots, 0)).astype(jnp.int32))

  def gather(self, hidden: jnp.ndarray) -> jnp.ndarray:
    """[batch, length, d] -> [batch, slots, d]."""
    return hidden if self.positions is None else jnp.take_along_axis(hidden, self.positions[:, :, None], axis=1)


def mean_cross_entropies(head_params, word_embeddings, transformed: list, labels: list, dtype) -> list:
  """Mean cross-entropy over the labelled tokens of each (transformed hidden, labels) term.

  All terms go through the vocabulary projection and the softmax as one [tokens, vocab] block: one
  large matmul runs faster than a dozen small ones, and the result is the same.
  """
  sizes = [t.shape[0] * t.shape[1] for t in transformed]
  h = jnp.concatenate([t.reshape(-1, t.shape[-1]) for t in transformed])
  y = jnp.concatenate([l.reshape(-1) for l in labels])
  logits = vocab_logits(head_params, word_embeddings, h, dtype=dtype)
  valid = y != IGNORE
  log_norm = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, jnp.where(valid, y, 0)[:, None], axis=-1)[:, 0]
  nll = jnp.where(valid, log_norm - picked, 0.0)
  means, start = [], 0
  for size in sizes:
    count = jnp.sum(valid[start:start + size])
    means.append(jnp.sum(nll[start:start + size]) / jnp.maximum(count, 1))
    start += size
  return means


def smae_loss(params, batch: dict, *, spec: SmaeSpec, model_config: EncoderConfig, dtype=jnp.float32,
              deterministic: bool = True, dropout_rng: Optional[jax.Array] = None, remat: bool | str = False):
  """(loss, metrics) of one batch; a pure function of the parameters, the batch and the dropout key.

  Args:
    params: {"encoder", "mlm_head", and for mode "smae" "mae_decoder"} (other keys are ignored).
    batch: int arrays [batch, length]: input_ids, attention_mask, labels, and for mode "smae"
      decoder_input_ids, decoder_labels; labels are -100 where nothing is predicted.
    spec: the pairs, the mode and the gathering (see SmaeSpec).
    model_config: the encoder's config (its family runs the encoder and the decoder layer).
    dtype: compute dtype (float32 or bfloat16); logits, softmax and LayerNorm statistics stay float32.
    deterministic: no dropout when True; otherwise `dropout_rng` drives it.
    remat: what encoder layers recompute in the backward pass: "none" | "dots" | "full" (`model/remat.py`).

  Returns:
    loss: the scalar; metrics: {"mlm/n{n}_d{d}", "mae/n{n}_d{d}" per pair, "dropped_labels"}.
  """
  check_batch(batch, spec)
  smae = SmaeBatch.of(batch)
  family = family_of(model_config)
  length = smae.tokens.shape[1]
  if deterministic:
    encoder_rng = decoder_rngs = None
  else:
    encoder_rng, *decoder_rngs = jax.random.split(dropout_rng, 3)
  head = params["mlm_head"]
  transform = lambda h: head_transform(head, h, layer_norm_eps=model_config.layer_norm_eps, dtype=dtype)
  out = family.forward(params, smae.tokens, config=model_config, num_layers=spec.forward_layers(), dtype=dtype,
                       deterministic=deterministic, dropout_rng=encoder_rng, remat=remat)
  packed = smae.tokens.packed  # several texts a row may each round their masked count up
  encoder_slots = spec.slots(length, spec.encoder_mask_rate, packed) if spec.gather else None

  masked = LabelledPositions(smae.labels, encoder_slots)
  names, transformed, labels, dropped = [], [], [], masked.dropped
  for n, d in spec.pairs:
    names.append(metric_name("mlm", (n, d)))
    transformed.append(transform(masked.gather(out.hidden_states[n][:, :, :d])))
    labels.append(masked.labels)

  if spec.uses_decoder:
    decoder_slots = spec.slots(length, spec.decoder_mask_rate, packed) if spec.gather else None
    mae = _mae_terms(params, smae, out, transform, spec, model_config, dtype, decoder_slots, decoder_rngs)
    names += mae[0]
    transformed += mae[1]
    labels += mae[2]
    dropped = dropped + mae[3]

  word_embeddings = family.require_mlm("SMAE pre-training").word_embeddings(params)
  losses = dict(zip(names, mean_cross_entropies(head, word_embeddings, transformed, labels, dtype)))
  terms = [losses[metric_name("mlm", pair)] for pair in spec.pairs]
  if spec.uses_decoder:
    terms = [(mlm + losses[metric_name("mae", pair)]) / 2 for mlm, pair in zip(terms, spec.pairs)]
  loss = sum(terms) / len(terms)
  return loss, {**losses, "dropped_labels": dropped}


def _mae_terms(params, smae: SmaeBatch, out, transform, spec: SmaeSpec, model_config, dtype, slots, rngs):
  """The MAE decoder's (names, transformed states, labels, dropped labels): one term per pair, each the
  decoder run over the embedded decoder input with the pair's transformed CLS vector at position 0
  (of each row; of each text in packed rows)."""
  mlm = family_of(model_config).require_mlm("SMAE's MAE decoder")
  deterministic = rngs is None
  embed_rng, decoder_rng = (None, None) if deterministic else rngs
  tokens = smae.tokens
  decoder_input = mlm.embed(params, smae.decoder_input_ids, config=model_config, dtype=dtype,
                            deterministic=deterministic, dropout_rng=embed_rng, position_ids=tokens.given_positions)
  inputs = jnp.broadcast_to(decoder_input, (len(spec.pairs),) + decoder_input.shape)
  inputs = _with_cls_vectors(inputs, out, transform, spec.pairs, tokens)

  def decode(x, rng):
    return mlm.apply_layer(params["mae_decoder"], x, tokens.attention_mask, config=model_config, dtype=dtype,
                           deterministic=deterministic, dropout_rng=rng, segment_ids=tokens.packed_segments,
                           position_ids=tokens.given_positions)

  if deterministic:
    decoded = jax.vmap(lambda x: decode(x, None))(inputs)
  else:
    decoded = jax.vmap(decode)(inputs, jax.random.split(decoder_rng, len(spec.pairs)))
  decoder_masked = LabelledPositions(smae.decoder_labels, slots)
  names = [metric_name("mae", pair) for pair in spec.pairs]
  transformed = [transform(decoder_masked.gather(decoded[k])) for k in range(len(spec.pairs))]
  return names, transformed, [decoder_masked.labels] * len(spec.pairs), decoder_masked.dropped


def _with_cls_vectors(inputs, out, transform, pairs, tokens):
  """The decoder inputs [pairs, rows, length, hidden] with c, each pair's transformed CLS vector cut to d
  dims, in place of each text's first token: position 0 of each row, or of each text in packed rows."""
  if tokens.packed:  # c per pair and text, [pairs, texts, hidden], gathered to each text's tokens
    cls = jnp.stack([transform(out.cls[n][:, :d]) for n, d in pairs])
    text = jnp.clip(tokens.segment_ids, 0, tokens.num_texts - 1)
    first = (tokens.position_ids == 0) & (tokens.attention_mask > 0)
    return jnp.where(first[None, :, :, None], cls[:, text].astype(inputs.dtype), inputs)
  cls = jnp.stack([transform(out.hidden_states[n][:, 0, :d]) for n, d in pairs])  # [pairs, rows, hidden]
  return inputs.at[:, :, 0].set(cls.astype(inputs.dtype))


def init_decoder_params(encoder_params: dict, model_config: EncoderConfig) -> dict:
  """The MAE decoder's initial parameters: a copy of encoder layer 1, as the paper's code does (a dry run's
  shapes, `jax.ShapeDtypeStruct`, stay shapes)."""
  copy = lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else np.array(x)
  return jax.tree.map(copy, family_of(model_config).require_mlm("SMAE's MAE decoder").first_layer(encoder_params))
