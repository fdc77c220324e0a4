"""The model-family recipe for a decoder, for real: a Qwen3 family (`tiny_decoder.py`, `tiny_decoder_names.py`)
built from the package's shared layers alone, registered with one line, loaded from a transformers folder,
matched layer by layer against transformers' Qwen3Model (right and left padding, packed rows), exported at
2 layers, encoded with, trained two SRL steps, and refused for SMAE.

Rotary attention depends on position differences only, so shifting a text's positions by a constant (left
padding counted from the row's start, a packed text at its place in the row) leaves its states unchanged:
the padding and packing cases check the masks; rotary itself is checked by every comparison.
Run with `-s` to see the measured errors."""

import json
import shutil

import numpy as np
import pytest

from tests.helpers import TOKENIZER_FILES, randomize
from tests.recipes import tiny_decoder

LAYERS = 4
TOLERANCE = 1e-4  # of the largest value compared, in float32
LENGTHS = (11, 7, 3)  # the padded batch's texts
PACKED_LENGTHS = (9, 4, 6, 3, 7, 5)


def hf_config(**overrides):
  import transformers
  values = dict(vocab_size=512, hidden_size=64, num_hidden_layers=LAYERS, num_attention_heads=4,
                num_key_value_heads=2, head_dim=32, intermediate_size=128, rope_theta=10000.0,
                max_position_embeddings=128, rms_norm_eps=1e-6, dtype="float32")
  return transformers.Qwen3Config(**{**values, **overrides})  # head_dim x heads (128) != hidden (64)


@pytest.fixture
def registered():
  from starbucks_jax.model import registry
  registry.register(tiny_decoder.FAMILY)  # the touch list's one registry line
  yield
  del registry.FAMILIES[tiny_decoder.MODEL_TYPE]  # registered for this test only


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """A random tiny Qwen3Model saved by transformers (every tensor, norms too, noise: `randomize`)."""
  import transformers
  out = tmp_path_factory.mktemp("qwen3")
  randomize(transformers.Qwen3Model(hf_config()), seed=3).save_pretrained(str(out))
  return out


@pytest.fixture(scope="module")
def theirs(folder):
  """transformers' Qwen3Model cut to n layers, for n in 1..4, from the same folder."""
  import transformers
  return {n: transformers.Qwen3Model.from_pretrained(str(folder), num_hidden_layers=n).eval()
          for n in range(1, LAYERS + 1)}


def texts(lengths, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(1, 512, size=n).tolist() for n in lengths]


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
  print(f"\n{title}: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))


def test_loads_every_tensor_of_a_qwen3_folder(registered, folder, tmp_path):
  import transformers
  from flax.traverse_util import flatten_dict
  from starbucks_jax.hf.load import load_pretrained
  from starbucks_jax.model import registry
  loaded = load_pretrained(folder)
  config = loaded.config
  assert type(config) is tiny_decoder.Qwen3Config and not loaded.report.unexpected and not loaded.report.missing
  assert (config.head_dim, config.num_key_value_heads, config.rope_theta, config.layer_norm_eps) == (32, 2, 1e4, 1e-6)
  assert set(loaded.params) == {"encoder"} and registry.pooling_or_default(None, config) == "last"
  # A Qwen3ForCausalLM folder (Qwen3-Embedding's layout): the same tensors under "model.", lm_head ignored.
  causal = transformers.Qwen3ForCausalLM(hf_config())
  causal.model.load_state_dict(transformers.Qwen3Model.from_pretrained(str(folder)).state_dict())
  causal.save_pretrained(str(tmp_path))
  again = load_pretrained(tmp_path)
  assert again.report.ignored == ["lm_head.weight"] and not again.report.unexpected
  reloaded = flatten_dict(again.params, sep="/")
  assert all(np.array_equal(v, reloaded[k]) for k, v in flatten_dict(loaded.params, sep="/").items())


@pytest.mark.parametrize("change, message", [({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
                                             ({"attention_bias": True}, "attention_bias true is not supported"),
                                             ({"use_sliding_window": True}, "use_sliding_window true")])
def test_config_refuses_what_the_forward_does_not_compute(change, message):
  from starbucks_jax.errors import StarbucksError
  with pytest.raises(StarbucksError, match=message):
    tiny_decoder.Qwen3Config.from_hf_dict({**hf_config().to_dict(), **change})


def test_config_reads_either_rope_form():
  hf = hf_config().to_dict()
  legacy = {**{k: v for k, v in hf.items() if k != "rope_parameters"}, "rope_theta": 5e5}
  assert tiny_decoder.Qwen3Config.from_hf_dict(hf).rope_theta == 1e4  # transformers 5: rope_parameters
  assert tiny_decoder.Qwen3Config.from_hf_dict(legacy).rope_theta == 5e5


@pytest.mark.parametrize("left", [False, True], ids=["right_padding", "left_padding"])
def test_every_layer_is_the_n_layer_qwen3(registered, folder, theirs, left):
  """hidden_states[n] and the last-token vector equal transformers' n-layer model's, at the same positions
  (left padding: positions counted from each text's first token, given to both)."""
  from starbucks_jax.hf.load import load_pretrained
  from starbucks_jax.model.tokens import Tokens
  loaded = load_pretrained(folder)
  input_ids, mask = padded(texts(LENGTHS), left)
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
  tokens = Tokens(input_ids, mask, mask, positions, num_texts=len(LENGTHS), packed=False)
  last = np.full(len(LENGTHS), input_ids.shape[1] - 1) if left else np.array(LENGTHS) - 1
  errors = {}
  for n in range(1, LAYERS + 1):
    out = tiny_decoder.FAMILY.forward(loaded.params, tokens, config=loaded.config, num_layers=n)
    reference = torch_states(theirs[n], input_ids, mask, positions)
    check(f"n={n} last", out.pooled(n, "last"), reference[np.arange(len(LENGTHS)), last], errors)
    check(f"n={n} states", np.asarray(out.hidden_states[n])[mask > 0], reference[mask > 0], errors)
  report("left padding" if left else "right padding", errors)


def test_packed_texts_are_each_text_alone(registered, folder, theirs):
  """Texts end to end in rows: each text's states and last-token vector are those it gets alone."""
  from starbucks_jax.data.packing import pack
  from starbucks_jax.hf.load import load_pretrained
  loaded = load_pretrained(folder)
  ids = texts(PACKED_LENGTHS, seed=1)
  packed = pack({"input_ids": ids}, {"input_ids": 0}, np.arange(len(ids)), length=16, rows=2)
  assert packed["segment_ids"].shape[0] < len(ids)  # several texts share a row
  errors = {}
  for n in range(1, LAYERS + 1):
    out = tiny_decoder.FAMILY.apply(loaded.params, packed["input_ids"], packed["attention_mask"],
                                    segment_ids=packed["segment_ids"], position_ids=packed["position_ids"],
                                    num_texts=len(ids), config=loaded.config, num_layers=n)
    alone = [torch_states(theirs[n], np.array([x]), np.ones((1, len(x)), np.int64))[0] for x in ids]
    check(f"n={n} last", out.pooled(n, "last"), np.stack([a[-1] for a in alone]), errors)
    states = np.asarray(out.hidden_states[n])
    check(f"n={n} states", np.concatenate([states[packed["segment_ids"] == t] for t in range(len(ids))]),
          np.concatenate(alone), errors)
  report("packed", errors)


def test_two_layer_export_is_layer_two(registered, folder, minilm_dir, tmp_path):
  """save_pretrained(num_layers=2) writes a folder transformers' Qwen3Model loads with no missing or
  unexpected tensor, and its last_hidden_state is our layer 2."""
  import transformers
  from starbucks_jax.hf.load import load_pretrained
  from starbucks_jax.hf.save import save_pretrained
  loaded = load_pretrained(folder)
  tokenizer_dir = tmp_path / "tokenizer"  # any tokenizer files: the export copies them
  tokenizer_dir.mkdir()
  for name in TOKENIZER_FILES:
    shutil.copyfile(minilm_dir / name, tokenizer_dir / name)
  out = save_pretrained(tmp_path / "export", loaded.params, loaded.config, tokenizer_dir=tokenizer_dir,
                        num_layers=2, pooling="last")
  model, info = transformers.Qwen3Model.from_pretrained(str(out), output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert (model.config.num_hidden_layers, model.config.head_dim, model.config.num_key_value_heads) == (2, 32, 2)
  assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode_lasttoken"]
  assert load_pretrained(out).config == loaded.config.replace(num_hidden_layers=2)
  input_ids, mask = padded(texts(LENGTHS, seed=2), left=False)
  ours = tiny_decoder.FAMILY.apply(loaded.params, input_ids, mask, config=loaded.config, num_layers=2)
  errors = {}
  check("export n=2 states", np.asarray(ours.hidden_states[2])[mask > 0],
        torch_states(model.eval(), input_ids, mask)[mask > 0], errors)
  report("export", errors)


def test_encodes_and_trains_through_the_package(registered, minilm_dir, tmp_path):
  """The encoder (its default pooling the family's: last; padded or packed) and two SRL steps with
  last-token pooling, exported as a Qwen3Model (MiniLM's tokenizer, so a 30522-token vocabulary)."""
  import transformers
  from starbucks_jax.inference.encoder import Encoder
  from tests.helpers import run_train, save_with_tokenizer, spread_weights, tiny_config
  folder = save_with_tokenizer(spread_weights(transformers.Qwen3Model(hf_config(vocab_size=30522))),
                               tmp_path / "model", minilm_dir)
  encoder = Encoder.from_pretrained(folder, max_length=32)
  sentences = ["a man plays a guitar", "two dogs run on the beach in the sun", "hi"]
  assert encoder.default_pooling == "last"
  np.testing.assert_allclose(encoder.encode(sentences, layer=2, packing=True), encoder.encode(sentences, layer=2),
                             atol=1e-5)
  summary = run_train(tiny_config(folder, num_steps=2, **{"model.pooling": "last"}), tmp_path / "run")
  assert np.isfinite(summary["metrics"]["loss"])
  assert json.loads((summary["export"] / "1_Pooling" / "config.json").read_text())["pooling_mode_lasttoken"]
  _, info = transformers.Qwen3Model.from_pretrained(str(summary["export"]), output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info


def test_smae_is_refused_in_one_line(registered, folder, tmp_path):
  """No MLM head: SMAE stops with one error line naming the family, before anything loads."""
  from starbucks_jax.errors import StarbucksError
  from starbucks_jax.training.defaults import smae_base_config
  from tests.helpers import run_train
  config = smae_base_config()
  config.model.name = str(folder)
  config.data.source = str(tmp_path / "never_read.txt")
  with pytest.raises(StarbucksError, match="SMAE pre-training .* needs a masked-LM head, and the qwen3_recipe "
                                           "family has none") as error:
    run_train(config, tmp_path / "smae")
  assert "\n" not in str(error.value)
  assert not (tmp_path / "smae" / "checkpoints").exists()
