"""What a run needs before its loop starts, for each task: data, the static step settings, the weights.

    setup = prepare(config)   # checks config, pairs and data; reads no weights, compiles nothing
    params = setup.load_params()

`task="srl"` fine-tunes on queries and passages (`srl_loss`); `task="smae"` pre-trains on raw text
(`smae_loss`). Both start from `model.name`, or from `init_from`: a training workdir (its newest
checkpoint, its `model/` config and tokenizer) or an exported Hugging Face folder. An SMAE run's workdir
or export therefore feeds SRL fine-tuning directly, and SRL drops the MLM head and the MAE decoder.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from starbucks_jax import checkpoints, pretrained
from starbucks_jax.bert_config import BertConfig
from starbucks_jax.errors import StarbucksError

log = logging.getLogger("starbucks_jax.train")

TASKS = ("srl", "smae")


@dataclasses.dataclass
class RunSetup:
  """Everything task-specific the training loop uses."""
  model_dir: Path                  # config.json and tokenizer files of the starting model
  model_config: BertConfig         # with the run's dropout overrides (and cut, for `separate`)
  tokenizer: object
  data: object                     # .batch(step) -> this host's numpy arrays of global batch `step`
  total_steps: int
  settings: object                 # train_step.StepSettings or SmaeStepSettings (static)
  trainable: tuple                 # top-level parts of the parameter tree the optimizer changes
  log_pairs: tuple                 # the (layer, dim) pairs logged and evaluated by default
  model_settings: dict             # written to workdir/model/starbucks.json: what export needs
  description: str                 # one log line saying what is trained
  load_params: Callable[[], dict]  # the starting parameters, read only when called


@dataclasses.dataclass(frozen=True)
class ModelSource:
  """Where the starting model comes from: a Hugging Face folder, or a workdir and its checkpoint."""
  model_dir: Path
  workdir: Path | None = None

  def load(self) -> dict:
    if self.workdir is None:
      return dict(pretrained.load_pretrained(self.model_dir).params)
    params, step = checkpoints.restore_params(self.workdir)
    log.info("starting from %s, checkpoint at step %d", self.workdir, step)
    return dict(params)


def model_source(config) -> ModelSource:
  """`init_from` (a workdir, a folder or a hub name) when set, else `model.name`."""
  if not config.init_from:
    name = config.model.name
    return ModelSource(pretrained.resolve_model_dir(pretrained.default_model_dir() if name == "minilm" else name))
  path = Path(config.init_from).expanduser()
  if (path / checkpoints.MODEL_DIR / "config.json").is_file():
    if not checkpoints.saved_steps(path):
      raise StarbucksError(f"init_from {path} is a training workdir without checkpoints")
    return ModelSource(path / checkpoints.MODEL_DIR, path)
  if path.is_dir() and not (path / "config.json").is_file():
    raise StarbucksError(f"init_from {path} is neither a training workdir (model/config.json and checkpoints/) "
                         "nor a Hugging Face folder (config.json)")
  return ModelSource(pretrained.resolve_model_dir(config.init_from))


def apply_dropout_overrides(model_config: BertConfig, model_settings) -> BertConfig:
  changes = {}
  if model_settings.hidden_dropout is not None:
    changes["hidden_dropout_prob"] = float(model_settings.hidden_dropout)
  if model_settings.attention_dropout is not None:
    changes["attention_probs_dropout_prob"] = float(model_settings.attention_dropout)
  for key, rate in changes.items():
    if not 0 <= rate < 1:
      raise StarbucksError(f"dropout rate {key}={rate} must be in [0, 1)")
  return model_config.replace(**changes) if changes else model_config


def total_steps(config, steps_per_epoch: int | None) -> int:
  if config.num_steps is not None:
    return int(config.num_steps)
  if steps_per_epoch is None:
    raise StarbucksError("the data's length is unknown (a stream whose size the hub does not report): "
                         "set --config.num_steps")
  return max(1, int(round(config.num_epochs * steps_per_epoch)))


def prepare(config) -> RunSetup:
  if config.task not in TASKS:
    raise StarbucksError(f"task must be one of {', '.join(TASKS)}, got {config.task!r}")
  source = model_source(config)
  model_config = apply_dropout_overrides(BertConfig.from_json_file(source.model_dir / "config.json"), config.model)
  return (prepare_srl if config.task == "srl" else prepare_smae)(config, source, model_config)


def prepare_srl(config, source: ModelSource, model_config: BertConfig) -> RunSetup:
  from starbucks_jax import data as data_lib, train_step
  from starbucks_jax.encoder import load_tokenizer
  spec = make_loss_spec(config, model_config)
  if spec.mode == "separate":  # the model is cut to the pair's layer count and trained as that
    model_config = model_config.replace(num_hidden_layers=spec.pairs[0][0])
  tokenizer = load_tokenizer(source.model_dir)
  data_config = data_lib.DataConfig.from_config_dict(config.data)
  data = data_lib.TrainData(data_config, tokenizer, global_batch_size=config.batch_size, seed=config.seed,
                            process_index=jax.process_index(), process_count=jax.process_count())
  if (spec.objective == "cosent") != (data.kind == "scored"):
    raise StarbucksError(f"objective {spec.objective!r} does not fit {data.kind} data "
                         "(cosent needs scored pairs, mnrl needs pairs, triplets or retrieval groups)")
  spec = dataclasses.replace(spec, group_size=data.group_size)  # validates again
  settings = train_step.StepSettings(model_config=model_config, spec=spec, pooling=config.model.pooling,
                                     dtype=config.model.dtype, remat=config.model.remat,
                                     grad_accum_steps=config.grad_accum_steps)

  def load_params() -> dict:
    params = source.load()
    for part in ("mlm_head", "mae_decoder"):  # pre-training parts; SRL trains the encoder only
      params.pop(part, None)
    if spec.mode == "separate":
      params["encoder"] = {k: v for k, v in params["encoder"].items()
                           if not k.startswith("layer_") or int(k.split("_")[1]) < model_config.num_hidden_layers}
    return params

  return RunSetup(
      model_dir=source.model_dir, model_config=model_config, tokenizer=tokenizer, data=data,
      total_steps=total_steps(config, data.steps_per_epoch), settings=settings, trainable=("encoder",),
      log_pairs=spec.log_pairs(),
      model_settings={"pooling": config.model.pooling,
                      "max_seq_length": max(data_config.query_max_length, data_config.passage_max_length),
                      "normalize": bool(config.export.normalize), "num_layers": model_config.num_hidden_layers},
      description=f"{spec.mode} on {data.kind} data, {data.steps_per_epoch} steps per epoch",
      load_params=load_params)


def make_loss_spec(config, model_config):
  """The loss spec for `config.starbucks`; each mode gets only the fields it reads."""
  from starbucks_jax.matryoshka2d_loss import st_2dmse_layers
  from starbucks_jax.srl_loss import SrlLossSpec
  s = config.starbucks
  ints = lambda values: tuple(int(v) for v in values)
  pairs = tuple(ints(pair) for pair in s.pairs)
  fields = dict(mode=s.mode, objective=s.objective, similarity=s.similarity, scale=float(s.scale),
                temperature=float(s.temperature), normalize=bool(s.normalize),
                pair_weights=None if s.pair_weights is None else tuple(float(w) for w in s.pair_weights),
                num_model_layers=model_config.num_hidden_layers, hidden_size=model_config.hidden_size)
  if s.mode in ("starbucks", "grid"):
    fields.update(kl=s.kl, kl_weight=float(s.kl_weight), kl_temperature=float(s.kl_temperature),
                  embedding_kl_scale=float(s.embedding_kl_scale))
  if s.mode in ("starbucks", "separate", "2dmse"):
    fields["pairs"] = pairs
  if s.mode == "grid":
    fields.update(layers=ints(s.layers), dims=ints(s.dims))
  if s.mode == "2dmse":
    fields.update(layers=ints(s.layers) or st_2dmse_layers(model_config.num_hidden_layers),
                  dims=ints(s.dims) or tuple(sorted({d for _, d in pairs})))
  return SrlLossSpec(**fields)  # validates


def make_smae_spec(config, model_config: BertConfig):
  from starbucks_jax.smae_loss import SmaeSpec
  s = config.smae
  full = ((model_config.num_hidden_layers, model_config.hidden_size),)
  pairs = full if s.mode == "mlm" else tuple(tuple(int(v) for v in pair) for pair in s.pairs)
  return SmaeSpec(pairs=pairs, num_model_layers=model_config.num_hidden_layers,
                  hidden_size=model_config.hidden_size, mode=s.mode, gather=bool(s.gather),
                  encoder_mask_rate=float(config.data.encoder_mask_rate),
                  decoder_mask_rate=float(config.data.decoder_mask_rate))


def prepare_smae(config, source: ModelSource, model_config: BertConfig) -> RunSetup:
  from starbucks_jax import train_step
  from starbucks_jax.encoder import load_tokenizer
  from starbucks_jax.pretrain_data import TextData, TextDataConfig
  spec = make_smae_spec(config, model_config)
  tokenizer = load_tokenizer(source.model_dir)
  data_config = TextDataConfig.from_config_dict(config.data)
  if data_config.max_length > model_config.max_position_embeddings:
    raise StarbucksError(f"data.max_length {data_config.max_length} exceeds the model's "
                         f"max_position_embeddings {model_config.max_position_embeddings}")
  data = TextData(data_config, tokenizer, global_batch_size=config.batch_size, seed=config.seed,
                  process_index=jax.process_index(), process_count=jax.process_count())
  settings = train_step.SmaeStepSettings(model_config=model_config, spec=spec, dtype=config.model.dtype,
                                         remat=config.model.remat, grad_accum_steps=config.grad_accum_steps)
  trainable = ("encoder", "mlm_head", "mae_decoder") if spec.uses_decoder else ("encoder", "mlm_head")

  def load_params() -> dict:
    params = source.load()
    if "mlm_head" not in params:
      from starbucks_jax.mlm_head import init_mlm_head_params
      log.warning("%s has no MLM head: initialised its transform dense, LayerNorm and output bias "
                  "(normal(%g), ones, zeros)", source.workdir or source.model_dir, model_config.initializer_range)
      params["mlm_head"] = jax.tree.map(np.asarray, init_mlm_head_params(model_config, jax.random.key(config.seed)))
    if spec.uses_decoder and "mae_decoder" not in params:
      from starbucks_jax.smae_loss import init_decoder_params
      log.info("MAE decoder: one BERT layer, initialised as a copy of encoder layer 1")
      params["mae_decoder"] = init_decoder_params(params["encoder"])
    if not spec.uses_decoder:
      params.pop("mae_decoder", None)
    return params

  steps_per_epoch = data.steps_per_epoch
  return RunSetup(
      model_dir=source.model_dir, model_config=model_config, tokenizer=tokenizer, data=data,
      total_steps=total_steps(config, steps_per_epoch), settings=settings, trainable=trainable,
      log_pairs=spec.log_pairs(),
      model_settings={"pooling": config.model.pooling, "max_seq_length": data_config.max_length,
                      "normalize": bool(config.export.normalize), "num_layers": model_config.num_hidden_layers,
                      "mlm_head": True},
      description=(f"{spec.mode} pre-training, masks {data_config.encoder_mask_rate}/"
                   f"{data_config.decoder_mask_rate}, "
                   + (f"{steps_per_epoch} steps per epoch" if steps_per_epoch else "streamed")),
      load_params=load_params)
