"""Gemma 3's parameter names (`gemma3.py`): the Hugging Face name table and the logical sharding axes.

`Gemma3TextModel` (EmbeddingGemma's folders) names its tensors `embed_tokens.weight`, `layers.{i}.*`,
`norm.weight`; `Gemma3ForCausalLM` puts `model.` before them and may add `lm_head.weight` (tied to the
token embeddings), which carries nothing an embedder keeps. No biases, no pooler, no MLM head. The
embedding scale (sqrt(hidden)) and the rotary frequencies are buffers transformers recomputes, as we do.
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
_NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")
LAYER_NAMES = (
    *((f"layers.{{i}}.{norm}.weight", _LAYER + f"{norm}/scale", False) for norm in _NORMS),
    *((f"layers.{{i}}.self_attn.{p}_proj.weight", _LAYER + f"self_attn/{p}_proj/kernel", True) for p in "qkvo"),
    *((f"layers.{{i}}.self_attn.{p}_norm.weight", _LAYER + f"self_attn/{p}_norm/scale", False) for p in "qk"),
    *((f"layers.{{i}}.mlp.{p}_proj.weight", _LAYER + f"mlp/{p}/kernel", True) for p in ("gate", "up", "down")),
)
IGNORED_NAMES = re.compile(r"^(lm_head\.weight|embed_tokens\.embed_scale|rotary_emb\..*inv_freq)$")


def expected_shapes(config) -> dict[str, tuple[int, ...]]:
  """Our path -> shape, for every parameter of a full model (the attention width may differ from hidden)."""
  h, ff, hd = config.hidden_size, config.intermediate_size, config.head_dim
  q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
  shapes = {"encoder/embed_tokens/embedding": (config.vocab_size, h), "encoder/norm/scale": (h,)}
  per_layer = {**{f"{norm}/scale": (h,) for norm in _NORMS},
               "self_attn/q_proj/kernel": (h, q), "self_attn/k_proj/kernel": (h, kv),
               "self_attn/v_proj/kernel": (h, kv), "self_attn/o_proj/kernel": (q, h),
               "self_attn/q_norm/scale": (hd,), "self_attn/k_norm/scale": (hd,),
               "mlp/gate/kernel": (h, ff), "mlp/up/kernel": (h, ff), "mlp/down/kernel": (ff, h)}
  for i in range(config.num_hidden_layers):
    shapes.update({f"encoder/layer_{i}/{suffix}": shape for suffix, shape in per_layer.items()})
  return shapes


def normalise_name(name: str) -> str:
  return name.removeprefix("model.")


HF_NAMES = HfNames(
    embeddings=EMBEDDING_NAMES, layer=LAYER_NAMES, pooler=(), base_prefix="model.", ignored=IGNORED_NAMES,
    aliases={}, base_architecture="Gemma3TextModel", expected_shapes=expected_shapes, normalise=normalise_name)

# Logical axes of the large parameters (first match wins; `runtime/sharding.py` maps "embed" to FSDP).
PARAM_AXES = (
    (r"embed_tokens/embedding$", ("vocab", "embed")),
    (r"self_attn/(q|k|v)_proj/kernel$", ("embed", "heads")),
    (r"self_attn/o_proj/kernel$", ("heads", "embed")),
    (r"mlp/(gate|up)/kernel$", ("embed", "mlp")),
    (r"mlp/down/kernel$", ("mlp", "embed")),
)
