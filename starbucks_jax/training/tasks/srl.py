"""The SRL task: Starbucks Representation Learning, fine-tuning on queries and passages.

Its config blocks are `data` (`data/srl.py` DataConfig: pairs, triplets, scored pairs or Tevatron
groups) and `starbucks` (`StarbucksConfig`: the schedule of (layer, dim) pairs, the objective, the KL).
Its step runs the encoder once per side (queries and passages; once for both when they are padded
alike or packed), pools every layer the loss reads, and hands those vectors to `losses/srl.py`.
"""

from __future__ import annotations

import dataclasses

import jax

from starbucks_jax.data import prompts
from starbucks_jax.data.mixture import open_data
from starbucks_jax.data.srl import DataConfig
from starbucks_jax.errors import StarbucksError
from starbucks_jax.hf.load import load_tokenizer
from starbucks_jax.losses.batch import SrlBatch
from starbucks_jax.losses.mse2d import st_2dmse_layers
from starbucks_jax.losses.objectives import COSENT, get_objective
from starbucks_jax.losses.srl import srl_loss
from starbucks_jax.losses.srl_spec import SrlLossSpec
from starbucks_jax.model.config import EncoderConfig
from starbucks_jax.model.dense_head import KEY as DENSE_HEAD, apply_dense_head
from starbucks_jax.model.registry import family_of
from starbucks_jax.model.tokens import Tokens
from starbucks_jax.pairs import BERT_BASE_PAIRS, parse_pairs
from starbucks_jax.training.config import DTYPES, TrainConfig
from starbucks_jax.training.grad_cache import GradCacheConfig, Side
from starbucks_jax.training.model_card import card_record
from starbucks_jax.training.tasks.base import RunSetup, Task, start_params, uses_dropout


# The loss spec's own defaults, so that each is written once (`losses/srl_spec.py`).
_SPEC = {field.name: field.default for field in dataclasses.fields(SrlLossSpec)}


@dataclasses.dataclass(frozen=True)
class StarbucksConfig:
  """The SRL loss (`config.starbucks`); `losses/srl.py` documents each mode, `losses/srl_spec.py` each
  field and its default.

  Attributes:
    mode: "starbucks" | "2dmse" | "grid" | "separate".
    pairs: starbucks and separate (one pair): the trained pairs; 2dmse: the logged pairs. Default: the
      paper's BERT-base list.
    layers: grid: its layers; 2dmse: the prior-layer candidates (empty: 0..L-1, as in sentence-transformers).
    dims: grid: its dims; 2dmse: the Matryoshka dims (empty: the dims of `pairs`).
    objective: "mnrl" (in-batch negatives) | "cosent" (scored pairs) | any registered objective.
    similarity: "cosine" (x scale) | "dot" (/ temperature).
    normalize: L2-normalise after the cut (dot similarity; cosine always does).
    pair_weights: one weight per trained pair; None: every pair weighs 1.
    kl: "scores" (the paper's retrieval form) | "embeddings" (the paper's STS form) | "none".
  """
  mode: str = _SPEC["mode"]
  pairs: tuple = dataclasses.field(default=BERT_BASE_PAIRS, metadata={"parse": parse_pairs})
  layers: tuple[int, ...] = _SPEC["layers"]
  dims: tuple[int, ...] = _SPEC["dims"]
  objective: str = _SPEC["objective"]
  similarity: str = _SPEC["similarity"]
  scale: float = _SPEC["scale"]
  temperature: float = _SPEC["temperature"]
  normalize: bool = _SPEC["normalize"]
  pair_weights: tuple[float, ...] | None = _SPEC["pair_weights"]
  kl: str = _SPEC["kl"]
  kl_weight: float = _SPEC["kl_weight"]
  kl_temperature: float = _SPEC["kl_temperature"]
  embedding_kl_scale: float = _SPEC["embedding_kl_scale"]


@dataclasses.dataclass(frozen=True)
class SrlStepSettings:
  """Everything static about an SRL step (hashable, so it can be a static jit argument).

  The loss is made of three parts, which GradCache (`training/grad_cache.py`) also calls, a chunk at a
  time: `passes` (the encoder inputs and their dropout keys), `encode` (pooled vectors of every layer
  the loss reads) and `pooled_loss` (the loss of those vectors).
  """
  model_config: EncoderConfig
  spec: SrlLossSpec
  pooling: str = "mean"
  dtype: str = "float32"
  remat: bool | str = "dots"  # "none" | "dots" | "full" (True = "full"): model/remat.py
  grad_accum_steps: int = 1
  grad_cache: GradCacheConfig | None = None  # None: the plain step

  @property
  def uses_dropout(self) -> bool:
    return uses_dropout(self.model_config)

  def loss(self, params, batch: dict, rng: jax.Array):
    return compute_loss(params, batch, rng, self)

  def passes(self, batch: SrlBatch, rng: jax.Array) -> tuple[list[list[Side]], jax.Array]:
    """(GradCache's sides of each padded encoder pass, the loss's rng), each side with its dropout key, its
    first row in its pass and its rows per chunk."""
    dropout_rng, loss_rng = jax.random.split(rng)
    chunks = iter(self.grad_cache.chunk_rows(self.spec.group_size) if self.grad_cache else (None, None))
    out = []
    for text_pass, pass_rng in zip(batch.passes, pass_rngs(dropout_rng, len(batch.passes))):
      tokens = text_pass.tokens
      out.append([Side(tokens.input_ids[rows], tokens.attention_mask[rows], pass_rng, rows.start, next(chunks))
                  for rows in text_pass.side_rows()])
    return out, loss_rng

  def encode(self, params, tokens: Tokens, dropout_rng, row_ids=None) -> dict:
    """{layer: [texts, hidden] float32} for every layer the loss reads. A model's Dense modules apply after
    pooling, before the loss cuts each pair's dims (`model/dense_head.py`)."""
    out = family_of(self.model_config).forward(
        params, tokens, config=self.model_config, num_layers=self.spec.forward_layers(),
        dtype=DTYPES[self.dtype], deterministic=not self.uses_dropout, dropout_rng=dropout_rng, remat=self.remat,
        row_ids=row_ids)
    return {n: apply_dense_head(params, out.pooled(n, self.pooling)) for n in self.spec.pooled_layers()}

  def pooled_loss(self, pooled: list[dict], batch: SrlBatch, rng: jax.Array):
    """The loss of the whole batch's pooled vectors; `batch` gives its labels and text ids (clean negatives)."""
    query, passage = pooled
    return srl_loss(query, passage, batch.labels, self.spec, rng, batch.false_negatives(self.spec.group_size))


def pass_rngs(dropout_rng: jax.Array, count: int) -> list:
  """The dropout keys of a batch's encoder passes: the one key for one pass, else one key each."""
  return [dropout_rng] if count == 1 else list(jax.random.split(dropout_rng, count))


def compute_loss(params, batch: dict, rng: jax.Array, settings: SrlStepSettings):
  """(loss, metrics) for one batch; `metrics` holds each pair's loss. Each encoder pass of the batch
  (`losses/batch.SrlBatch`: queries and passages in one pass, or a pass each) runs once, one after the
  other, and its vectors are cut into its sides'."""
  srl = SrlBatch.of(batch)
  dropout_rng, loss_rng = jax.random.split(rng)
  pooled = []
  for text_pass, pass_rng in zip(srl.passes, pass_rngs(dropout_rng, len(srl.passes))):
    pooled += text_pass.sides(settings.encode(params, text_pass.tokens, pass_rng))
  return settings.pooled_loss(pooled, srl, loss_rng)


def make_loss_spec(s: StarbucksConfig, model_config: EncoderConfig) -> SrlLossSpec:
  """The loss spec for a `starbucks` block; each mode gets only the fields it reads."""
  fields = dict(mode=s.mode, objective=s.objective, similarity=s.similarity, scale=s.scale,
                temperature=s.temperature, normalize=s.normalize, pair_weights=s.pair_weights,
                num_model_layers=model_config.num_hidden_layers, hidden_size=model_config.hidden_size)
  if s.mode in ("starbucks", "grid"):
    fields.update(kl=s.kl, kl_weight=s.kl_weight, kl_temperature=s.kl_temperature,
                  embedding_kl_scale=s.embedding_kl_scale)
  if s.mode in ("starbucks", "separate", "2dmse"):
    fields["pairs"] = s.pairs
  if s.mode == "grid":
    fields.update(layers=s.layers, dims=s.dims)
  if s.mode == "2dmse":
    fields.update(layers=s.layers or st_2dmse_layers(model_config.num_hidden_layers),
                  dims=s.dims or tuple(sorted({d for _, d in s.pairs})))
  return SrlLossSpec(**fields)  # validates


def source_objective(objective: str, source, data) -> str:
  """A source's objective: its own (`data.mixture`), else `objective` (`starbucks.objective`) where it fits the
  data, else CoSENT for scored pairs; raises when the one named does not fit."""
  own = getattr(source, "objective", "")
  name = own or objective
  if source is not None and not own and data.schema.score is not None and not get_objective(name).scored:
    name = COSENT.name  # a mixture's scored pairs take CoSENT unless their source names another
  if get_objective(name).scored != (data.schema.score is not None):
    where = f"source {source.name}: " if source is not None else ""
    raise StarbucksError(f"{where}objective {name!r} does not fit {data.kind} data ({name} needs "
                         f"{'scored pairs' if get_objective(name).scored else 'pairs, triplets or retrieval groups'})")
  return name


def export_prompts(block, data) -> tuple[str, str]:
  """The export's (query, document) prompts: those training put before each side; a mixture's are the data
  block's own, without any that holds a source's "{name}" or "{instruction}" (no one source's text is
  the model's)."""
  if not hasattr(data, "parts"):
    return data.query_prompt, data.passage_prompt
  return tuple(prompts.untemplated(p) for p in prompts.data_prompts(block))


def _check_length(block, model_config: EncoderConfig, where: str = "data") -> None:
  for name in ("query_max_length", "passage_max_length"):
    if getattr(block, name) > model_config.max_text_length:
      raise StarbucksError(f"{where}.{name} {getattr(block, name)} exceeds the model's "
                           f"{model_config.max_text_length} positions (max_position_embeddings "
                           f"{model_config.max_position_embeddings})")


def _settings_by_source(config: TrainConfig, spec: SrlLossSpec, data, model_config, grad_cache) -> list:
  """The step settings of each source (one, or a mixture's each, `data/mixture.py`): its objective and group
  size in the loss spec. Mixed batches (`data.mix_sources`) share the first source's."""
  parts, entries = getattr(data, "parts", [data]), getattr(data, "sources", (None,))
  for entry, part in zip(entries, parts):  # every source, mixed batches' too
    if part.config.clean_negatives and part.schema.score is not None:  # scored pairs: a scored objective
      objective = source_objective(spec.objective, entry, part)
      where = f" (data.mixture.{entry.name}.clean_negatives=False)" if entry else ""
      raise StarbucksError(f"data.clean_negatives masks in-batch negatives, and the {objective} objective "
                           f"on {part.kind} data has none: leave it off{where}")
  out = []
  for entry, part in zip(entries, parts[:1] if config.data.mix_sources else parts):
    if entry is not None:
      _check_length(part.config, model_config, f"data.mixture.{entry.name}")
    part_spec = dataclasses.replace(spec, group_size=part.group_size,  # validates again
                                    objective=source_objective(spec.objective, entry, part))
    if grad_cache:  # the mesh's part of the check comes with the mesh (training/loop.py)
      grad_cache.check(config.batch_size, part.group_size, devices=1)
    out.append(SrlStepSettings(model_config=model_config, spec=part_spec, pooling=config.model.pooling,
                               dtype=config.model.dtype, remat=config.model.remat,
                               grad_accum_steps=config.grad_accum_steps, grad_cache=grad_cache))
  return out


def _data_sources(data) -> str:
  """The run's data sources, comma-separated (a mixture's each; what the model card names)."""
  return ",".join(part.config.source for part in getattr(data, "parts", [data]))


def _describe(spec: SrlLossSpec, data, grad_cache) -> str:
  if hasattr(data, "parts"):
    what = f"a mixture of {len(data.parts)} sources ({', '.join(data.source_names)})"
  else:
    what = f"{data.kind} data"
  return (f"{spec.mode} on {what}, {data.steps_per_epoch} steps per epoch"
          + (f", {grad_cache.describe(spec.group_size)}" if grad_cache else ""))


def prepare(config: TrainConfig, source, model_config: EncoderConfig) -> RunSetup:
  spec = make_loss_spec(config.loss, model_config)
  _check_length(config.data, model_config)
  if spec.mode == "separate":  # the model is cut to the pair's layer count and trained as that
    model_config = model_config.replace(num_hidden_layers=spec.pairs[0][0])
  grad_cache = config.grad_cache if config.grad_cache.enabled else None
  if config.data.packing and grad_cache and grad_cache.passage_chunk:
    raise StarbucksError("with data.packing, a GradCache chunk is its queries and their passages: leave "
                         "grad_cache.passage_chunk at 0")
  if config.data.packing and grad_cache:  # the chunks must divide the batch before it is split into them
    grad_cache.check(config.batch_size, 1, devices=1)
  # Packed rows come in one group per micro-batch or GradCache chunk (`data/packing.py`).
  pack_groups = config.batch_size // grad_cache.query_chunk if grad_cache else config.grad_accum_steps
  tokenizer = load_tokenizer(source.model_dir)
  data = open_data(config.data, tokenizer, global_batch_size=config.batch_size, seed=config.seed,
                   process_index=jax.process_index(), process_count=jax.process_count(),
                   row_multiple=jax.local_device_count(), pack_groups=pack_groups if config.data.packing else 1)
  by_source = _settings_by_source(config, spec, data, model_config, grad_cache)
  settings = by_source[0]

  def load_params(abstract: bool = False) -> dict:
    params = start_params(source, model_config, abstract=abstract)
    for part in ("mlm_head", "mae_decoder"):  # pre-training parts; SRL trains the encoder (and a Dense head)
      params.pop(part, None)
    if spec.mode == "separate":
      params["encoder"] = family_of(model_config).keep_layers(params["encoder"], model_config.num_hidden_layers)
    return params

  return RunSetup(
      model_dir=source.model_dir, model_config=model_config, tokenizer=tokenizer, data=data,
      total_steps=config.total_steps(data.steps_per_epoch), settings=settings, trainable=("encoder", DENSE_HEAD),
      log_pairs=spec.log_pairs(),
      model_settings={"pooling": config.model.pooling,
                      "max_seq_length": config.export.serving_length(source, model_config),
                      "normalize": config.export.normalize, "num_layers": model_config.num_hidden_layers,
                      # the export's sentence-transformers prompts: the texts training put before each side
                      "prompts": prompts.for_export(*export_prompts(config.data, data)),
                      "card": card_record(config.init_from or config.model.name, _data_sources(data),
                                          source.model_dir, spec.log_pairs())},  # the export's model card
      description=_describe(settings.spec, data, grad_cache), load_params=load_params,
      settings_by_source=tuple(by_source), source_names=getattr(data, "source_names", ()))


TASK = Task(name="srl", data_config=DataConfig, loss_key="starbucks", loss_config=StarbucksConfig, defaults={},
            prepare=prepare)
