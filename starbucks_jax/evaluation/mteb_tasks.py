"""MTEB at every (layer, dim) size: the `mteb` evaluator (`--mteb TASK ...`, `eval.mteb`).

A TASK is an STS file or a BEIR folder (made into an MTEB STS or retrieval task here, offline) or the
name of a task in MTEB's registry ("STSBenchmark", "SciFact"; its data comes from the Hugging Face hub).
Each size runs through `mteb.evaluate` as its own model (`SizeModel`, named
"starbucks-jax/<model>-n<n>-d<d>"), so MTEB writes one result file per size in its own format
(`<folder>/results/starbucks-jax__<model>-n<n>-d<d>/<revision>/<task>.json`, which `mteb.ResultCache.
load_results` reads). Every text is encoded once, through all the layers the sizes need, and kept
(`LayerCache`): the other sizes read their layer's vector from it, cut to d. That holds every text's
vectors at those layers in memory, which suits MTEB's STS and BEIR-sized tasks, not MS MARCO's corpus.
Our results hold each task's MTEB main score per size ("main_score": cosine Spearman for STS, nDCG@10
for retrieval, 0..1 as MTEB reports them). MTEB scores float32 vectors: `--precision` does not apply.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from starbucks_jax import storage
from starbucks_jax.errors import StarbucksError
from starbucks_jax.evaluation.datasets import load_beir, load_sts
from starbucks_jax.evaluation.evaluator import EvalOptions, Evaluator
from starbucks_jax.pairs import Pair, result_key

log = logging.getLogger(__name__)
ORGANISATION = "starbucks-jax"


@dataclasses.dataclass(frozen=True)
class MtebSet:
  name: str     # our results' key: "mteb_<file or folder name>" (the same files may go to --sts / --beir too)
  task: object  # an mteb AbsTask, named after the file or folder (or MTEB's name)


def _metadata(name: str, kind: str, main_score: str):
  from mteb.abstasks.task_metadata import TaskMetadata
  return TaskMetadata(
      name=name, description=f"{name}, read from local files by starbucks_jax", type=kind, main_score=main_score,
      dataset={"path": f"local/{name}", "revision": "local"}, reference=None, category="t2t", modalities=["text"],
      eval_splits=["test"], eval_langs=["eng-Latn"], date=None, domains=None, task_subtypes=None, license=None,
      annotations_creators=None, dialect=None, sample_creation=None, bibtex_citation="")


def sts_task(data):
  """An MTEB STS task of a loaded `StsSet` (its gold scale is MTEB's min/max scores)."""
  from datasets import Dataset, DatasetDict
  from mteb.abstasks.sts import AbsTaskSTS

  class LocalSts(AbsTaskSTS):
    metadata = _metadata(data.name, "STS", "cosine_spearman")
    min_score, max_score = float(np.min(data.scores)), float(np.max(data.scores))

    def load_data(self, num_proc=None, **kwargs):  # mteb unloads after each run: this rebuilds it
      del num_proc, kwargs
      self.dataset = DatasetDict({"test": Dataset.from_dict(
          {"sentence1": data.sentence1, "sentence2": data.sentence2, "score": [float(s) for s in data.scores]})})
      self.data_loaded = True

  return LocalSts()


def retrieval_task(data):
  """An MTEB retrieval task of a loaded `BeirSet` (passages already joined as title + " " + text)."""
  from datasets import Dataset
  from mteb.abstasks.retrieval import AbsTaskRetrieval
  from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData

  class LocalRetrieval(AbsTaskRetrieval):
    metadata = _metadata(data.name, "Retrieval", "ndcg_at_10")

    def load_data(self, num_proc=None, **kwargs):
      del num_proc, kwargs
      split = RetrievalSplitData(
          corpus=Dataset.from_dict({"id": data.corpus_ids, "title": [""] * len(data.passages), "text": data.passages}),
          queries=Dataset.from_dict({"id": data.query_ids, "text": data.queries}),
          relevant_docs={q: dict(d) for q, d in data.qrels.items()}, top_ranked=None)
      self.dataset = {"default": {"test": split}}
      self.data_loaded = True

  return LocalRetrieval()


def load_task(path: str, options: EvalOptions) -> MtebSet:
  """A local STS file or BEIR folder as an MTEB task, or a task of MTEB's registry by name."""
  local = storage.as_path(path)
  if local.is_dir():
    data = load_beir(path, split=options.split)
    return MtebSet(f"mteb_{data.name}", retrieval_task(data))
  if local.is_file():
    data = load_sts(path)
    return MtebSet(f"mteb_{data.name}", sts_task(data))
  import mteb
  try:
    task = mteb.get_task(path)
  except (KeyError, ValueError) as e:
    raise StarbucksError(f"--mteb {path}: neither a file, a folder nor an MTEB task name ({e})") from None
  return MtebSet(f"mteb_{task.metadata.name}", task)


class LayerCache:
  """Each text's pooled vectors at every layer the sizes need, encoded on first request."""

  def __init__(self, encoder, layers: Sequence[int], options: EvalOptions):
    self.encoder, self.layers, self.options = encoder, tuple(sorted(set(layers))), options
    self.stores: dict[str, dict[str, np.ndarray]] = {}
    self.encoded = 0  # texts encoded (each once per kind)

  def vectors(self, texts: list[str], kind: str) -> np.ndarray:
    """[len(texts), layers, hidden] float32; kind: "query", "document" or "text" (STS)."""
    store = self.stores.setdefault(kind, {})
    missing = [t for t in dict.fromkeys(texts) if t not in store]
    if missing:
      max_length = {"query": self.options.query_max_length, "document": self.options.passage_max_length}.get(
          kind, self.options.max_length)
      # STS ("text") is symmetric: both sentences take the query prompt, as our own STS evaluator does.
      prompt = self.options.passage_prompt if kind == "document" else self.options.query_prompt
      encoded = self.encoder.encode_layers(missing, layers=self.layers, pooling=self.options.pooling,
                                           batch_size=self.options.batch_size, max_length=max_length,
                                           show_progress=self.options.show_progress,
                                           packing=self.options.packing, prompt=prompt)
      stacked = np.stack([encoded[n] for n in self.layers], axis=1)
      store.update(zip(missing, stacked))
      self.encoded += len(missing)
    if not texts:
      return np.zeros((0, len(self.layers), self.encoder.config.hidden_size), np.float32)
    return np.stack([store[t] for t in texts])


class SizeModel:
  """mteb's EncoderProtocol for one (layer, dim) size, reading `LayerCache`; cosine similarity."""

  def __init__(self, cache: LayerCache, pair: Pair, model_name: str, revision: str):
    from mteb.models.model_meta import ModelMeta
    self.cache, (self.layer, self.dim) = cache, pair
    config = cache.encoder.config
    self.mteb_model_meta = ModelMeta(
        loader=None, name=f"{ORGANISATION}/{model_name}-n{self.layer}-d{self.dim}", revision=revision,
        release_date=None, languages=None, n_parameters=None, memory_usage_mb=None,
        max_tokens=config.max_text_length, embed_dim=self.dim, license=None, open_weights=True,
        public_training_code=None, public_training_data=None, framework=["JAX"], similarity_fn_name="cosine",
        use_instructions=False, training_datasets=None)

  def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs) -> np.ndarray:
    del task_metadata, hf_split, hf_subset, kwargs
    texts = [text for batch in inputs for text in batch["text"]]
    kind = "text" if prompt_type is None else prompt_type.value
    return self.cache.vectors(texts, kind)[:, self.cache.layers.index(self.layer), :self.dim]

  @staticmethod
  def similarity(a, b) -> np.ndarray:
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T

  @staticmethod
  def similarity_pairwise(a, b) -> np.ndarray:
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return np.sum(a * b, axis=1) / norms


def evaluate_mteb(encoder, data: MtebSet, pairs: Sequence[Pair], options: EvalOptions) -> dict:
  """{"n,d": {"main_score"}}: `mteb.evaluate` of each size; result files in `options.mteb_folder` (or a
  temporary folder, discarded)."""
  import mteb
  cache = LayerCache(encoder, [n for n, _ in pairs], options)
  results = {}
  with tempfile.TemporaryDirectory() as scratch:
    folder = Path(options.mteb_folder or scratch)
    for pair in pairs:
      model = SizeModel(cache, pair, options.model_name, options.model_revision)
      run = mteb.evaluate(model, [data.task], cache=mteb.ResultCache(cache_path=folder), overwrite_strategy="always",
                          co2_tracker=False, encode_kwargs={"batch_size": options.batch_size},
                          show_progress_bar=False)
      (task_result,) = run.task_results
      results[result_key(pair)] = {"main_score": float(task_result.get_score())}
  log.info("%s: %d texts encoded once for %d sizes", data.name, cache.encoded, len(pairs))
  return results


EVALUATOR = Evaluator(
    name="mteb", help="MTEB tasks: STS files and BEIR folders (made MTEB tasks offline) or MTEB task names "
    "(data from the hub); MTEB's result files per size go to <output stem>_mteb/", metavar="TASK",
    load=load_task, evaluate=evaluate_mteb, metrics=("main_score",), digits=4, points_scale=100.0)
