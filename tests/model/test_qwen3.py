"""Qwen3 (`model/qwen3.py`, model_type "qwen3") through the registry, on a tiny random config with
grouped-query attention and heads x head_dim (128) != hidden (64): every layer n is transformers'
`Qwen3Model` cut to n layers (right and left padding, packed rows), the last-token vectors too; an n-layer
export loads in transformers and sentence-transformers; SRL trains with last pooling, padded and packed;
SMAE is refused; 1 and 8 devices under FSDP agree.

The folder's tokenizer is built here, offline: a byte-level BPE on shipped SNLI sentences whose
post-processor ends every text with <|endoftext|>, the pad token too, as Qwen3-Embedding's tokenizer
does, so `last` pooling reads that token. Its id is the last of the vocabulary and config.json names it
only as `eos_token_id`: the pad id falls back to it. Run with `-s` to see the measured errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO, randomize, run_train, spread_weights, tiny_config

LAYERS = 4
TOLERANCE = 1e-4  # of the largest value compared, in float32
EOS = "<|endoftext|>"
TEXTS = ["A man is playing a guitar on the stage.", "Dogs run.", "Two children play in the snow near a red house.",
         "A woman slices an onion."]
PACKED_TEXTS = ["A dog sleeps.", "A man plays a guitar on the stage.", "Kids run.", "The woman is cooking dinner.",
                "Two men talk.", "A cat sits on a mat in the sun."]


def tokenizer_folder(folder, sentences):
  """A byte-level BPE ending every text with <|endoftext|> (eos and pad), saved as a fast tokenizer."""
  import tokenizers
  import transformers
  from tokenizers.processors import TemplateProcessing
  raw = tokenizers.ByteLevelBPETokenizer()
  raw.train_from_iterator(sentences, vocab_size=400)
  raw.add_special_tokens([EOS])  # after the vocabulary, as in Qwen3's
  eos = raw.token_to_id(EOS)
  raw._tokenizer.post_processor = TemplateProcessing(  # pylint: disable=protected-access
      single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, eos)])
  tok = transformers.PreTrainedTokenizerFast(tokenizer_object=raw._tokenizer,  # pylint: disable=protected-access
                                             eos_token=EOS, pad_token=EOS,
                                             model_input_names=["input_ids", "attention_mask"])
  tok.save_pretrained(str(folder))
  return tok


def hf_config(vocab_size, eos, **overrides):
  """heads x head_dim (128) != hidden (64), 2 key/value heads; the pad id left null, as Qwen3's configs do."""
  import transformers
  values = dict(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=LAYERS, num_attention_heads=4,
                num_key_value_heads=2, head_dim=32, intermediate_size=128, rope_theta=10000.0,
                max_position_embeddings=128, rms_norm_eps=1e-6, eos_token_id=eos, bos_token_id=eos, pad_token_id=None,
                dtype="float32")
  return transformers.Qwen3Config(**{**values, **overrides})


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory, sentences):
  """(folder with a random tiny Qwen3Model and its tokenizer, the tokenizer, the torch model)."""
  import transformers
  folder = tmp_path_factory.mktemp("qwen3")
  tok = tokenizer_folder(folder, sentences)
  model = randomize(transformers.Qwen3Model(hf_config(len(tok), tok.eos_token_id)), seed=3)
  model.save_pretrained(str(folder))
  return folder, tok, model


@pytest.fixture(scope="module")
def loaded(qwen3_dir):
  from starbucks_jax.hf.load import load_pretrained
  return load_pretrained(qwen3_dir[0])


@pytest.fixture(scope="module")
def theirs(qwen3_dir):
  """transformers' Qwen3Model cut to n layers, for n in 1..4, from the same folder."""
  import transformers
  return {n: transformers.Qwen3Model.from_pretrained(str(qwen3_dir[0]), num_hidden_layers=n).eval()
          for n in range(1, LAYERS + 1)}


def token_ids(tok, texts):
  ids = tok(texts)["input_ids"]
  assert all(x[-1] == tok.eos_token_id for x in ids)  # every text ends with <|endoftext|>
  return ids


def padded(ids, pad, left: bool):
  length = max(map(len, ids))
  input_ids, mask = np.full((len(ids), length), pad, np.int32), np.zeros((len(ids), length), np.int32)
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


def check(what, ours, reference, errors):
  """The largest difference relative to the largest reference value, recorded and held to TOLERANCE."""
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  errors[what] = float(np.abs(ours - reference).max() / np.abs(reference).max())
  assert errors[what] < TOLERANCE, (what, errors[what])


def report(title, errors):
  print(f"\n{title}: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))


def test_reads_a_qwen3_folder(qwen3_dir, loaded, tmp_path):
  """The package's family reads the folder (pad id from eos, head sizes, last pooling); a tied
  Qwen3ForCausalLM folder (Qwen3-Embedding's layout) gives the same tensors under `model.`."""
  import transformers
  from flax.traverse_util import flatten_dict
  from starbucks_jax.hf.load import load_pretrained
  from starbucks_jax.model import registry
  folder, tok, model = qwen3_dir
  config = loaded.config
  assert registry.family_of(config).name == "qwen3" and not loaded.report.unexpected
  assert set(loaded.params) == {"encoder"}
  assert (config.pad_token_id, config.vocab_size) == (tok.eos_token_id, len(tok)) and tok.eos_token_id == len(tok) - 1
  assert (config.head_dim, config.num_key_value_heads, config.rope_theta, config.attention_width) == (32, 2, 1e4, 128)
  assert registry.pooling_or_default(loaded.pooling, config) == "last"
  causal = transformers.Qwen3ForCausalLM(hf_config(len(tok), tok.eos_token_id, tie_word_embeddings=True))
  causal.model.load_state_dict(model.state_dict())
  causal.save_pretrained(str(tmp_path))
  again = load_pretrained(tmp_path)
  assert not again.report.unexpected and set(again.report.ignored) <= {"lm_head.weight"}
  reloaded = flatten_dict(again.params, sep="/")
  assert all(np.array_equal(v, reloaded[k]) for k, v in flatten_dict(loaded.params, sep="/").items())


@pytest.mark.parametrize("change, message", [({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
                                             ({"attention_bias": True}, "attention_bias true is not supported"),
                                             ({"use_sliding_window": True}, "sliding-window layers"),
                                             ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "'yarn'")])
def test_config_refuses_what_the_forward_does_not_compute(change, message):
  from starbucks_jax.errors import StarbucksError
  from starbucks_jax.model.registry import config_from_hf_dict
  with pytest.raises(StarbucksError, match=message):
    config_from_hf_dict({**hf_config(400, 399).to_dict(), **change})
  legacy = {k: v for k, v in hf_config(400, 399).to_dict().items() if k != "rope_parameters"}
  assert config_from_hf_dict({**legacy, "rope_theta": 5e5}).rope_theta == 5e5  # before transformers 5


@pytest.mark.parametrize("left", [False, True], ids=["right_padding", "left_padding"])
def test_every_layer_is_the_n_layer_qwen3(qwen3_dir, loaded, theirs, left):
  """hidden_states[n] and the last-token vector equal transformers' n-layer model's, at the same positions
  (left padding: positions counted from each text's first token, given to both)."""
  from starbucks_jax.model.registry import family_of
  from starbucks_jax.model.tokens import Tokens
  ids = token_ids(qwen3_dir[1], TEXTS)
  input_ids, mask = padded(ids, loaded.config.pad_token_id, left)
  assert (mask == 0).any()
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
  tokens = Tokens(input_ids, mask, mask, positions, num_texts=len(ids), packed=False)
  last = np.full(len(ids), input_ids.shape[1] - 1) if left else np.array(list(map(len, ids))) - 1
  errors = {}
  for n in range(1, LAYERS + 1):
    out = family_of(loaded.config).forward(loaded.params, tokens, config=loaded.config, num_layers=n)
    reference = torch_states(theirs[n], input_ids, mask, positions)
    check(f"n={n} last", out.pooled(n, "last"), reference[np.arange(len(ids)), last], errors)
    check(f"n={n} states", np.asarray(out.hidden_states[n])[mask > 0], reference[mask > 0], errors)
  report("left padding" if left else "right padding", errors)


def test_packed_texts_are_each_text_alone(qwen3_dir, loaded, theirs):
  """Texts end to end in rows, causal within each: each text's states and last-token vector are those it
  gets alone."""
  from starbucks_jax.data.packing import pack
  from starbucks_jax.model.registry import family_of
  ids = token_ids(qwen3_dir[1], PACKED_TEXTS)
  packed = pack({"input_ids": ids}, {"input_ids": loaded.config.pad_token_id}, np.arange(len(ids)), length=24, rows=3)
  assert packed["segment_ids"].shape[0] < len(ids)  # several texts share a row
  errors = {}
  for n in range(1, LAYERS + 1):
    out = family_of(loaded.config).apply(loaded.params, packed["input_ids"], packed["attention_mask"],
                                         segment_ids=packed["segment_ids"], position_ids=packed["position_ids"],
                                         num_texts=len(ids), config=loaded.config, num_layers=n)
    alone = [torch_states(theirs[n], np.array([x]), np.ones((1, len(x)), np.int64))[0] for x in ids]
    check(f"n={n} last", out.pooled(n, "last"), np.stack([a[-1] for a in alone]), errors)
    states = np.asarray(out.hidden_states[n])
    check(f"n={n} states", np.concatenate([states[packed["segment_ids"] == t] for t in range(len(ids))]),
          np.concatenate(alone), errors)
  report("packed", errors)


def test_two_layer_export_serves_sentence_transformers(qwen3_dir, theirs, tmp_path):
  """`python -m starbucks_jax.export --num-layers 2 --pooling last` writes a Qwen3Model folder that
  transformers loads whole and sentence-transformers encodes with as we do: layer 2's last token."""
  import transformers
  from sentence_transformers import SentenceTransformer
  from starbucks_jax.cli.export import main as export
  from starbucks_jax.inference.encoder import Encoder
  folder, tok, _ = qwen3_dir
  out = tmp_path / "export"
  export(["--model", str(folder), "--output", str(out), "--num-layers", "2", "--pooling", "last"])
  modules = json.loads((out / "modules.json").read_text())
  assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling"]
  assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode_lasttoken"]
  model, info = transformers.Qwen3Model.from_pretrained(str(out), output_loading_info=True)
  assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
  assert (model.config.num_hidden_layers, model.config.head_dim, model.config.pad_token_id) == (2, 32, tok.eos_token_id)
  ours = Encoder.from_pretrained(out).encode(TEXTS)
  st = SentenceTransformer(str(out), device="cpu").encode(TEXTS, convert_to_numpy=True, batch_size=len(TEXTS))
  ids = token_ids(tok, TEXTS)
  input_ids, mask = padded(ids, tok.eos_token_id, left=False)
  reference = torch_states(theirs[2], input_ids, mask)[np.arange(len(ids)), np.array(list(map(len, ids))) - 1]
  errors = {}
  check("export n=2 ours vs sentence-transformers", ours, st, errors)
  check("export n=2 ours vs transformers", ours, reference, errors)
  check("source folder layer 2 vs export", Encoder.from_pretrained(folder).encode(TEXTS, layer=2), ours, errors)
  report("export", errors)


# A short SRL run of the tiny model (`tests/helpers.tiny_config`: SNLI triplets, batch 8, pairs (1,8) (2,16)
# (4,32)) with last-token pooling, one checkpoint at the end.
TRAINING = {"num_steps": 12, "model.pooling": "last", "eval.sts": (), "checkpoint.every_steps": 12}


def losses_of(workdir):
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r["loss"] for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def spread_dir(qwen3_dir, tmp_path_factory):
  """The tiny model with spread weights (texts apart, a loss worth following) and the same tokenizer."""
  import transformers
  folder, tok, model = qwen3_dir
  out = tmp_path_factory.mktemp("qwen3_spread")
  spread_weights(transformers.Qwen3Model(model.config)).save_pretrained(str(out))
  tok.save_pretrained(str(out))
  return out


@pytest.fixture(scope="module")
def padded_run(spread_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("qwen3_run")
  run_train(tiny_config(spread_dir, **TRAINING), workdir)
  return workdir


def test_srl_trains_with_last_pooling(padded_run):
  """12 SRL steps with last-token pooling: the loss falls; the export is a Qwen3Model pooling the last token."""
  losses = losses_of(padded_run)
  print(f"\nSRL padded: loss first {losses[0]:.4f}, last {losses[-1]:.4f}")
  assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3]), losses
  exported = json.loads((padded_run / "export" / "config.json").read_text())
  assert (exported["model_type"], exported["architectures"]) == ("qwen3", ["Qwen3Model"])
  assert json.loads((padded_run / "export" / "1_Pooling" / "config.json").read_text())["pooling_mode_lasttoken"]


def test_packed_srl_follows_the_padded_run(spread_dir, padded_run, tmp_path):
  """Packed rows (causal within each text) train as padded ones: the same batches, the same losses."""
  run_train(tiny_config(spread_dir, **TRAINING, **{"data.packing": True, "export.enabled": False}), tmp_path / "packed")
  packed, reference = losses_of(tmp_path / "packed"), losses_of(padded_run)
  difference = np.abs(np.subtract(packed, reference) / np.asarray(reference)).max()
  print(f"\nSRL packed vs padded, 12 steps: largest relative loss difference {difference:.2e}")
  np.testing.assert_allclose(packed, reference, rtol=1e-4)


def test_smae_is_refused_in_one_line(qwen3_dir, tmp_path):
  """No MLM head: SMAE stops with one error line naming the family, before anything loads."""
  from starbucks_jax.errors import StarbucksError
  from starbucks_jax.training.defaults import smae_base_config
  config = smae_base_config()
  config.model.name = str(qwen3_dir[0])
  config.data.source = str(tmp_path / "never_read.txt")
  message = "SMAE pre-training .* needs a masked-LM head, and the qwen3 family has none"
  with pytest.raises(StarbucksError, match=message) as error:
    run_train(config, tmp_path / "smae")
  assert "\n" not in str(error.value) and not (tmp_path / "smae" / "checkpoints").exists()


def sharding_probe():
  """Run in a subprocess by the FSDP test (8 fake CPU devices): `tests/runtime/sharding_probe.compare` for
  a two-layer Qwen3 config (grouped heads, head_dim != hidden / heads, attention dropout on), SRL with last
  pooling, on 1 device and on data=2 x fsdp=4 (no remat: what is sharded does not depend on it)."""
  from tests.runtime import sharding_probe as probe  # sets the fake device count before jax starts
  import jax
  from starbucks_jax.losses.srl_spec import SrlLossSpec
  from starbucks_jax.model.registry import family_for_type
  from starbucks_jax.training.tasks.srl import SrlStepSettings
  config = family_for_type("qwen3").config_class(
      vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
      intermediate_size=48, max_position_embeddings=66, attention_probs_dropout_prob=0.1, rope_theta=1e4)
  params = family_for_type("qwen3").init_params(config, jax.random.key(0))
  spec = SrlLossSpec(mode="starbucks", num_model_layers=2, hidden_size=32, pairs=((1, 8), (2, 32)), group_size=2,
                     kl="scores")
  settings = SrlStepSettings(model_config=config, spec=spec, pooling="last", remat="none")
  rng = np.random.default_rng(0)

  def side(rows, length=12):
    ids = rng.integers(5, 120, (rows, length)).astype(np.int32)
    mask = (np.arange(length)[None] < rng.integers(3, length + 1, (rows, 1))).astype(np.int32)
    return np.where(mask == 1, ids, config.pad_token_id), mask

  (qi, qm), (pi, pm) = side(16), side(32)
  probe.compare(params, {"query_input_ids": qi, "query_attention_mask": qm, "passage_input_ids": pi,
                         "passage_attention_mask": pm}, settings, fsdp=4)


def test_one_and_eight_devices_agree_under_fsdp():
  env = dict(os.environ, PYTHONPATH=str(REPO),
             XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8")
  out = subprocess.run([sys.executable, "-c", "from tests.model.test_qwen3 import sharding_probe; sharding_probe()"],
                       capture_output=True, text=True, timeout=600, cwd=str(REPO), env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  print(f"\nFSDP 1 vs 8 devices: metric_diff {result['metric_diff']:.2e}, grad_diff {result['grad_diff']:.2e}")
  assert result["devices"] == 8 and result["loss_1"] > 0.1 and result["grad_scale"] > 1e-3
  assert result["metric_diff"] <= 1e-5 and result["grad_diff"] <= 1e-5, result
  assert result["sharded_params"] == 1 + 7 * 2  # every kernel and the embedding table split over fsdp


def test_the_trained_workdir_goes_through_every_command(padded_run, sentences, tmp_path):
  """The trained Qwen3 workdir (last pooling) through evaluate (STS, BEIR, MTEB and the frontier at every
  trained size), mine at (2, 16), encode at a size and the 2-layer export: each reads the workdir's
  pooling, and each gives what our encoder's vectors give."""
  from scipy import stats
  from starbucks_jax.cli.encode import main as encode
  from starbucks_jax.cli.evaluate import main as evaluate
  from starbucks_jax.cli.export import main as export
  from starbucks_jax.cli.mine import main as mine
  from starbucks_jax.evaluation.datasets import load_corpus, load_sts
  from starbucks_jax.inference.encoder import Encoder
  from tests.evaluation.test_evaluate import STSB_TEST, small_dl19
  rows = [json.loads(line) for line in STSB_TEST.read_text().splitlines()[:40]]
  sts = tmp_path / "stsb_small.csv"
  sts.write_text("sentence1,sentence2,score\n" + "".join(
      f"\"{r['sentence1']}\",\"{r['sentence2']}\",{r['score']}\n" for r in rows))
  beir = small_dl19(tmp_path / "dl19_small", num_queries=4, num_passages=60)
  output = tmp_path / "out" / "results.json"
  evaluate(["--model", str(padded_run), "--sts", str(sts), "--beir", str(beir), "--mteb", str(sts),
            "--pairs", "1:8,2:16,4:32", "--output", str(output), "--frontier", "--cost-batch-size", "4",
            "--cost-length", "16", "--cost-repeats", "1", "--search-corpus", "200"])
  results = json.loads(output.read_text())
  assert set(results["sts"]["stsb_small"]) == set(results["beir"]["dl19_small"]) == {"1,8", "2,16", "4,32"}
  encoder = Encoder.from_pretrained(padded_run)
  data = load_sts(str(sts))
  a, b = (encoder.encode(texts, layer=2, dim=16, normalize=True) for texts in (data.sentence1, data.sentence2))
  ours = 100 * stats.spearmanr(np.sum(a * b, axis=1), data.scores)[0]
  assert abs(results["sts"]["stsb_small"]["2,16"]["spearman"] - ours) < 1e-6
  assert abs(results["mteb"]["mteb_stsb_small"]["2,16"]["main_score"] - ours / 100) < 1e-4
  assert set(json.loads((tmp_path / "out" / "results_frontier.json").read_text())["costs"]["encoding"]) == {"1", "2", "4"}

  corpus = tmp_path / "corpus.jsonl"
  corpus.write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": s}) + "\n" for i, s in enumerate(sentences[:30])))
  groups = tmp_path / "groups.jsonl"
  groups.write_text("".join(json.dumps({"query_id": f"q{i}", "query": sentences[40 + i], "negative_passages": [],
                                        "positive_passages": [{"docid": f"d{i}", "title": "", "text": sentences[i]}]})
                            + "\n" for i in range(4)))
  mine(["--model", str(padded_run), "--layer", "2", "--dim", "16", "--train", str(groups), "--corpus", str(corpus),
        "--output", str(tmp_path / "mined.jsonl"), "--num-negatives", "3", "--range-min", "0", "--sampling", "top",
        "--query-max-length", "64", "--passage-max-length", "64"])
  mined = [json.loads(line) for line in (tmp_path / "mined.jsonl").read_text().splitlines()]
  q = encoder.encode([sentences[40]], layer=2, dim=16, normalize=True, max_length=64)
  c = encoder.encode(load_corpus(corpus).passages(), layer=2, dim=16, normalize=True, max_length=64)
  ranking = [f"d{j}" for j in np.argsort(-(c @ q[0]), kind="stable") if j != 0]
  assert [p["docid"] for p in mined[0]["negative_passages"]] == ranking[:3]

  texts = tmp_path / "texts.txt"
  texts.write_text("\n".join(TEXTS) + "\n")
  encode(["--model", str(padded_run), "--layer", "2", "--dim", "16", "--input", str(texts),
          "--output", str(tmp_path / "v.npy")])
  np.testing.assert_allclose(np.load(tmp_path / "v.npy"), encoder.encode(TEXTS, layer=2, dim=16), atol=1e-6)
  export(["--workdir", str(padded_run), "--num-layers", "2", "--output", str(tmp_path / "export2")])
  np.testing.assert_allclose(Encoder.from_pretrained(tmp_path / "export2").encode(TEXTS),
                             encoder.encode(TEXTS, layer=2), atol=1e-5)
