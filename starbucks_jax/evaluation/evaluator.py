"""What an evaluator is: a kind of test data, how to read it, and how to score an encoder on it at pairs.

An `Evaluator` ("sts", "beir") names the command-line flag (`--sts FILE ...`), the training config key
(`eval.sts`) and the results' key; `registry.py` lists them. `EvalOptions` are the settings every
evaluator may read (each reads what applies to it).
"""

from __future__ import annotations

import dataclasses
from typing import Callable


@dataclasses.dataclass(frozen=True)
class EvalOptions:
  """How to encode and score.

  Attributes:
    pooling: a kind of `model/pooling.POOLINGS`; None: the encoder's default.
    batch_size: texts per encoding batch.
    max_length: tokens per text of sentence data (STS); None: the encoder's max length.
    query_max_length, passage_max_length: tokens per query and per passage (retrieval).
    similarity: retrieval scores, "cosine" or "dot" (STS always uses cosine).
    chunk_size: corpus passages scored on the device at once.
    split: the qrels file a BEIR folder is read with.
    show_progress: progress bars (None: for long inputs).
    packing: encode texts end to end in rows rather than one padded row each (`Encoder.encode_layers`'
      `packing`): the same vectors, fewer pad tokens computed.
    precisions: the vector precisions scored at every size ("float32", "int8", "binary": `quantize.py`);
      a quantized precision's metrics are named "<metric>/<precision>" ("spearman/int8").
    mteb_folder: where MTEB writes its result files (`mteb_tasks.py`); None: nowhere kept.
    model_name, model_revision: the model's name and revision in MTEB's results.
    query_prompt, passage_prompt: put before every query / passage (`data/prompts.py`); STS sentences, the two
      sides of a symmetric task, both take the query prompt. "" = none.
  """
  pooling: str | None = None
  batch_size: int = 32
  max_length: int | None = None
  query_max_length: int = 32
  passage_max_length: int = 256
  similarity: str = "cosine"
  chunk_size: int = 8192
  split: str = "test"
  show_progress: bool | None = None
  packing: bool = False
  precisions: tuple = ("float32",)
  mteb_folder: str | None = None
  model_name: str = "model"
  model_revision: str = "local"
  query_prompt: str = ""
  passage_prompt: str = ""


@dataclasses.dataclass(frozen=True)
class Evaluator:
  """One kind of evaluation.

  Attributes:
    name: "sts": the flag `--sts`, the config key `eval.sts`, the results' key `results["sts"]`.
    help: what the flag takes, for `--help`.
    metavar: "FILE" or "DIR".
    load: (path, EvalOptions) -> a data set with a `.name` (its file or folder name); every problem with
      the file is a StarbucksError naming it, raised here, before anything is encoded.
    evaluate: (encoder, data set, pairs, EvalOptions) -> {pairs.result_key(pair): {metric: value}}, with
      "<metric>/<precision>" for each quantized precision in `EvalOptions.precisions`.
    metrics: the metric names, in table order; the first is drawn in the heatmap.
    digits: decimals of the metrics in the printed table.
    points_scale: points per unit of the first metric, for "within X points" (BEIR's 0..1 metrics: 100).
  """
  name: str
  help: str
  metavar: str
  load: Callable
  evaluate: Callable
  metrics: tuple[str, ...]
  digits: int = 4
  points_scale: float = 1.0


def precision_metric(metric: str, precision: str) -> str:
  """The name of `metric` for vectors stored at `precision`: "spearman", "spearman/int8"."""
  return metric if precision == "float32" else f"{metric}/{precision}"
