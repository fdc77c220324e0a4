"""ModernBERT through the registry: every layer's states, the pooled vectors and the MLM logits equal
transformers' PyTorch `ModernBertModel` / `ModernBertForMaskedLM` on a tiny random config (padded batches of
texts longer than the sliding window), the export loads back in transformers and sentence-transformers, an
n-layer export is layer n, packed rows equal padded ones, and SRL and SMAE train."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from starbucks_jax.hf.load import load_pretrained
from starbucks_jax.hf.save import save_pretrained
from starbucks_jax.model.registry import family_of
from tests.helpers import mlm_logits, randomize, train_family_briefly

# Longer than the window (local_attention 8: 4 tokens each side), so the local layers' masks matter.
TEXTS = ["A man is playing a guitar on the stage while the crowd sings along with him.",
         "A woman is slicing an onion with a knife on a wooden board in a small kitchen.", "Dogs run.",
         "Two children play in the snow near a small red house at the edge of the quiet village."]
SPECIALS = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]


def tokenizer_folder(folder, sentences):
  """A byte-level BPE with ModernBERT's special tokens and its [CLS] text [SEP] template, saved as
  transformers saves ModernBERT's fast tokenizer (no token type ids)."""
  import tokenizers
  from tokenizers.processors import TemplateProcessing
  raw = tokenizers.ByteLevelBPETokenizer()
  raw.train_from_iterator(sentences, vocab_size=400, special_tokens=SPECIALS)
  cls, sep = raw.token_to_id("[CLS]"), raw.token_to_id("[SEP]")
  raw._tokenizer.post_processor = TemplateProcessing(  # pylint: disable=protected-access
      single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
  tok = transformers.PreTrainedTokenizerFast(
      tokenizer_object=raw._tokenizer,  # pylint: disable=protected-access
      unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]",
      model_input_names=["input_ids", "attention_mask"])
  tok.save_pretrained(str(folder))
  return tok


@pytest.fixture(scope="module")
def modernbert_dir(tmp_path_factory, sentences):
  """(folder with a random tiny ModernBertForMaskedLM and its tokenizer, the torch model)."""
  folder = tmp_path_factory.mktemp("modernbert")
  tok = tokenizer_folder(folder, sentences)
  ids = {name: tok.convert_tokens_to_ids(name) for name in SPECIALS}
  config = transformers.ModernBertConfig(
      vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
      max_position_embeddings=128, local_attention=8, global_attn_every_n_layers=3, global_rope_theta=160000.0,
      local_rope_theta=10000.0, pad_token_id=ids["[PAD]"], cls_token_id=ids["[CLS]"], sep_token_id=ids["[SEP]"],
      bos_token_id=ids["[CLS]"], eos_token_id=ids["[SEP]"])
  assert config.layer_types == ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
  model = randomize(transformers.ModernBertForMaskedLM(config), seed=5)
  model.save_pretrained(str(folder))
  return folder, model


def padded(folder):
  tok = transformers.AutoTokenizer.from_pretrained(str(folder))
  return tok(TEXTS, padding=True, return_tensors="np")


def test_states_pooling_and_mlm_logits_match_transformers(modernbert_dir):
  """Ours[n] is the n-layer model's last_hidden_state: transformers' final_norm of its hidden_states[n]
  (which it applies itself at n = N); pooled vectors and MLM logits likewise."""
  folder, torch_mlm = modernbert_dir
  loaded = load_pretrained(folder)
  config = loaded.config
  assert config.model_type == "modernbert" and loaded.report.has_mlm_head and "pooler" not in loaded.params
  assert config.local_rope_theta == 10000.0 and config.global_rope_theta == 160000.0 and config.window == 4
  batch = padded(folder)
  ids, mask = batch["input_ids"].astype(np.int32), batch["attention_mask"].astype(np.int32)
  assert (mask == 0).any() and mask.sum(1).max() > 2 * config.window + 1  # padded, and longer than a window
  out = family_of(config).apply(loaded.params, jnp.asarray(ids), jnp.asarray(mask), config=config)
  torch_ids, torch_mask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
  with torch.no_grad():
    theirs = torch_mlm.model(input_ids=torch_ids, attention_mask=torch_mask, output_hidden_states=True)
    normed = [torch_mlm.model.final_norm(h).numpy() for h in theirs.hidden_states[:-1]]
    normed.append(theirs.last_hidden_state.numpy())
    logits = torch_mlm(input_ids=torch_ids, attention_mask=torch_mask).logits.numpy()
  assert len(out.hidden_states) == len(theirs.hidden_states) == 5
  m = mask[..., None]
  for n, want in enumerate(normed):
    assert np.abs((np.asarray(out.hidden_states[n]) - want) * m).max() < 1e-4, n
    np.testing.assert_allclose(np.asarray(out.pooled(n, "cls")), want[:, 0], atol=1e-4)
    np.testing.assert_allclose(np.asarray(out.pooled(n, "mean")), (want * m).sum(1) / m.sum(1), atol=1e-4)
  params = loaded.params
  ours_logits = mlm_logits(params["mlm_head"], family_of(config).word_embeddings(params), out.hidden_states[-1],
                           layer_norm_eps=config.layer_norm_eps)
  assert np.abs((np.asarray(ours_logits) - logits) * m).max() < 1e-4
  # The windows matter here: with every layer global the states move far beyond the tolerance.
  everywhere = config.replace(layer_types=("full_attention",) * 4)
  unwindowed = family_of(config).apply(params, jnp.asarray(ids), jnp.asarray(mask), config=everywhere)
  assert np.abs((np.asarray(unwindowed.hidden_states[2]) - normed[2]) * m).max() > 1e-2


def test_packed_rows_equal_padded_rows(modernbert_dir):
  """Two texts in one row (positions restarting, attention and windows kept inside each) give each text's
  padded-row states and pooled vectors."""
  folder, _ = modernbert_dir
  loaded = load_pretrained(folder)
  batch = padded(folder)
  ids, mask = batch["input_ids"].astype(np.int32), batch["attention_mask"].astype(np.int32)
  lengths = mask.sum(1)
  row = np.concatenate([ids[0, :lengths[0]], ids[2, :lengths[2]], ids[1, :lengths[1]]])[None]
  segments = np.repeat([0, 1, 2], [lengths[0], lengths[2], lengths[1]])[None]
  positions = np.concatenate([np.arange(n) for n in (lengths[0], lengths[2], lengths[1])])[None]
  family = family_of(loaded.config)
  padded_out = family.apply(loaded.params, jnp.asarray(ids), jnp.asarray(mask), config=loaded.config)
  packed_out = family.apply(loaded.params, jnp.asarray(row), jnp.ones_like(jnp.asarray(row)), config=loaded.config,
                            segment_ids=jnp.asarray(segments), position_ids=jnp.asarray(positions), num_texts=3)
  for n in range(5):
    for kind in ("cls", "mean"):
      np.testing.assert_allclose(np.asarray(packed_out.pooled(n, kind)),
                                 np.asarray(padded_out.pooled(n, kind))[[0, 2, 1]], atol=1e-5)


def load_without_warnings(cls, folder):
  model, info = cls.from_pretrained(str(folder), output_loading_info=True)
  assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
  return model.eval()


def test_exports_load_in_transformers_and_sentence_transformers(modernbert_dir, tmp_path):
  from sentence_transformers import SentenceTransformer
  from starbucks_jax.inference.encoder import Encoder
  folder, torch_mlm = modernbert_dir
  loaded = load_pretrained(folder)
  full = save_pretrained(tmp_path / "full", loaded.params, loaded.config, tokenizer_dir=folder, pooling="mean",
                         max_seq_length=64)
  mlm = save_pretrained(tmp_path / "mlm", loaded.params, loaded.config, tokenizer_dir=folder, with_mlm_head=True)
  three = save_pretrained(tmp_path / "three", loaded.params, loaded.config, tokenizer_dir=folder, num_layers=3)
  exported = json.loads((three / "config.json").read_text())
  assert exported["model_type"] == "modernbert" and len(exported["layer_types"]) == 3
  assert load_pretrained(full).config == loaded.config  # the config round-trips, and so do the weights
  from flax import traverse_util
  again = traverse_util.flatten_dict(load_pretrained(mlm).params, sep="/")
  assert again.keys() == traverse_util.flatten_dict(loaded.params, sep="/").keys()
  for path, value in traverse_util.flatten_dict(loaded.params, sep="/").items():
    np.testing.assert_array_equal(again[path], value, err_msg=path)
  reloaded = load_without_warnings(transformers.AutoModel, full)
  batch = {k: torch.tensor(v, dtype=torch.long) for k, v in padded(folder).items()}
  with torch.no_grad():
    hidden = reloaded(**batch, output_hidden_states=True).hidden_states
    assert torch.allclose(load_without_warnings(transformers.AutoModelForMaskedLM, mlm)(**batch).logits,
                          torch_mlm(**batch).logits, atol=1e-5)
    small = load_without_warnings(transformers.AutoModel, three)(**batch).last_hidden_state
    want = reloaded.final_norm(hidden[3])
  assert torch.allclose(small, want, atol=1e-5)  # the 3-layer export is layer 3, final norm included
  ours_three = Encoder.from_pretrained(full).encode(TEXTS, layer=3, dim=16)
  theirs_three = SentenceTransformer(str(three), device="cpu", truncate_dim=16).encode(TEXTS, convert_to_numpy=True)
  assert np.abs(ours_three - theirs_three).max() < 1e-5
  for dim in (8, 32):
    theirs = SentenceTransformer(str(full), device="cpu", truncate_dim=dim).encode(TEXTS, convert_to_numpy=True)
    ours = Encoder.from_pretrained(full).encode(TEXTS, dim=dim)
    assert ours.shape == (len(TEXTS), dim) and np.abs(theirs - ours).max() < 1e-5


def test_an_unsupported_modernbert_variant_is_one_clear_error(modernbert_dir, tmp_path):
  from starbucks_jax.errors import StarbucksError
  folder, _ = modernbert_dir
  hf = json.loads((folder / "config.json").read_text())
  for change, words in (({"norm_bias": True}, "norm_bias true is not supported"),
                        ({"hidden_activation": "silu"}, "hidden_activation 'silu' is not supported")):
    bad = tmp_path / next(iter(change))
    shutil.copytree(folder, bad)
    (bad / "config.json").write_text(json.dumps({**hf, **change}))
    with pytest.raises(StarbucksError, match=words):
      load_pretrained(bad)


@pytest.mark.parametrize("task", ["srl", "smae"])
def test_srl_and_smae_train_and_export(modernbert_dir, task, tmp_path):
  """A few steps of each task from the folder, with its own tokenizer: the loss falls, the export is ModernBERT."""
  source, torch_mlm = modernbert_dir
  exported = train_family_briefly(source, torch_mlm, task, tmp_path)
  assert exported["model_type"] == "modernbert"
  if task == "smae":
    assert exported["architectures"] == ["ModernBertForMaskedLM"]
    load_without_warnings(transformers.AutoModelForMaskedLM, tmp_path / "run" / "export")
