"""Qwen3's parameter names: the Hugging Face name table and the logical sharding axes.

`Qwen3Model` names its tensors `embed_tokens.weight`, `layers.{i}.*`, `norm.weight`; `Qwen3ForCausalLM`
puts `model.` before them and adds `lm_head.weight` (absent when `tie_word_embeddings` ties it to the
token embeddings), which carries nothing an embedder keeps. Qwen3-Embedding folders hold either layout.
No biases, no pooler, no MLM head. Older checkpoints may hold the rotary buffers `rotary_emb.inv_freq`
(transformers recomputes them; so does `layers/rotary.py`).
"""

from __future__ import annotations

import re

from starbucks_jax.model.family import HfNames

# (Hugging Face name, our path, transpose?); torch's Linear is [out, in], a Flax kernel [in, out].
EMBEDDING_NAMES = (
    ("embed_tokens.weight", "encoder/embed_tokens/embedding", False),
    ("norm.weight", "encoder/norm/scale", False),
)
_LAYER = "encoder/layer_{i}/"
LAYER_NAMES = (
    ("layers.{i}.input_layernorm.weight", _LAYER + "input_layernorm/scale", False),
    *((f"layers.{{i}}.self_attn.{p}_proj.weight", _LAYER + f"self_attn/{p}_proj/kernel", True) for p in "qkvo"),
    *((f"layers.{{i}}.self_attn.{p}_norm.weight", _LAYER + f"self_attn/{p}_norm/scale", False) for p in "qk"),
    ("layers.{i}.post_attention_layernorm.weight", _LAYER + "post_attention_layernorm/scale", False),
    *((f"layers.{{i}}.mlp.{p}_proj.weight", _LAYER + f"mlp/{p}/kernel", True) for p in ("gate", "up", "down")),
)
IGNORED_NAMES = re.compile(r"^(lm_head\.weight|(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq)$")


def expected_shapes(config) -> dict[str, tuple[int, ...]]:
  """Our path -> shape, for every parameter of a full model (the attention width may differ from hidden)."""
  h, ff, hd = config.hidden_size, config.intermediate_size, config.head_dim
  q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
  shapes = {"encoder/embed_tokens/embedding": (config.vocab_size, h), "encoder/norm/scale": (h,)}
  per_layer = {"input_layernorm/scale": (h,), "self_attn/q_proj/kernel": (h, q), "self_attn/k_proj/kernel": (h, kv),
               "self_attn/v_proj/kernel": (h, kv), "self_attn/o_proj/kernel": (q, h),
               "self_attn/q_norm/scale": (hd,), "self_attn/k_norm/scale": (hd,),
               "post_attention_layernorm/scale": (h,), "mlp/gate/kernel": (h, ff), "mlp/up/kernel": (h, ff),
               "mlp/down/kernel": (ff, h)}
  for i in range(config.num_hidden_layers):
    shapes.update({f"encoder/layer_{i}/{suffix}": shape for suffix, shape in per_layer.items()})
  return shapes


def normalise_name(name: str) -> str:
  """A `Qwen3ForCausalLM` name -> the `Qwen3Model` one."""
  return name.removeprefix("model.")


HF_NAMES = HfNames(
    embeddings=EMBEDDING_NAMES, layer=LAYER_NAMES, pooler=(), base_prefix="model.", ignored=IGNORED_NAMES,
    aliases={}, base_architecture="Qwen3Model", expected_shapes=expected_shapes, normalise=normalise_name)

# Logical axes of the large parameters (first match wins; `runtime/sharding.py` maps "embed" to FSDP).
PARAM_AXES = (
    (r"embed_tokens/embedding$", ("vocab", "embed")),
    (r"self_attn/(q|k|v)_proj/kernel$", ("embed", "heads")),
    (r"self_attn/o_proj/kernel$", ("heads", "embed")),
    (r"mlp/(gate|up)/kernel$", ("embed", "mlp")),
    (r"mlp/down/kernel$", ("mlp", "embed")),
)
