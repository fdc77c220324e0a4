"""ModernBERT's parameter names: the Hugging Face name table and the logical sharding axes.

`ModernBertModel` names its tensors `embeddings.*`, `layers.{i}.*`, `final_norm.weight`;
`ModernBertForMaskedLM` puts `model.` before them and adds `head.{dense,norm}.weight` and
`decoder.{weight,bias}` (the decoder weight tied to the token embeddings). No biases, no pooler. Wqkv and
Wi stay fused, one tensor each, as in the checkpoint: Wqkv's rows are [query | key | value], Wi's
[input | gate] (`modernbert.py` splits them).
"""

from __future__ import annotations

import re

from starbucks_jax.model.family import HfNames

# (Hugging Face name, our path, transpose?); torch's Linear is [out, in], a Flax kernel [in, out].
EMBEDDING_NAMES = (
    ("embeddings.tok_embeddings.weight", "encoder/embeddings/word_embeddings/embedding", False),
    ("embeddings.norm.weight", "encoder/embeddings/layer_norm/scale", False),
    ("final_norm.weight", "encoder/final_norm/scale", False),
)
LAYER_NAMES = (
    ("layers.{i}.attn_norm.weight", "encoder/layer_{i}/attention_norm/scale", False),
    ("layers.{i}.attn.Wqkv.weight", "encoder/layer_{i}/attention/qkv/kernel", True),
    ("layers.{i}.attn.Wo.weight", "encoder/layer_{i}/attention/output/kernel", True),
    ("layers.{i}.mlp_norm.weight", "encoder/layer_{i}/mlp_norm/scale", False),
    ("layers.{i}.mlp.Wi.weight", "encoder/layer_{i}/mlp/wi/kernel", True),
    ("layers.{i}.mlp.Wo.weight", "encoder/layer_{i}/mlp/wo/kernel", True),
)
MLM_HEAD_NAMES = (
    ("head.dense.weight", "mlm_head/transform/kernel", True),
    ("head.norm.weight", "mlm_head/layer_norm/scale", False),
    ("decoder.bias", "mlm_head/bias", False),
)
IGNORED_NAMES = re.compile(r"^decoder\.weight$")  # tied to the token embeddings


def expected_shapes(config) -> dict[str, tuple[int, ...]]:
  """Our path -> shape, for every parameter of a full model with its MLM head."""
  h, ff, v = config.hidden_size, config.intermediate_size, config.vocab_size
  shapes = {
      "encoder/embeddings/word_embeddings/embedding": (v, h), "encoder/embeddings/layer_norm/scale": (h,),
      "encoder/final_norm/scale": (h,),
      "mlm_head/transform/kernel": (h, h), "mlm_head/layer_norm/scale": (h,), "mlm_head/bias": (v,),
  }
  per_layer = {"attention_norm/scale": (h,), "attention/qkv/kernel": (h, 3 * h), "attention/output/kernel": (h, h),
               "mlp_norm/scale": (h,), "mlp/wi/kernel": (h, 2 * ff), "mlp/wo/kernel": (ff, h)}
  for i in range(config.num_hidden_layers):
    for suffix, shape in per_layer.items():
      if i or suffix != "attention_norm/scale":  # layer 0 has no attention norm
        shapes[f"encoder/layer_{i}/{suffix}"] = shape
  return shapes


def normalise_name(name: str) -> str:
  return name[len("model."):] if name.startswith("model.") else name


HF_NAMES = HfNames(
    embeddings=EMBEDDING_NAMES, layer=LAYER_NAMES, pooler=(), mlm_head=MLM_HEAD_NAMES,
    base_prefix="model.", head_prefix=("head.", "decoder."), ignored=IGNORED_NAMES, aliases={},
    tied_decoder="decoder.weight", base_architecture="ModernBertModel", mlm_architecture="ModernBertForMaskedLM",
    expected_shapes=expected_shapes, normalise=normalise_name,
    first_layer_skips=frozenset({"layers.{i}.attn_norm.weight"}))

# Logical axes of the large parameters (first match wins; `runtime/sharding.py` maps "embed" to FSDP).
PARAM_AXES = (
    (r"word_embeddings/embedding$", ("vocab", "embed")),
    (r"attention/qkv/kernel$", ("embed", "heads")),
    (r"attention/output/kernel$", ("heads", "embed")),
    (r"mlp/wi/kernel$", ("embed", "mlp")),
    (r"mlp/wo/kernel$", ("mlp", "embed")),
    (r"transform/kernel$", ("embed", "embed_out")),
)
