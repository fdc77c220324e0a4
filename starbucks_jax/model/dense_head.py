"""sentence-transformers' Dense modules after pooling, as part of the model (EmbeddingGemma: Pooling, then
Dense 768 -> 3072 and Dense 3072 -> 768, then Normalize).

Why in the parameters: the head is part of what the embedder computes, so it is trained with the encoder
(SRL's trainable parts), checkpointed, and exported beside it (`hf/load.py` reads the Dense folders,
`hf/save.py` writes them), without a setting of its own anywhere.

How it meets the (layer, dim) pairs: one head serves every layer, between pooling and the Matryoshka cut,
so the vector of pair (n, d) is `dense_head(pool(layer n))[:d]` (then normalised where a loss or a search
asks). That is what sentence-transformers computes for the n-layer export with `truncate_dim=d`: its
modules run Transformer, Pooling, Dense..., Normalize, and the cut comes last. Because the cut follows the
head, the head must end at hidden_size, the width every pair and vector array has (`hf/load.py` refuses
others), and training teaches its first d outputs to serve each dim d.

The tree: params["dense_head"] = {"0": {"kernel": [in, out], "bias": [out] (when the module has one)},
"1": ...}, applied in index order. No activation: sentence-transformers' Identity is the one read (others
are refused when a folder is read: a string has no place in a parameter tree).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

KEY = "dense_head"
ST_IDENTITY = "torch.nn.modules.linear.Identity"  # the activation_function a Dense config names


def apply_dense_head(params: dict, pooled: jnp.ndarray) -> jnp.ndarray:
  """The pooled vectors [texts, hidden] through the model's Dense modules, in float32; unchanged for a
  model without them."""
  head = params.get(KEY) or {}
  x = pooled
  for key in sorted(head, key=int):
    layer = head[key]
    x = jnp.dot(x.astype(jnp.float32), layer["kernel"].astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
    if "bias" in layer:
      x = x + layer["bias"].astype(jnp.float32)
  return x
