"""What a model family provides: the interface that every caller of a model goes through.

A family (BERT, RoBERTa, ModernBERT) is one module with its config and forward pass (`bert.py`), built
from the shared layers (`layers/`), and one with its parameter names (`bert_names.py`: the Hugging Face
name table and the sharding axes); `registry.py` lists the families. Nothing outside `model/` imports a family module: callers ask the registry for the
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
import jax
import jax.numpy as jnp

from starbucks_jax.errors import StarbucksError
from starbucks_jax.model.tokens import Tokens

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
  base_prefix: str
  ignored: re.Pattern
  aliases: dict
  base_architecture: str
  expected_shapes: Callable
  normalise: Callable[[str], str]
  first_layer_skips: frozenset = frozenset()
  # The MLM head's names; a family without one (a decoder embedder, `ModelFamily.mlm` None) leaves them.
  mlm_head: tuple = ()
  head_prefix: str | tuple = ()
  tied_decoder: str | None = None
  mlm_architecture: str = ""


@dataclasses.dataclass(frozen=True)
class MlmSupport:
  """What SMAE pre-training needs of a family: a masked-LM head on its states and a one-layer decoder.

  Attributes:
    embed: (params, input_ids, *, config, dtype, deterministic, dropout_rng, position_ids=None) -> the
      embedding output alone (SMAE's decoder input).
    apply_layer: (layer_params, x, attention_mask, *, config, dtype, deterministic, dropout_rng,
      segment_ids=None, position_ids=None) -> one encoder layer (SMAE's decoder; rotary families need
      the positions of packed rows).
    word_embeddings: params -> the [vocab, hidden] table the MLM head's decoder is tied to.
    first_layer: encoder params -> what `apply_layer` takes, from the first layer (SMAE's decoder starts
      as a copy).
  """
  embed: Callable
  apply_layer: Callable
  word_embeddings: Callable
  first_layer: Callable


@dataclasses.dataclass(frozen=True)
class ModelFamily:
  """One model architecture, and what it can do.

  Attributes:
    name: for messages ("bert").
    config_class: an `EncoderConfig` subclass; `config_class.model_type` is the `model_type` of the
      config.json files this family reads. Its FLOPs per token are the config's (`flops_per_token`).
    forward: (params, tokens: `tokens.Tokens`, *, config, num_layers=None, dtype, deterministic=True,
      dropout_rng=None, remat=False, row_ids=None) -> `pooling.EncoderOutput`: every layer's hidden
      states up to `num_layers`, pooled on demand (remat: "none" | "dots" | "full", or False / True:
      `remat.py`). `row_ids` [batch] are the rows' indices in the whole batch; dropout masks must depend
      on them, not on the position in the batch, so that GradCache's chunked passes drop what one pass
      would (`model/dropout.py`). Packed `tokens` (several texts a row) must keep attention within each
      text, read positions from the tokens, and pool per text (`pooling.py` does the pooling).
    init_params: (config, rng, *, with_mlm_head=False) -> a freshly initialised parameter tree.
    init_pooler_params: (config, rng) -> the pooler's parameters (an export needs one; {} for none).
    keep_layers: (encoder params, n) -> the encoder params of the model cut to its first n layers.
    hf_names: the Hugging Face name table.
    param_axes: ((regex on a parameter path, logical axes), ...) for sharding: `runtime/sharding.py`
      maps the logical axes onto the mesh.
    default_pooling: the pooling a folder without sentence-transformers files gets (`pooling.POOLINGS`).
    mlm: the masked-LM pieces (SMAE pre-training, the MLM export), or None: SMAE is refused.
  """
  name: str
  config_class: type
  forward: Callable
  init_params: Callable
  init_pooler_params: Callable
  keep_layers: Callable
  hf_names: HfNames
  param_axes: tuple
  default_pooling: str = "cls"
  mlm: MlmSupport | None = None

  @property
  def model_type(self) -> str:
    return self.config_class.model_type

  def apply(self, params, input_ids, attention_mask=None, token_type_ids=None, *, segment_ids=None,
            position_ids=None, num_texts=None, **options):
    """`forward` over loose arrays (`Tokens.of`): padded rows, or packed ones with `segment_ids`,
    `position_ids` and `num_texts`."""
    tokens = Tokens.of(input_ids, attention_mask, token_type_ids, segment_ids, position_ids, num_texts)
    return self.forward(params, tokens, **options)

  def require_mlm(self, what: str) -> MlmSupport:
    """The MLM pieces, or an error naming `what` needs them."""
    if self.mlm is None:
      raise StarbucksError(f"{what} needs a masked-LM head, and the {self.name} family has none")
    return self.mlm

  @property
  def word_embeddings(self) -> Callable:
    return self.require_mlm("the MLM head's tied decoder").word_embeddings


def checked_layers(config, tokens: Tokens, num_layers) -> int:
  """The layers to run (all when None), checked against the model, and the length against its positions
  (only where positions are implicit: packed rows restart them)."""
  num_layers = config.num_hidden_layers if num_layers is None else num_layers
  if not 0 <= num_layers <= config.num_hidden_layers:
    raise ValueError(f"num_layers must be in 0..{config.num_hidden_layers}, got {num_layers}")
  if not tokens.packed and tokens.shape[1] > config.max_text_length:
    raise ValueError(f"sequence length {tokens.shape[1]} exceeds the model's {config.max_text_length} positions")
  return num_layers


def module_forward(module_class: type) -> Callable:
  """`ModelFamily.forward` for a family whose model is one Flax module, built as `module_class(config, dtype,
  remat)` and called as (tokens, num_layers=, deterministic=, row_ids=). `params` is the full model tree
  (`{"encoder": ..., ...}`) or its "encoder" part. `remat`: "none" | "dots" | "full" (True = "full", False
  = "none"), what each layer recomputes in the backward pass (`remat.py`). `row_ids` [batch]: each row's
  index in the whole batch, for dropout masks that do not depend on how a batch is split (`dropout.py`);
  None: the rows are the whole batch."""
  def forward(params, tokens: Tokens, *, config, num_layers=None, dtype=jnp.float32, deterministic: bool = True,
              dropout_rng=None, remat=False, row_ids=None):
    encoder_params = params["encoder"] if "encoder" in params else params
    rngs = None if deterministic else {"dropout": dropout_rng}
    return module_class(config, dtype, remat).apply({"params": encoder_params}, tokens, num_layers=num_layers,
                                                    deterministic=deterministic, row_ids=row_ids, rngs=rngs)
  return forward


def init_module_params(module_class: type, config, rng) -> dict:
  """Random parameters of `module_class(config)` (the encoder tree), from a one-text batch of two tokens."""
  tokens = Tokens.padded(jnp.zeros((1, 2), jnp.int32))
  return jax.jit(lambda r: module_class(config).init(r, tokens)["params"])(rng)


def keep_first_layers(encoder_params: dict, n: int) -> dict:
  """`keep_layers` for trees whose layers are `layer_{i}`: everything else, and layers 0..n-1."""
  return {k: v for k, v in encoder_params.items() if not k.startswith("layer_") or int(k.split("_")[1]) < n}
