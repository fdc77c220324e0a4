"""The SMAE task: Starbucks masked-autoencoder pre-training on raw text.

Its config blocks are `data` (`data/smae.py` TextDataConfig: the text, its length and the mask rates) and
`smae` (`SmaeConfig`: the pairs and the mode). Its step is `losses/smae.py`: masked-LM at every pair plus
the one-layer MAE decoder. A model without an MLM head gets a fresh one, and the decoder starts as a
copy of encoder layer 1; the export is the family's masked-LM layout (`BertForMaskedLM`).
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import numpy as np

from starbucks_jax.data.smae import TextData, TextDataConfig
from starbucks_jax.errors import StarbucksError
from starbucks_jax.hf.load import load_tokenizer
from starbucks_jax.losses.smae import SmaeSpec, init_decoder_params, smae_loss
from starbucks_jax.model.config import EncoderConfig
from starbucks_jax.model.mlm_head import init_mlm_head_params
from starbucks_jax.model.registry import family_of
from starbucks_jax.pairs import BERT_BASE_PAIRS, parse_pairs
from starbucks_jax.training.config import DTYPES, ModelOptions, TrainConfig
from starbucks_jax.training.optim import OptimizerConfig
from starbucks_jax.training.tasks.base import RunSetup, Task, start_params, uses_dropout
from starbucks_jax.training.model_card import card_record

log = logging.getLogger("starbucks_jax.train")


@dataclasses.dataclass(frozen=True)
class SmaeConfig:
  """The SMAE loss (`config.smae`).

  Attributes:
    mode: "smae" (MLM + MAE per pair) | "mlm2d" (MLM per pair) | "mlm" (the full model only).
    pairs: the (layer, dim) pairs, small to large; ignored by "mlm", which trains the full model's pair.
    gather: vocabulary logits only at masked positions (False: at every position, as the paper's code).
  """
  mode: str = "smae"
  pairs: tuple = dataclasses.field(default=BERT_BASE_PAIRS, metadata={"parse": parse_pairs})
  gather: bool = True


@dataclasses.dataclass(frozen=True)
class SmaeStepSettings:
  """The static part of an SMAE pre-training step."""
  model_config: EncoderConfig
  spec: SmaeSpec
  dtype: str = "float32"
  remat: bool | str = "dots"  # "none" | "dots" | "full" (True = "full"): model/remat.py
  grad_accum_steps: int = 1
  grad_cache = None  # per-token losses couple no examples: nothing for GradCache to do

  def loss(self, params, batch: dict, rng: jax.Array):
    dropout = uses_dropout(self.model_config)
    return smae_loss(params, batch, spec=self.spec, model_config=self.model_config, dtype=DTYPES[self.dtype],
                     deterministic=not dropout, dropout_rng=rng if dropout else None, remat=self.remat)


def make_smae_spec(config: TrainConfig, model_config: EncoderConfig) -> SmaeSpec:
  s = config.loss
  full = ((model_config.num_hidden_layers, model_config.hidden_size),)
  return SmaeSpec(pairs=full if s.mode == "mlm" else s.pairs, num_model_layers=model_config.num_hidden_layers,
                  hidden_size=model_config.hidden_size, mode=s.mode, gather=s.gather,
                  encoder_mask_rate=config.data.encoder_mask_rate, decoder_mask_rate=config.data.decoder_mask_rate)


def prepare(config: TrainConfig, source, model_config: EncoderConfig) -> RunSetup:
  family_of(model_config).require_mlm("SMAE pre-training (task=smae)")  # before anything loads
  if config.lora.enabled:
    raise StarbucksError("lora is for SRL fine-tuning: SMAE pre-training starts a fresh MLM head and MAE decoder, "
                         "which must train whole; set lora.rank=0")
  spec = make_smae_spec(config, model_config)
  if config.grad_cache.enabled:
    raise StarbucksError("grad_cache is for SRL's in-batch negatives; SMAE's masked-LM losses couple no "
                         "examples, so grad_accum_steps gives the same objective in less memory")
  tokenizer = load_tokenizer(source.model_dir)
  data_config = config.data
  if data_config.max_length > model_config.max_text_length:
    raise StarbucksError(f"data.max_length {data_config.max_length} exceeds the model's "
                         f"{model_config.max_text_length} positions (max_position_embeddings "
                         f"{model_config.max_position_embeddings})")
  data = TextData(data_config, tokenizer, global_batch_size=config.batch_size, seed=config.seed,
                  process_index=jax.process_index(), process_count=jax.process_count(),
                  row_multiple=jax.local_device_count(), pack_groups=config.grad_accum_steps)
  settings = SmaeStepSettings(model_config=model_config, spec=spec, dtype=config.model.dtype,
                              remat=config.model.remat, grad_accum_steps=config.grad_accum_steps)
  trainable = ("encoder", "mlm_head", "mae_decoder") if spec.uses_decoder else ("encoder", "mlm_head")

  def load_params(abstract: bool = False) -> dict:
    params = start_params(source, model_config, abstract=abstract)
    if "mlm_head" not in params:
      log.warning("%s has no MLM head: initialised its transform dense, LayerNorm and output bias "
                  "(normal(%g), ones, zeros)", source.name, model_config.initializer_range)
      params["mlm_head"] = jax.tree.map(np.asarray, init_mlm_head_params(model_config, jax.random.key(config.seed)))
    if spec.uses_decoder and "mae_decoder" not in params:
      log.info("MAE decoder: one encoder layer, initialised as a copy of encoder layer 1")
      params["mae_decoder"] = init_decoder_params(params["encoder"], model_config)
    if not spec.uses_decoder:
      params.pop("mae_decoder", None)
    return params

  steps_per_epoch = data.steps_per_epoch
  return RunSetup(
      model_dir=source.model_dir, model_config=model_config, tokenizer=tokenizer, data=data,
      total_steps=config.total_steps(steps_per_epoch), settings=settings, trainable=trainable,
      log_pairs=spec.log_pairs(),
      model_settings={"pooling": config.model.pooling,
                      "max_seq_length": config.export.serving_length(source, model_config),
                      "normalize": config.export.normalize, "num_layers": model_config.num_hidden_layers,
                      "mlm_head": True,
                      "card": card_record(config.init_from or config.model.name, data_config.source,
                                          source.model_dir, spec.log_pairs())},  # the export's model card
      description=(f"{spec.mode} pre-training, masks {data_config.encoder_mask_rate}/"
                   f"{data_config.decoder_mask_rate}, "
                   + (f"{steps_per_epoch} steps per epoch" if steps_per_epoch else "streamed")),
      load_params=load_params)


TASK = Task(
    name="smae", data_config=TextDataConfig, loss_key="smae", loss_config=SmaeConfig,
    defaults={"model": ModelOptions(pooling="cls"),  # only for evaluation and the export's sentence-transformers files
              "batch_size": 512,
              "optimizer": OptimizerConfig(lr=1e-4, schedule="cosine", warmup_ratio=0.05, weight_decay=0.001,
                                           clip_grad_norm=1.0)},
    prepare=prepare)
