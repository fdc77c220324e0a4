"""`smae_loss` against an independent PyTorch computation: transformers' BertForMaskedLM, same weights, same batch.

The reference follows ielab/Starbucks `smae/modelling.py`: full-vocabulary logits at every position of
every pair, the head's transform dense sliced to the pair's first d input columns, and a one-layer decoder
(a transformers `BertLayer`) over the embedded decoder input with position 0 replaced by the transformed
CLS vector.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from starbucks_jax.errors import StarbucksError
from starbucks_jax.hf import convert as hf_convert
from starbucks_jax.hf.load import load_pretrained
from starbucks_jax.losses.smae import SmaeSpec, init_decoder_params, smae_loss
from starbucks_jax.model.bert import BertConfig
from starbucks_jax.model.mlm_head import init_mlm_head_params

from tests.helpers import randomize, save_with_tokenizer, tiny_hf_config

jax.config.update("jax_default_matmul_precision", "highest")


def torch_smae_loss(params, config: BertConfig, batch, pairs, mode):
  """The official formulation in PyTorch, from our parameters; returns (loss, {metric: value})."""
  import torch
  import torch.nn.functional as F
  import transformers
  from transformers.models.bert.modeling_bert import BertLayer

  hf_config = transformers.BertConfig(**{k: v for k, v in config.to_hf_dict().items() if k != "architectures"})
  hf_config._attn_implementation = "eager"
  model = transformers.BertForMaskedLM(hf_config).eval()
  state = {k: torch.from_numpy(np.array(v)) for k, v in hf_convert.params_to_hf(params, config, layout="BertForMaskedLM").items()}
  missing, unexpected = model.load_state_dict(state, strict=False)
  assert not unexpected and set(missing) <= {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
  model.tie_weights()
  assert torch.equal(model.cls.predictions.decoder.weight, model.bert.embeddings.word_embeddings.weight)

  t = {k: torch.from_numpy(np.asarray(v, np.int64)) for k, v in batch.items()}
  mask = t["attention_mask"]
  extended = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
  transform = model.cls.predictions.transform

  def transformed(h):  # the transform dense reads the first d input columns, as BertPredictionHeadTransform cut
    d = h.shape[-1]
    return transform.LayerNorm(transform.transform_act_fn(F.linear(h, transform.dense.weight[:, :d],
                                                                     transform.dense.bias)))

  def logits(h):
    return model.cls.predictions.decoder(transformed(h))

  ce = torch.nn.CrossEntropyLoss()  # ignore_index=-100, mean over predicted tokens
  vocab = config.vocab_size
  metrics, total = {}, 0.0
  with torch.no_grad():
    hidden = model.bert(t["input_ids"], attention_mask=mask, output_hidden_states=True).hidden_states
    decoder = None
    if mode == "smae":
      decoder = BertLayer(hf_config).eval()
      decoder.load_state_dict({k.replace("encoder.layer.0.", ""): torch.from_numpy(np.array(v)) for k, v in
                               hf_convert.params_to_hf({"encoder": {**params["encoder"], "layer_0": params["mae_decoder"]},
                                                        "pooler": params["pooler"]}, config, num_layers=1).items()
                               if k.startswith("encoder.layer.0.")})
    for n, d in pairs:
      h = hidden[n][:, :, :d]
      mlm = ce(logits(h).view(-1, vocab), t["labels"].view(-1))
      metrics[f"mlm/n{n}_d{d}"] = float(mlm)
      if decoder is None:
        total += mlm
        continue
      embedded = model.bert.embeddings(input_ids=t["decoder_input_ids"]).clone()
      embedded[:, :1] = transformed(h)[:, :1]
      decoded = decoder(embedded, attention_mask=extended)
      decoded = decoded[0] if isinstance(decoded, tuple) else decoded
      mae = ce(logits(decoded).view(-1, vocab), t["decoder_labels"].view(-1))
      metrics[f"mae/n{n}_d{d}"] = float(mae)
      total += (mlm + mae) / 2
  return float(total / len(pairs)), metrics


def random_masking(tokenizer, texts, seed, rate_encoder=0.2, rate_decoder=0.4, max_length=40):
  """Any masking will do for the loss: random non-special tokens, encoder positions within the decoder's."""
  enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np",
                  return_special_tokens_mask=True)
  ids, attention = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
  maskable = (enc["special_tokens_mask"] == 0) & (attention == 1)
  rng = np.random.default_rng(seed)
  draw = rng.random(ids.shape)
  decoder_mask = maskable & (draw < rate_decoder)
  encoder_mask = maskable & (draw < rate_encoder)
  random_ids = rng.integers(1000, tokenizer.vocab_size, ids.shape)

  def masked(mask):
    inputs = np.where(mask, tokenizer.mask_token_id, ids)
    inputs = np.where(mask & (rng.random(ids.shape) < 0.1), random_ids, inputs)
    return inputs, np.where(mask, ids, -100)

  input_ids, labels = masked(encoder_mask)
  decoder_input_ids, decoder_labels = masked(decoder_mask)
  return {"input_ids": input_ids, "attention_mask": attention, "labels": labels,
          "decoder_input_ids": decoder_input_ids, "decoder_labels": decoder_labels}


def jax_loss(params, config, batch, pairs, mode, **spec_fields):
  spec = SmaeSpec(pairs=pairs, num_model_layers=config.num_hidden_layers, hidden_size=config.hidden_size,
                  mode=mode, **spec_fields)
  jbatch = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
  loss, metrics = jax.jit(lambda p, b: smae_loss(p, b, spec=spec, model_config=config))(params, jbatch)
  return float(loss), {k: float(v) for k, v in metrics.items()}


def assert_close(ours, reference, rtol=1e-4):
  ours_loss, ours_metrics = ours
  ref_loss, ref_metrics = reference
  assert abs(ours_loss - ref_loss) <= rtol * abs(ref_loss), (ours_loss, ref_loss)
  for key, value in ref_metrics.items():
    assert abs(ours_metrics[key] - value) <= rtol * abs(value), (key, ours_metrics[key], value)


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
  import transformers
  return transformers.AutoTokenizer.from_pretrained(str(minilm_dir))


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory, minilm_dir):
  """A random 4-layer BertForMaskedLM loaded through our importer, and a decoder layer unlike any encoder layer."""
  import transformers
  model = randomize(transformers.BertForMaskedLM(tiny_hf_config()), seed=3)
  folder = save_with_tokenizer(model, tmp_path_factory.mktemp("tiny_mlm"), minilm_dir)
  loaded = load_pretrained(folder)
  assert loaded.report.has_mlm_head
  params = dict(loaded.params)
  noise = jax.random.normal(jax.random.key(7), (), jnp.float32)  # a scalar: shapes stay, values change
  params["mae_decoder"] = jax.tree.map(lambda x: np.asarray(x) * (1.0 + 0.5 * float(noise)) + 0.01,
                                       init_decoder_params(params["encoder"], loaded.config))
  return loaded.config, params


@pytest.mark.parametrize("mode", ["smae", "mlm2d"])
def test_tiny_random_model_matches_torch(tiny_mlm, tokenizer, sentences, mode):
  config, params = tiny_mlm
  batch = random_masking(tokenizer, sentences[:12], seed=1)
  pairs = ((1, 8), (2, 16), (4, 32))
  reference = torch_smae_loss(params, config, batch, pairs, mode)
  assert_close(jax_loss(params, config, batch, pairs, mode, gather=False), reference)
  # Gathering only the labelled positions gives the same loss; with no rate, every position is a slot.
  assert_close(jax_loss(params, config, batch, pairs, mode, gather=True), reference)
  ours = jax_loss(params, config, batch, pairs, mode, gather=True, encoder_mask_rate=0.5, decoder_mask_rate=0.9)
  assert ours[1]["dropped_labels"] == 0
  assert_close(ours, reference)


def test_plain_mlm_is_the_full_models_cross_entropy(tiny_mlm, tokenizer, sentences):
  config, params = tiny_mlm
  batch = random_masking(tokenizer, sentences[12:24], seed=2)
  full = ((config.num_hidden_layers, config.hidden_size),)
  assert_close(jax_loss(params, config, batch, full, "mlm"), torch_smae_loss(params, config, batch, full, "mlm2d"))


def test_minilm_with_initialised_head_matches_torch(minilm_dir, tokenizer, sentences):
  loaded = load_pretrained(minilm_dir)
  assert not loaded.report.has_mlm_head  # MiniLM ships without one
  config, params = loaded.config, dict(loaded.params)
  params["mlm_head"] = jax.tree.map(np.asarray, init_mlm_head_params(config, jax.random.key(0)))
  params["mae_decoder"] = init_decoder_params(params["encoder"], config)
  batch = random_masking(tokenizer, sentences[:16], seed=3)
  pairs = ((1, 16), (2, 32), (3, 64), (4, 128), (5, 256), (6, 384))
  reference = torch_smae_loss(params, config, batch, pairs, "smae")
  # Bernoulli masking at 0.2 / 0.4 can exceed what the whole-word masker allows; 0.5 / 0.9 slots hold it.
  ours = jax_loss(params, config, batch, pairs, "smae", encoder_mask_rate=0.5, decoder_mask_rate=0.9)
  assert ours[1]["dropped_labels"] == 0
  assert_close(ours, reference)


def test_too_dense_masking_is_counted_not_hidden(tiny_mlm, tokenizer, sentences):
  config, params = tiny_mlm
  batch = random_masking(tokenizer, sentences[:8], seed=4, rate_encoder=0.6, rate_decoder=0.9)
  _, metrics = jax_loss(params, config, batch, ((2, 16),), "smae", encoder_mask_rate=0.1, decoder_mask_rate=0.1)
  assert metrics["dropped_labels"] > 0


def test_gradients_flow_to_every_trained_part(tiny_mlm, tokenizer, sentences):
  config, params = tiny_mlm
  batch = {k: jnp.asarray(v, jnp.int32) for k, v in random_masking(tokenizer, sentences[:8], seed=5).items()}
  spec = SmaeSpec(pairs=((1, 8), (4, 32)), num_model_layers=4, hidden_size=32, mode="smae")
  grads = jax.grad(lambda p: smae_loss(p, batch, spec=spec, model_config=config)[0])(params)
  for part in ("encoder", "mlm_head", "mae_decoder"):
    assert float(optax_norm(grads[part])) > 0, part
  # The head's transform reads only the first d input rows: rows past the largest d (32 = all) get
  # gradients; with pairs of d <= 16 only, rows 16.. get none.
  spec16 = SmaeSpec(pairs=((1, 8), (2, 16)), num_model_layers=4, hidden_size=32, mode="mlm2d")
  g16 = jax.grad(lambda p: smae_loss(p, batch, spec=spec16, model_config=config)[0])(params)
  kernel_grad = np.asarray(g16["mlm_head"]["transform"]["kernel"])
  assert np.all(kernel_grad[16:] == 0) and np.any(kernel_grad[:16] != 0)


def optax_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


@pytest.mark.parametrize("fields, message", [
    (dict(pairs=((7, 32),)), "beyond the model"),
    (dict(pairs=((2, 33),)), "beyond the model"),
    (dict(pairs=()), "empty"),
    (dict(pairs=((2, 16),), mode="mlm"), "full model only"),
    (dict(pairs=((2, 16),), mode="electra"), "smae.mode"),
    (dict(pairs=((2, 16),), encoder_mask_rate=1.5), "encoder_mask_rate"),
])
def test_spec_errors_name_the_problem(fields, message):
  with pytest.raises(StarbucksError, match=message):
    SmaeSpec(num_model_layers=6, hidden_size=32, **fields)


def test_bfloat16_compute_stays_close_to_float32(tiny_mlm, tokenizer, sentences):
  """`dtype=bfloat16` (matmuls in bf16, logits, softmax and LayerNorm statistics in float32)."""
  config, params = tiny_mlm
  batch = {k: jnp.asarray(v, jnp.int32) for k, v in random_masking(tokenizer, sentences[:8], seed=6).items()}
  spec = SmaeSpec(pairs=((1, 8), (4, 32)), num_model_layers=4, hidden_size=32, mode="smae",
                  encoder_mask_rate=0.5, decoder_mask_rate=0.9)
  loss = lambda dtype: jax.jit(jax.value_and_grad(
      lambda p: smae_loss(p, batch, spec=spec, model_config=config, dtype=dtype)[0]))(params)
  (full, _), (half, grads) = loss(jnp.float32), loss(jnp.bfloat16)
  assert abs(float(half) - float(full)) <= 0.02 * abs(float(full)), (float(half), float(full))
  assert all(bool(jnp.all(jnp.isfinite(g))) and g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
