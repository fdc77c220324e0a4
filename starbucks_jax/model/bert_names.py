"""BERT's parameter names: the Hugging Face name table (read by `hf/convert.py` both ways, checked by the
parity and coverage tests) and the logical sharding axes of its large parameters.

Hugging Face names are written in the `BertModel` layout; the `BertForMaskedLM` / `BertForPreTraining`
layouts put `bert.` before them and add `cls.*`. Our tree: {"encoder": <bert.BertEncoder params>,
"pooler": {kernel, bias}, "mlm_head": <mlm_head params>}; "mlm_head" only when the checkpoint has one.
"""

from __future__ import annotations

import re

from starbucks_jax.model.family import HfNames

# (Hugging Face name, our path, transpose?). "{i}" is the layer index. torch's Linear stores
# [out, in]; a Flax Dense kernel is [in, out], hence the transposes.
EMBEDDING_NAMES = (
    ("embeddings.word_embeddings.weight", "encoder/embeddings/word_embeddings/embedding", False),
    ("embeddings.position_embeddings.weight", "encoder/embeddings/position_embeddings/embedding", False),
    ("embeddings.token_type_embeddings.weight", "encoder/embeddings/token_type_embeddings/embedding", False),
    ("embeddings.LayerNorm.weight", "encoder/embeddings/layer_norm/scale", False),
    ("embeddings.LayerNorm.bias", "encoder/embeddings/layer_norm/bias", False),
)
LAYER_NAMES = (
    ("encoder.layer.{i}.attention.self.query.weight", "encoder/layer_{i}/attention/query/kernel", True),
    ("encoder.layer.{i}.attention.self.query.bias", "encoder/layer_{i}/attention/query/bias", False),
    ("encoder.layer.{i}.attention.self.key.weight", "encoder/layer_{i}/attention/key/kernel", True),
    ("encoder.layer.{i}.attention.self.key.bias", "encoder/layer_{i}/attention/key/bias", False),
    ("encoder.layer.{i}.attention.self.value.weight", "encoder/layer_{i}/attention/value/kernel", True),
    ("encoder.layer.{i}.attention.self.value.bias", "encoder/layer_{i}/attention/value/bias", False),
    ("encoder.layer.{i}.attention.output.dense.weight", "encoder/layer_{i}/attention/output/kernel", True),
    ("encoder.layer.{i}.attention.output.dense.bias", "encoder/layer_{i}/attention/output/bias", False),
    ("encoder.layer.{i}.attention.output.LayerNorm.weight", "encoder/layer_{i}/attention_layer_norm/scale", False),
    ("encoder.layer.{i}.attention.output.LayerNorm.bias", "encoder/layer_{i}/attention_layer_norm/bias", False),
    ("encoder.layer.{i}.intermediate.dense.weight", "encoder/layer_{i}/intermediate/kernel", True),
    ("encoder.layer.{i}.intermediate.dense.bias", "encoder/layer_{i}/intermediate/bias", False),
    ("encoder.layer.{i}.output.dense.weight", "encoder/layer_{i}/output/kernel", True),
    ("encoder.layer.{i}.output.dense.bias", "encoder/layer_{i}/output/bias", False),
    ("encoder.layer.{i}.output.LayerNorm.weight", "encoder/layer_{i}/output_layer_norm/scale", False),
    ("encoder.layer.{i}.output.LayerNorm.bias", "encoder/layer_{i}/output_layer_norm/bias", False),
)
POOLER_NAMES = (
    ("pooler.dense.weight", "pooler/kernel", True),
    ("pooler.dense.bias", "pooler/bias", False),
)
MLM_HEAD_NAMES = (
    ("cls.predictions.transform.dense.weight", "mlm_head/transform/kernel", True),
    ("cls.predictions.transform.dense.bias", "mlm_head/transform/bias", False),
    ("cls.predictions.transform.LayerNorm.weight", "mlm_head/layer_norm/scale", False),
    ("cls.predictions.transform.LayerNorm.bias", "mlm_head/layer_norm/bias", False),
    ("cls.predictions.bias", "mlm_head/bias", False),
)
# Present in some checkpoints, carrying nothing we keep: buffers, the NSP head, the tied decoder.
IGNORED_NAMES = re.compile(r"^(embeddings\.position_ids|embeddings\.token_type_ids|cls\.seq_relationship\..*"
                           r"|cls\.predictions\.decoder\.(weight|bias))$")


def name_table(num_layers: int) -> list[tuple[str, str, bool]]:
  """The full table for a model with `num_layers` layers (no pooler or head)."""
  layers = [(hf.format(i=i), ours.format(i=i), t) for i in range(num_layers) for hf, ours, t in LAYER_NAMES]
  return list(EMBEDDING_NAMES) + layers


def expected_shapes(config) -> dict[str, tuple[int, ...]]:
  """Our path -> shape, for every parameter of a full model with pooler and MLM head."""
  h, ff, v = config.hidden_size, config.intermediate_size, config.vocab_size
  shapes = {
      "encoder/embeddings/word_embeddings/embedding": (v, h),
      "encoder/embeddings/position_embeddings/embedding": (config.max_position_embeddings, h),
      "encoder/embeddings/token_type_embeddings/embedding": (config.type_vocab_size, h),
      "encoder/embeddings/layer_norm/scale": (h,), "encoder/embeddings/layer_norm/bias": (h,),
      "pooler/kernel": (h, h), "pooler/bias": (h,),
      "mlm_head/transform/kernel": (h, h), "mlm_head/transform/bias": (h,),
      "mlm_head/layer_norm/scale": (h,), "mlm_head/layer_norm/bias": (h,), "mlm_head/bias": (v,),
  }
  per_layer = {"attention/query/kernel": (h, h), "attention/key/kernel": (h, h), "attention/value/kernel": (h, h),
               "attention/output/kernel": (h, h), "intermediate/kernel": (h, ff), "intermediate/bias": (ff,),
               "output/kernel": (ff, h)}
  for _, ours, _ in LAYER_NAMES:
    suffix = ours.split("/", 2)[2]
    for i in range(config.num_hidden_layers):
      shapes[ours.format(i=i)] = per_layer.get(suffix, (h,))
  return shapes


def normalise_name(name: str) -> str:
  """Strips the `bert.` prefix and renames TF-era LayerNorm gamma/beta."""
  if name.startswith("bert."):
    name = name[len("bert."):]
  return re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name))


HF_NAMES = HfNames(
    embeddings=EMBEDDING_NAMES, layer=LAYER_NAMES, pooler=POOLER_NAMES, mlm_head=MLM_HEAD_NAMES,
    base_prefix="bert.", head_prefix="cls.", ignored=IGNORED_NAMES,
    aliases={"cls.predictions.bias": "cls.predictions.decoder.bias"},  # older checkpoints
    tied_decoder="cls.predictions.decoder.weight",
    base_architecture="BertModel", mlm_architecture="BertForMaskedLM",
    expected_shapes=expected_shapes, normalise=normalise_name)

# The logical axes of each large parameter, matched against the end of its path ("encoder/layer_3/
# attention/query/kernel"; optimizer moments carry the same path, and so does SMAE's "mae_decoder", a
# copy of a layer). The first match wins; `runtime/sharding.py` maps the axes onto the mesh.
PARAM_AXES = (
    (r"word_embeddings/embedding$", ("vocab", "embed")),
    (r"position_embeddings/embedding$", ("position", "embed")),
    (r"attention/(query|key|value)/kernel$", ("embed", "heads")),
    (r"attention/output/kernel$", ("heads", "embed")),
    (r"intermediate/kernel$", ("embed", "mlp")),
    (r"output/kernel$", ("mlp", "embed")),
    (r"(transform|pooler)/kernel$", ("embed", "embed_out")),
)
