"""What each (layer, dim) size costs to run: encoding time per layer count (measured on this device),
FLOPs per text (counted, `model/flops.py`), bytes per vector at each precision, and exact-search time
per query over a corpus of N vectors (measured).

Encoding is timed on fixed [batch, length] inputs (random token ids, no padding), so every layer count
does the same work per layer and the FLOP count applies exactly: the compiled forward pass that stops
at layer n (`Encoder`'s), compiled and run once first, then the best of `repeats` timed runs. Search is
timed with `retrieval.search` (the evaluation's exact search) of `search_queries` random queries over
`search_corpus` random vectors of each dim; int8 and binary corpora are searched as float32 matrices
of their codes there (`quantize.py`), so their search time is float32's and only their bytes differ.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from starbucks_jax.errors import StarbucksError
from starbucks_jax.evaluation import quantize
from starbucks_jax.evaluation.retrieval import search
from starbucks_jax.inference.encoder import pooled_layers
from starbucks_jax.model.flops import encoder_flops


@dataclasses.dataclass(frozen=True)
class CostOptions:
  """batch_size x length: the encoding input timed; repeats: timed runs (the best is kept);
  search_corpus, search_queries: the exact-search timing's corpus and query counts."""
  batch_size: int = 32
  length: int = 128
  repeats: int = 3
  search_corpus: int = 100_000
  search_queries: int = 256

  def __post_init__(self):
    for name in ("batch_size", "length", "repeats", "search_corpus", "search_queries"):
      if getattr(self, name) < 1:
        raise StarbucksError(f"cost {name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")


def _best_time(run, repeats: int) -> float:
  jax.block_until_ready(run())  # compile and warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(run())
    times.append(time.perf_counter() - start)
  return min(times)


def encoding_cost(encoder, layers, options: CostOptions = CostOptions()) -> dict[int, dict[str, float]]:
  """{layer: {"texts_per_sec", "ms_per_1k_texts", "gflops_per_text"}} at options' batch and length."""
  config = encoder.config
  length = min(options.length, config.max_text_length)
  rng = np.random.default_rng(0)
  ids = jax.numpy.asarray(rng.integers(0, config.vocab_size, (options.batch_size, length)), jax.numpy.int32)
  mask = jax.numpy.ones_like(ids)
  costs = {}
  for n in sorted(set(layers)):
    run = lambda n=n: pooled_layers(encoder.params, ids, mask, config=config, num_layers=n, layers=(n,),
                                    pooling=encoder.default_pooling, dtype=encoder.dtype)
    seconds = _best_time(run, options.repeats)
    costs[n] = {"texts_per_sec": options.batch_size / seconds, "ms_per_1k_texts": 1e6 * seconds / options.batch_size,
                "gflops_per_text": encoder_flops(config, 1, length, n) / 1e9}
  return costs


def search_cost(dims, options: CostOptions = CostOptions(), similarity: str = "cosine") -> dict[int, float]:
  """{dim: milliseconds per query} of exact top-100 search over `search_corpus` vectors."""
  rng = np.random.default_rng(1)
  costs = {}
  for dim in sorted(set(dims)):
    corpus = rng.standard_normal((options.search_corpus, dim), dtype=np.float32)
    queries = rng.standard_normal((options.search_queries, dim), dtype=np.float32)
    seconds = _best_time(lambda: search(queries, corpus, similarity=similarity)[0], options.repeats)
    costs[dim] = 1e3 * seconds / options.search_queries
  return costs


def _device() -> str:
  device = jax.devices()[0]
  kind = "" if device.device_kind == device.platform else f" ({device.device_kind})"
  return f"{device.platform}{kind}, {jax.device_count()} device(s)"


def size_costs(encoder, pairs, precisions, options: CostOptions = CostOptions(), similarity: str = "cosine") -> dict:
  """Everything above for the evaluated sizes: {"options", "encoding": {layer: ...}, "search_ms_per_query":
  {dim: ms}, "bytes_per_vector": {precision: {dim: bytes}}, "device"}."""
  dims = sorted({d for _, d in pairs})
  return {
      "options": dataclasses.asdict(options),
      "device": _device(),
      "encoding": encoding_cost(encoder, [n for n, _ in pairs], options),
      "search_ms_per_query": search_cost(dims, options, similarity),
      "bytes_per_vector": {p: {d: quantize.bytes_per_vector(d, p) for d in dims}
                           for p in quantize.check_precisions(precisions)},
  }
