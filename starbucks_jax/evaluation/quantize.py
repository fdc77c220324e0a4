"""Quantized embeddings, as sentence-transformers' `quantize_embeddings` defines them, and how each
precision is scored in evaluation.

- "int8": per dimension, the calibration set's [min, max] split into 255 steps; a value becomes
  floor((x - min) / step) clipped to 0..255, minus 128. Ranges come from the calibration vectors (the
  corpus in retrieval, the data set's sentences in STS) at the evaluated size. Scored as float vectors of
  those integers (cosine or dot), queries quantized with the corpus's ranges.
- "binary": one bit per dimension, set where x > 0, packed 8 to a byte. Scored by Hamming distance
  (smaller is closer; STS correlates the pairs' negated distances with the gold scores). Retrieval
  then rescores: the best `RESCORE_MULTIPLIER` x depth candidates by
  Hamming distance are re-ranked by the float query's dot product with the candidates' bits, as
  sentence-transformers' `semantic_search_faiss(..., rescore=True)` does.

Hamming distance over d bits equals (d - s.t) / 2 for the sign vectors s, t in {-1, +1}^d, so the
first stage runs as an exact float32 product of sign vectors (integers below 2^24), through the same
chunked device search as float vectors; a test checks it against numpy's popcount of packed bits.
Likewise q.b over bits b = (q.s + sum(q)) / 2: the rescoring ranks by q.s, which orders candidates as
q.b does.
"""

from __future__ import annotations

import numpy as np

from starbucks_jax.errors import StarbucksError

PRECISIONS = ("float32", "int8", "binary")
RESCORE_MULTIPLIER = 4  # sentence-transformers' default for rescoring quantized search


def check_precisions(precisions) -> tuple[str, ...]:
  """The precisions to evaluate, float32 first (the reference the others are compared with)."""
  precisions = tuple(dict.fromkeys(precisions))
  unknown = [p for p in precisions if p not in PRECISIONS]
  if unknown:
    raise StarbucksError(f"precision must be one of {', '.join(PRECISIONS)}, got {', '.join(map(repr, unknown))}")
  return ("float32",) + tuple(p for p in precisions if p != "float32")


def int8_ranges(calibration: np.ndarray) -> np.ndarray:
  """[2, dim]: each dimension's minimum and maximum over the calibration vectors."""
  calibration = np.asarray(calibration, np.float32)
  if calibration.ndim != 2 or len(calibration) < 2:
    raise StarbucksError(f"int8 calibration needs at least 2 vectors, got an array of shape {calibration.shape}")
  return np.vstack([calibration.min(axis=0), calibration.max(axis=0)])


def quantize_int8(vectors: np.ndarray, ranges: np.ndarray) -> np.ndarray:
  """int8 [N, dim] of float vectors, with `ranges` from `int8_ranges` (a constant dimension's step is 1)."""
  starts = ranges[0].astype(np.float32)
  steps = (ranges[1].astype(np.float32) - starts) / 255
  steps = np.where(steps == 0, 1, steps)
  return (np.clip(np.floor((np.asarray(vectors, np.float32) - starts) / steps), 0, 255) - 128).astype(np.int8)


def pack_binary(vectors: np.ndarray) -> np.ndarray:
  """uint8 [N, ceil(dim / 8)]: bit set where the value is > 0 (sentence-transformers' "ubinary"; its
  "binary" is the same bytes minus 128 as int8)."""
  return np.packbits(np.asarray(vectors) > 0, axis=-1)


def signs(vectors: np.ndarray) -> np.ndarray:
  """float32 [N, dim] in {-1, +1}: +1 where the value is > 0 (the bits of `pack_binary`)."""
  return np.where(np.asarray(vectors) > 0, 1.0, -1.0).astype(np.float32)


def hamming_pairs(a_packed: np.ndarray, b_packed: np.ndarray) -> np.ndarray:
  """[N] int64 Hamming distances between row i of `a_packed` and row i of `b_packed` (packed bits)."""
  return np.unpackbits(np.bitwise_xor(a_packed, b_packed), axis=-1).sum(axis=-1, dtype=np.int64)


def bytes_per_vector(dim: int, precision: str) -> int:
  """Storage of one vector: 4 bytes a dimension in float32, 1 in int8, 1 bit in binary (whole bytes)."""
  return {"float32": 4 * dim, "int8": dim, "binary": (dim + 7) // 8}[precision]


def scoring_vectors(vectors: np.ndarray, precision: str, calibration: np.ndarray | None = None) -> np.ndarray:
  """float32 vectors whose cosine is the precision's similarity: the vectors themselves, their int8 codes
  (ranges from `calibration`, default the vectors), or their signs (cosine = 1 - 2 Hamming / dim)."""
  if precision == "float32":
    return np.asarray(vectors, np.float32)
  if precision == "int8":
    ranges = int8_ranges(vectors if calibration is None else calibration)
    return quantize_int8(vectors, ranges).astype(np.float32)
  if precision == "binary":
    return signs(vectors)
  raise StarbucksError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def quantized_search(queries: np.ndarray, corpus: np.ndarray, precision: str, *, k: int, search,
                     similarity: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
  """([Q, k] scores, [Q, k] corpus rows) of a search over the corpus stored at `precision`.

  `search(queries, corpus, k=, similarity=)` is the exact float search (`retrieval.search`). int8: queries
  and corpus quantized with the corpus's ranges, then searched. binary: the RESCORE_MULTIPLIER x k
  nearest by Hamming distance, re-ranked by the float query's dot product with their signs; the scores
  returned are those dot products.
  """
  if precision != "binary":
    calibration = corpus if precision == "int8" else None
    return search(scoring_vectors(queries, precision, calibration), scoring_vectors(corpus, precision, calibration),
                  k=k, similarity=similarity)
  corpus_signs = signs(corpus)
  _, candidates = search(signs(queries), corpus_signs, k=min(RESCORE_MULTIPLIER * k, len(corpus)), similarity="dot")
  rescored = np.einsum("qd,qkd->qk", np.asarray(queries, np.float32), corpus_signs[candidates])
  order = np.argsort(-rescored, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(rescored, order, axis=1), np.take_along_axis(candidates, order, axis=1)
