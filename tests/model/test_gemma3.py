"""Gemma 3 (`gemma3_text`) through the registry: on a tiny random config with local and global layers, every
layer n equals transformers' `Gemma3TextModel` cut to n layers, causal and bidirectional (EmbeddingGemma),
right and left padded and packed, with texts longer than the sliding window; the n-layer export is layer n
in transformers and sentence-transformers; SRL trains; SMAE is refused.

Rotary attention depends on position differences only, and the left-padded rows get the positions of
their texts (given to both models), so the padding and packing cases check the masks and windows; the
windows' reach is checked by a model whose local layers are made global. Run with `-s` to see the
measured errors."""

import json

import numpy as np
import pytest

from tests.helpers import REPO, randomize

LAYERS = 4
VOCAB = 512
TOLERANCE = 1e-4  # of the largest value compared, in float32
LENGTHS = (21, 13, 5)  # the padded batch's texts: two longer than the window (8)
PACKED_LENGTHS = (20, 9, 13, 6, 11, 4)
LAYER_TYPES = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"]
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # ids 0..3, Gemma's pad, eos and bos ids
MODES = [False, True]
MODE_IDS = ["causal", "bidirectional"]


def hf_config(bidirectional: bool, **overrides):
  import transformers
  values = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
                num_attention_heads=4, num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=24,
                sliding_window=8, layer_types=LAYER_TYPES, rope_theta=5e5, rope_local_base_freq=1e4,
                max_position_embeddings=128, rms_norm_eps=1e-6, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                use_bidirectional_attention=bidirectional, dtype="float32")
  return transformers.Gemma3TextConfig(**{**values, **overrides})  # heads x head_dim (128) != hidden (64)


def save_tokenizer(folder):
  """A word-level tokenizer of the shipped SNLI sentences, <bos> text <eos>, saved as a fast tokenizer."""
  import tokenizers
  import transformers
  from tokenizers import models, normalizers, pre_tokenizers, processors, trainers
  raw = tokenizers.Tokenizer(models.WordLevel(unk_token="<unk>"))
  raw.normalizer, raw.pre_tokenizer = normalizers.Lowercase(), pre_tokenizers.Whitespace()
  lines = (REPO / "data" / "quickstart" / "snli_sentences.txt").read_text().splitlines()
  raw.train_from_iterator(lines, trainers.WordLevelTrainer(vocab_size=VOCAB, special_tokens=SPECIALS))
  raw.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>", special_tokens=[("<bos>", 2),
                                                                                              ("<eos>", 1)])
  tok = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="<eos>",
                                             bos_token="<bos>", unk_token="<unk>",
                                             model_input_names=["input_ids", "attention_mask"])
  assert len(tok) <= VOCAB and tok.convert_tokens_to_ids(SPECIALS) == [0, 1, 2, 3]
  tok.save_pretrained(str(folder))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  """{bidirectional: (folder, torch model)}: random tiny Gemma3TextModels (every tensor noise) with the tokenizer."""
  import transformers
  out = {}
  for bidirectional in MODES:
    folder = tmp_path_factory.mktemp(MODE_IDS[bidirectional])
    model = randomize(transformers.Gemma3TextModel(hf_config(bidirectional)), seed=7)
    model.save_pretrained(str(folder))
    save_tokenizer(folder)
    out[bidirectional] = folder, model
  return out


@pytest.fixture(scope="module")
def theirs(folders):
  """{(bidirectional, n): transformers' Gemma3TextModel cut to n layers}, from the saved folders."""
  import transformers
  return {(b, n): transformers.Gemma3TextModel.from_pretrained(str(folders[b][0]), num_hidden_layers=n).eval()
          for b in MODES for n in range(1, LAYERS + 1)}


@pytest.fixture(scope="module")
def loaded(folders):
  from starbucks_jax.hf.load import load_pretrained
  return {b: load_pretrained(folders[b][0]) for b in MODES}


def texts(lengths, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(4, VOCAB, size=n).tolist() for n in lengths]


def padded(ids, left: bool):
  length = max(map(len, ids))
  input_ids, mask = np.zeros((len(ids), length), np.int32), np.zeros((len(ids), length), np.int32)
  for row, x in enumerate(ids):
    span = slice(length - len(x), length) if left else slice(0, len(x))
    input_ids[row, span], mask[row, span] = x, 1
  return input_ids, mask


def torch_states(model, input_ids, mask, positions=None):
  import torch
  with torch.no_grad():
    out = model(input_ids=torch.tensor(input_ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                position_ids=None if positions is None else torch.tensor(positions, dtype=torch.long))
  return out.last_hidden_state.numpy()


def relative_error(ours, reference) -> float:
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  return float(np.abs(ours - reference).max() / np.abs(reference).max())


def check(what, ours, reference, errors):
  errors[what] = relative_error(ours, reference)
  assert errors[what] < TOLERANCE, (what, errors[what])


def report(title, errors):
  print(f"\n{title}: max {max(errors.values()):.2e}; " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))


def test_config_reads_what_transformers_writes(folders, loaded, tmp_path):
  """Both modes' windows, the two thetas, the layer types, a Gemma3ForCausalLM folder (lm_head ignored),
  the older rope keys, and one clear error for what the forward pass does not compute."""
  import transformers
  from starbucks_jax.errors import StarbucksError
  from starbucks_jax.model.gemma3 import Gemma3Config
  from starbucks_jax.model.registry import pooling_or_default
  causal, bidirectional = loaded[False].config, loaded[True].config
  assert (causal.window, bidirectional.window, causal.causal, bidirectional.causal) == (7, 4, True, False)
  assert bidirectional.sliding_window == 8 and bidirectional.layer_types == tuple(LAYER_TYPES)
  assert (causal.global_rope_theta, causal.local_rope_theta, causal.query_pre_attn_scalar) == (5e5, 1e4, 24)
  assert set(loaded[True].params) == {"encoder"} and pooling_or_default(None, causal) == "mean"
  assert not loaded[True].report.unexpected and not loaded[True].report.missing
  lm = transformers.Gemma3ForCausalLM(hf_config(True))
  lm.model.load_state_dict(folders[True][1].state_dict())
  lm.save_pretrained(str(tmp_path))
  from starbucks_jax.hf.load import load_pretrained
  again = load_pretrained(tmp_path)
  assert not again.report.unexpected and again.config == bidirectional
  hf = json.loads((folders[True][0] / "config.json").read_text())
  legacy = {**{k: v for k, v in hf.items() if k != "rope_parameters"}, "rope_theta": 3e5, "rope_local_base_freq": 2e4}
  legacy.pop("layer_types")
  old = Gemma3Config.from_hf_dict({**legacy, "num_hidden_layers": 12})
  assert (old.global_rope_theta, old.local_rope_theta, old.layer_types.count("full_attention")) == (3e5, 2e4, 2)
  for change, words in (({"rope_scaling": {"rope_type": "linear", "factor": 8.0}}, "rope_type 'linear'"),
                        ({"attn_logit_softcapping": 50.0}, "attn_logit_softcapping 50.0 is not supported"),
                        ({"hidden_activation": "relu"}, "hidden_activation 'relu' is not supported")):
    with pytest.raises(StarbucksError, match=words):
      Gemma3Config.from_hf_dict({**legacy, **change})


@pytest.mark.parametrize("left", [False, True], ids=["right_padding", "left_padding"])
@pytest.mark.parametrize("bidirectional", MODES, ids=MODE_IDS)
def test_every_layer_is_the_n_layer_gemma3(loaded, theirs, bidirectional, left):
  """hidden_states[n] and the mean-pooled (causal: and last-token) vectors equal transformers' n-layer
  model's, at the same positions (left padding: counted from each text's first token, given to both)."""
  from starbucks_jax.model.registry import family_of
  from starbucks_jax.model.tokens import Tokens
  model = loaded[bidirectional]
  input_ids, mask = padded(texts(LENGTHS), left)
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
  tokens = Tokens(input_ids, mask, mask, positions, num_texts=len(LENGTHS), packed=False)
  last = np.full(len(LENGTHS), input_ids.shape[1] - 1) if left else np.array(LENGTHS) - 1
  errors = {}
  for n in range(1, LAYERS + 1):
    out = family_of(model.config).forward(model.params, tokens, config=model.config, num_layers=n)
    reference = torch_states(theirs[bidirectional, n], input_ids, mask, positions)
    check(f"n={n} states", np.asarray(out.hidden_states[n])[mask > 0], reference[mask > 0], errors)
    check(f"n={n} mean", out.pooled(n, "mean"), (reference * mask[..., None]).sum(1) / mask.sum(1)[:, None], errors)
    if not bidirectional:
      check(f"n={n} last", out.pooled(n, "last"), reference[np.arange(len(LENGTHS)), last], errors)
  report(f"{MODE_IDS[bidirectional]}, {'left' if left else 'right'} padding", errors)
  if not left:  # the windows matter: with every layer global, the states move far beyond the tolerance
    everywhere = model.config.replace(layer_types=("full_attention",) * LAYERS)
    out = family_of(model.config).forward(model.params, tokens, config=everywhere)
    assert relative_error(np.asarray(out.hidden_states[LAYERS])[mask > 0], reference[mask > 0]) > 1e-2


@pytest.mark.parametrize("bidirectional", MODES, ids=MODE_IDS)
def test_packed_texts_are_each_text_alone(loaded, theirs, bidirectional):
  """Texts end to end in rows: each text's states and pooled vectors are those it gets alone."""
  from starbucks_jax.data.packing import pack
  from starbucks_jax.model.registry import family_of
  model = loaded[bidirectional]
  ids = texts(PACKED_LENGTHS, seed=1)
  packed = pack({"input_ids": ids}, {"input_ids": 0}, np.arange(len(ids)), length=32, rows=3)
  assert packed["segment_ids"].shape[0] < len(ids)  # several texts share a row
  errors = {}
  for n in range(1, LAYERS + 1):
    out = family_of(model.config).apply(model.params, packed["input_ids"], packed["attention_mask"],
                                        segment_ids=packed["segment_ids"], position_ids=packed["position_ids"],
                                        num_texts=len(ids), config=model.config, num_layers=n)
    alone = [torch_states(theirs[bidirectional, n], np.array([x]), np.ones((1, len(x)), np.int64))[0] for x in ids]
    states = np.asarray(out.hidden_states[n])
    check(f"n={n} states", np.concatenate([states[packed["segment_ids"] == t] for t in range(len(ids))]),
          np.concatenate(alone), errors)
    check(f"n={n} mean", out.pooled(n, "mean"), np.stack([a.mean(0) for a in alone]), errors)
    if not bidirectional:
      check(f"n={n} last", out.pooled(n, "last"), np.stack([a[-1] for a in alone]), errors)
  report(f"{MODE_IDS[bidirectional]}, packed", errors)


@pytest.mark.parametrize("bidirectional", MODES, ids=MODE_IDS)
def test_two_layer_export_is_layer_two(folders, loaded, bidirectional, tmp_path):
  """save_pretrained(num_layers=2) writes a folder that transformers' Gemma3TextModel loads with no missing or
  unexpected tensor (its sliding window converted as from the original file), whose last_hidden_state is
  our layer 2, and which sentence-transformers encodes as our encoder does."""
  import transformers
  from sentence_transformers import SentenceTransformer
  from starbucks_jax.hf.load import load_pretrained
  from starbucks_jax.hf.save import save_pretrained
  from starbucks_jax.inference.encoder import Encoder
  from starbucks_jax.model.registry import family_of
  folder, model = folders[bidirectional][0], loaded[bidirectional]
  out = save_pretrained(tmp_path / "export", model.params, model.config, tokenizer_dir=folder, num_layers=2,
                        pooling="mean", max_seq_length=64)
  theirs, info = transformers.Gemma3TextModel.from_pretrained(str(out), output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  original = transformers.Gemma3TextConfig.from_pretrained(str(folder))
  assert (theirs.config.sliding_window, theirs.config.num_hidden_layers) == (original.sliding_window, 2)
  assert load_pretrained(out).config == model.config.replace(num_hidden_layers=2)
  input_ids, mask = padded(texts(LENGTHS, seed=2), left=False)
  ours = family_of(model.config).apply(model.params, input_ids, mask, config=model.config, num_layers=2)
  errors = {}
  check("export n=2 states", np.asarray(ours.hidden_states[2])[mask > 0],
        torch_states(theirs.eval(), input_ids, mask)[mask > 0], errors)
  sentences = (REPO / "data" / "quickstart" / "snli_sentences.txt").read_text().splitlines()[:6]
  st = SentenceTransformer(str(out), device="cpu", truncate_dim=16).encode(sentences, convert_to_numpy=True)
  check("export n=2 sentence-transformers d=16", Encoder.from_pretrained(folder).encode(sentences, layer=2, dim=16),
        st, errors)
  report(f"{MODE_IDS[bidirectional]}, export", errors)


def with_dense_head(source, out):
  """An EmbeddingGemma-shaped sentence-transformers folder around the model in `source`: Transformer, mean
  Pooling, Dense 64 -> 256 (no bias) and Dense 256 -> 64 (a bias), no activation, Normalize."""
  import torch
  from sentence_transformers import SentenceTransformer
  from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer
  torch.manual_seed(0)
  identity = torch.nn.Identity()
  modules = [Transformer(str(source)), Pooling(64, "mean"), Dense(64, 256, bias=False, activation_function=identity),
             Dense(256, 64, activation_function=identity), Normalize()]
  SentenceTransformer(modules=modules, device="cpu").save(str(out))
  return out


def sentence_vectors(folder, sentences, **options):
  from sentence_transformers import SentenceTransformer
  return SentenceTransformer(str(folder), device="cpu", **options).encode(sentences, convert_to_numpy=True)


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_dense_modules_load_and_export(folders, tmp_path):
  """The Dense modules after pooling are the model's `dense_head`: our vector of (n, d) is the head's output
  on layer n's pooled vector, cut to d, as sentence-transformers computes it (with `truncate_dim`) for the
  folder and for our n-layer export, which writes the Dense folders back; an activation is refused."""
  import shutil
  from starbucks_jax.errors import StarbucksError
  from starbucks_jax.hf.load import load_pretrained
  from starbucks_jax.hf.save import save_pretrained
  from starbucks_jax.inference.encoder import Encoder
  folder = with_dense_head(folders[True][0], tmp_path / "st")
  model = load_pretrained(folder)
  head = model.params["dense_head"]
  assert head["0"]["kernel"].shape == (64, 256) and "bias" not in head["0"] and head["1"]["bias"].shape == (64,)
  sentences = (REPO / "data" / "quickstart" / "snli_sentences.txt").read_text().splitlines()[:6]
  ours, errors = Encoder.from_pretrained(folder), {}
  check("dense n=4 d=64", unit(ours.encode(sentences)), sentence_vectors(folder, sentences), errors)
  check("dense n=4 d=16", unit(ours.encode(sentences))[:, :16], sentence_vectors(folder, sentences, truncate_dim=16),
        errors)
  two = save_pretrained(tmp_path / "two", model.params, model.config, tokenizer_dir=folder, num_layers=2,
                        normalize=True)
  types = [m["type"].rsplit(".", 1)[1] for m in json.loads((two / "modules.json").read_text())]
  assert types == ["Transformer", "Pooling", "Dense", "Dense", "Normalize"] and (two / "4_Normalize").is_dir()
  check("dense export n=2 d=16", unit(ours.encode(sentences, layer=2))[:, :16],
        sentence_vectors(two, sentences, truncate_dim=16), errors)
  assert all(np.array_equal(load_pretrained(two).params["dense_head"][k][p], v[p]) for k, v in head.items() for p in v)
  report("Dense modules", errors)
  bad = tmp_path / "tanh"
  shutil.copytree(folder, bad)
  config = json.loads((bad / "2_Dense" / "config.json").read_text())
  (bad / "2_Dense" / "config.json").write_text(json.dumps({**config, "activation_function": "torch.nn.modules.activation.Tanh"}))
  with pytest.raises(StarbucksError, match="Dense activation 'torch.nn.modules.activation.Tanh' is not supported"):
    load_pretrained(bad)


def test_srl_trains_and_exports(folders, tmp_path):
  """SRL steps of an EmbeddingGemma-shaped folder (the bidirectional model with spread weights, mean pooling,
  two Dense modules, its own tokenizer; pairs (1,8) (2,16) (4,32)): the loss falls, the Dense modules train
  with the encoder, and the export loads in transformers as Gemma 3 and in sentence-transformers with its
  Dense modules, giving our vectors."""
  import transformers
  from starbucks_jax.hf.load import load_pretrained
  from starbucks_jax.inference.encoder import Encoder
  from tests.helpers import run_train, spread_weights, tiny_config
  spread = tmp_path / "spread"
  spread_weights(transformers.Gemma3TextModel(hf_config(True))).save_pretrained(str(spread))
  save_tokenizer(spread)
  source = with_dense_head(spread, tmp_path / "st")
  summary = run_train(tiny_config(source, num_steps=10, **{"eval.sts": ()}), tmp_path / "run")
  rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  losses = [r["loss"] for r in rows if "loss" in r]
  print(f"\nSRL loss: first {losses[0]:.4f}, last {losses[-1]:.4f} ({len(losses)} steps)")
  assert len(losses) == 10 and np.mean(losses[-3:]) < np.mean(losses[:3]), losses
  exported, info = transformers.Gemma3TextModel.from_pretrained(str(summary["export"]), output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert exported.config.use_bidirectional_attention and exported.config.sliding_window == 5  # 8 // 2 + 1
  trained = Encoder.from_pretrained(tmp_path / "run")
  start = load_pretrained(source).params["dense_head"]
  assert not np.allclose(np.asarray(trained.params["dense_head"]["1"]["kernel"]), start["1"]["kernel"])
  sentences = ["a man plays a guitar", "two dogs run on the beach", "the cat sleeps on the sofa"]
  errors = {}
  check("trained export n=4 d=64", unit(trained.encode(sentences)), unit(sentence_vectors(summary["export"], sentences)),
        errors)
  report("trained", errors)


def test_smae_is_refused_in_one_line(folders, tmp_path):
  """No MLM head: SMAE stops with one error line naming the family, before anything loads."""
  from starbucks_jax.errors import StarbucksError
  from starbucks_jax.training.defaults import smae_base_config
  from tests.helpers import run_train
  config = smae_base_config()
  config.model.name = str(folders[True][0])
  config.data.source = str(tmp_path / "never_read.txt")
  with pytest.raises(StarbucksError, match="SMAE pre-training .* needs a masked-LM head, and the gemma3 family "
                                           "has none") as error:
    run_train(config, tmp_path / "smae")
  assert "\n" not in str(error.value)
  assert not (tmp_path / "smae" / "checkpoints").exists()
