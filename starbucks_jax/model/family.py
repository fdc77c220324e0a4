"""What a model family provides: the interface that every caller of a model goes through.

A family (BERT, RoBERTa, ModernBERT) is one module with its config and forward pass (`bert.py`) and one with its
parameter names (`bert_names.py`: the Hugging Face name table and the sharding axes); `registry.py`
lists the families. Nothing outside `model/` imports a family module: callers ask the registry for the
family of a config (`registry.family_of(config)`) and call its functions.

Parameter trees are {"encoder": ..., "pooler": {kernel, bias}} (no "pooler" where the Hugging Face model
has none: ModernBERT) plus "mlm_head" (`mlm_head.py`) when the model has one; the encoder tree is the
family's own.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

import flax.linen as nn
import jax.numpy as jnp

# The logical axes of a hidden-state tensor [batch, length, hidden], which every family's forward pass
# puts on its hidden states (`constrain_activations`). Training maps "activation_batch" to the mesh's
# batch axes (`runtime/sharding.py`), so activations stay split by example while FSDP-sharded weights
# are gathered; without rules in force (inference, tests) the constraint does nothing.
ACTIVATION_AXES = ("activation_batch", "activation_length", "activation_embed")


def constrain_activations(x: jnp.ndarray) -> jnp.ndarray:
  return nn.with_logical_constraint(x, ACTIVATION_AXES)


@dataclasses.dataclass(frozen=True)
class HfNames:
  """How a family's parameters are named in Hugging Face checkpoints (read by `hf/convert.py`).

  Each table row is (Hugging Face name, our "/"-joined path, transpose?); "{i}" is a layer index.
  torch's Linear stores [out, in] and our kernels are [in, out], hence the transposes.

  Attributes:
    embeddings, layer, pooler, mlm_head: the tables, in the base-model layout (no prefix).
    base_prefix: what the *ForMaskedLM / *ForPreTraining layouts put before the base model's names.
    head_prefix: the names that keep no prefix in those layouts (the MLM head's): a prefix or a tuple of them.
    ignored: names that carry nothing we keep (buffers, other heads, a tied decoder).
    aliases: {name: older name}: a tensor read under the older name when the name is absent.
    tied_decoder: the head's decoder weight, which must equal the word embeddings (None: no such tensor).
    base_architecture, mlm_architecture: `architectures` of an export without and with the MLM head.
    expected_shapes: config -> {our path: shape} for every parameter of a full model.
    normalise: a checkpoint name -> the base-layout name (strips base_prefix, renames legacy names).
    first_layer_skips: `layer` rows that layer 0 lacks (ModernBERT's layer 0 has no attention norm: its
      input is the embedding norm's output).
  """
  embeddings: tuple
  layer: tuple
  pooler: tuple
  mlm_head: tuple
  base_prefix: str
  head_prefix: str
  ignored: re.Pattern
  aliases: dict
  tied_decoder: str | None
  base_architecture: str
  mlm_architecture: str
  expected_shapes: Callable
  normalise: Callable[[str], str]
  first_layer_skips: frozenset = frozenset()


@dataclasses.dataclass(frozen=True)
class ModelFamily:
  """One encoder architecture.

  Attributes:
    name: for messages ("bert").
    config_class: an `EncoderConfig` subclass; `config_class.model_type` is the `model_type` of the
      config.json files this family reads.
    apply: (params, input_ids, attention_mask=None, token_type_ids=None, *, config, num_layers=None,
      dtype, deterministic=True, dropout_rng=None, remat=False, row_ids=None) -> `pooling.EncoderOutput`,
      (remat: "none" | "dots" | "full", or False / True: `remat.py`),
      every layer's hidden states and pooled vectors up to `num_layers`. `row_ids` [batch] are the rows'
      indices in the whole batch; dropout masks must depend on them, not on the position in `input_ids`,
      so that GradCache's chunked passes drop what one pass would (`model/dropout.py`). Packed rows
      (`data/packing.py`) add `segment_ids`, `position_ids` [batch, length] and `num_texts`: attention
      within each text, positions restarting in each, and pooled vectors per text ([num_texts, hidden]).
    embed: (params, input_ids, *, config, dtype, deterministic, dropout_rng, position_ids=None) -> the
      embedding output alone (SMAE's decoder input).
    apply_layer: (layer_params, x, attention_mask, *, config, dtype, deterministic, dropout_rng,
      segment_ids=None, position_ids=None) -> one encoder layer (SMAE's decoder; rotary families need
      the positions of packed rows).
    init_params: (config, rng, *, with_mlm_head=False) -> a freshly initialised parameter tree.
    init_pooler_params: (config, rng) -> the pooler's parameters (an export needs one; {} for none).
    word_embeddings: params -> the [vocab, hidden] table the MLM head's decoder is tied to.
    first_layer: encoder params -> what `apply_layer` takes, from the first layer (SMAE's decoder starts
      as a copy).
    keep_layers: (encoder params, n) -> the encoder params of the model cut to its first n layers.
    hf_names: the Hugging Face name table.
    param_axes: ((regex on a parameter path, logical axes), ...) for sharding: `runtime/sharding.py`
      maps the logical axes onto the mesh.
  """
  name: str
  config_class: type
  apply: Callable
  embed: Callable
  apply_layer: Callable
  init_params: Callable
  init_pooler_params: Callable
  word_embeddings: Callable
  first_layer: Callable
  keep_layers: Callable
  hf_names: HfNames
  param_axes: tuple

  @property
  def model_type(self) -> str:
    return self.config_class.model_type
