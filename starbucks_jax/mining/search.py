"""Encoding a text set at one (layer, dim) size, shard by shard, and searching a corpus for each query's
best candidates with its positives left out.

Exact search is the evaluation's chunked search (`evaluation/retrieval.search`), a block of queries at a
time; it keeps the corpus's [N, dim] float32 vectors on the host. With a FAISS index (`faiss_factory`,
e.g. "IVF4096,PQ32"), corpus shards are added to the index as they are encoded, so only the index
is held: the way to mine a corpus whose vectors do not fit in memory (approximate unless "Flat").
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from starbucks_jax.errors import StarbucksError
from starbucks_jax.evaluation.retrieval import search

ENCODE_SHARD = 16384  # texts encoded per call: the encoder's sort-by-length works within a shard
QUERY_BLOCK = 1024    # queries searched at once: [block, chunk] scores on the device


def encode_shards(encoder, texts: Sequence[str], *, layer: int, dim: int, max_length: int, batch_size: int,
                  pooling: str | None, normalize: bool, desc: str, show_progress: bool,
                  packing: bool = False) -> Iterator[tuple[int, np.ndarray]]:
  """(first row, [shard, dim] float32) for consecutive shards of `texts`, layer `layer` cut to `dim`
  (`packing`: texts end to end in rows, `inference/encoder.py`)."""
  with tqdm(total=len(texts), desc=desc, unit="text", disable=not show_progress) as bar:
    for start in range(0, len(texts), ENCODE_SHARD):
      shard = list(texts[start:start + ENCODE_SHARD])
      vectors = encoder.encode(shard, layer=layer, dim=dim, pooling=pooling, normalize=normalize,
                               batch_size=batch_size, max_length=max_length, show_progress=False, packing=packing)
      bar.update(len(shard))
      yield start, vectors


def encode_all(encoder, texts: Sequence[str], *, dim: int, **kwargs) -> np.ndarray:
  """[len(texts), dim] float32."""
  out = np.zeros((len(texts), dim), np.float32)
  for start, vectors in encode_shards(encoder, texts, dim=dim, **kwargs):
    out[start:start + len(vectors)] = vectors
  return out


def exact_search(queries: np.ndarray, corpus: np.ndarray, excluded: np.ndarray, *, k: int, similarity: str,
                 chunk_size: int, show_progress: bool) -> tuple[np.ndarray, np.ndarray]:
  """([Q, k] scores, [Q, k] corpus rows) best first, never a row of `excluded` [Q, E] (-1 pads); -inf
  scores where fewer than k rows are left."""
  k = min(k, len(corpus))
  scores = np.full((len(queries), k), -np.inf, np.float32)
  rows = np.full((len(queries), k), -1, np.int64)
  block = min(QUERY_BLOCK, len(queries))
  for start in tqdm(range(0, len(queries), block), desc="searching", unit="block", disable=not show_progress):
    count = min(block, len(queries) - start)  # the last block is padded: one compiled shape
    pad = ((0, block - count), (0, 0))
    got_scores, got_rows = search(np.pad(queries[start:start + count], pad), corpus, k=k, chunk_size=chunk_size,
                                  similarity=similarity,
                                  exclude=np.pad(excluded[start:start + count], pad, constant_values=-1))
    scores[start:start + count], rows[start:start + count] = got_scores[:count], got_rows[:count]
  rows[~np.isfinite(scores)] = -1
  return scores, rows


def faiss_index(factory: str, dim: int):
  """An empty inner-product FAISS index from a factory string; a clear error without faiss or for a bad string."""
  try:
    import faiss  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise StarbucksError("--faiss needs the faiss-cpu package: pip install -e \".[faiss]\"") from None
  try:
    return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
  except RuntimeError as e:
    reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    raise StarbucksError(f"--faiss {factory!r}: FAISS cannot build this index for {dim} dims: {reason}") from None


def faiss_search(index, shards: Iterator[tuple[int, np.ndarray]], queries: np.ndarray, excluded: np.ndarray, *,
                 k: int, nprobe: int | None, show_progress: bool) -> tuple[np.ndarray, np.ndarray]:
  """As `exact_search`, through a FAISS index filled shard by shard (trained on the first shard when it
  needs training). Vectors are inner-product scored: give them normalised for cosine."""
  import faiss  # pylint: disable=import-outside-toplevel
  for _, vectors in shards:
    if not index.is_trained:
      index.train(vectors)
    index.add(vectors)
  if nprobe is not None:
    try:
      faiss.ParameterSpace().set_index_parameter(index, "nprobe", nprobe)
    except RuntimeError:
      raise StarbucksError("--nprobe applies to IVF indexes only") from None
  k = min(k, index.ntotal)
  wide = min(k + excluded.shape[1], index.ntotal)  # room for the excluded rows, dropped afterwards
  scores = np.full((len(queries), k), -np.inf, np.float32)
  rows = np.full((len(queries), k), -1, np.int64)
  for start in tqdm(range(0, len(queries), QUERY_BLOCK), desc="searching", unit="block", disable=not show_progress):
    got_scores, got_rows = index.search(np.ascontiguousarray(queries[start:start + QUERY_BLOCK]), wide)
    for i, (row_scores, row_rows) in enumerate(zip(got_scores, got_rows), start):
      keep = np.flatnonzero((row_rows >= 0) & ~np.isin(row_rows, excluded[i]))
      kept = keep[np.lexsort((row_rows[keep], -row_scores[keep]))][:k]  # equal scores: lower row first, as exact
      scores[i, :len(kept)], rows[i, :len(kept)] = row_scores[kept], row_rows[kept]
  return scores, rows
