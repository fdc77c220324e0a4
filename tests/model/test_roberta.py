"""RoBERTa and XLM-RoBERTa through the registry: every layer's hidden states, the pooled vectors and the
MLM logits equal transformers' PyTorch models on tiny random configs (padded batches), the export loads
back in transformers and sentence-transformers, an n-layer export is layer n, and SRL and SMAE train."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from starbucks_jax.hf.load import load_pretrained
from starbucks_jax.hf.save import save_pretrained
from starbucks_jax.model.registry import family_of
from tests.helpers import mlm_logits, randomize, train_family_briefly

FAMILIES = {  # model_type: (transformers config, base model, masked-LM model)
    "roberta": (transformers.RobertaConfig, transformers.RobertaModel, transformers.RobertaForMaskedLM),
    "xlm-roberta": (transformers.XLMRobertaConfig, transformers.XLMRobertaModel, transformers.XLMRobertaForMaskedLM),
}
TEXTS = ["A man is playing a guitar.", "A woman is slicing an onion with a knife on a wooden board.", "Dogs run.",
         "Two children play in the snow near a small red house."]


def tokenizer_folder(folder, sentences, model_type):
  """A byte-level BPE (RoBERTa) or a Unigram SentencePiece-style (XLM-R) tokenizer trained on `sentences`,
  saved as transformers saves the family's fast tokenizer."""
  import tokenizers
  if model_type == "roberta":
    raw = tokenizers.ByteLevelBPETokenizer()
    raw.train_from_iterator(sentences, vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok = transformers.RobertaTokenizerFast(tokenizer_object=raw._tokenizer)  # pylint: disable=protected-access
  else:
    raw = tokenizers.SentencePieceUnigramTokenizer()
    raw.train_from_iterator(sentences, vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                            unk_token="<unk>")
    tok = transformers.XLMRobertaTokenizerFast(tokenizer_object=raw._tokenizer)  # pylint: disable=protected-access
  tok.save_pretrained(str(folder))
  return tok


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_dir(request, tmp_path_factory, sentences):
  """(model_type, folder with a random tiny *ForMaskedLM and its tokenizer, the torch model)."""
  model_type = request.param
  config_class, _, mlm_class = FAMILIES[model_type]
  folder = tmp_path_factory.mktemp(model_type)
  tok = tokenizer_folder(folder, sentences, model_type)
  config = config_class(vocab_size=len(tok), hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=66, type_vocab_size=1, pad_token_id=1,
                        bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)
  model = randomize(mlm_class(config), seed=5)
  model.save_pretrained(str(folder))
  return model_type, folder, model


def padded(folder):
  tok = transformers.AutoTokenizer.from_pretrained(str(folder))
  return tok(TEXTS, padding=True, return_tensors="np")


def test_hidden_states_pooling_and_mlm_logits_match_transformers(family_dir):
  model_type, folder, torch_mlm = family_dir
  loaded = load_pretrained(folder)
  assert loaded.config.model_type == model_type and loaded.report.has_mlm_head
  assert loaded.config.max_text_length == 64
  batch = padded(folder)
  assert (batch["attention_mask"] == 0).any()  # a padded batch
  ids, mask = batch["input_ids"].astype(np.int32), batch["attention_mask"].astype(np.int32)
  out = family_of(loaded.config).apply(loaded.params, jnp.asarray(ids), jnp.asarray(mask), config=loaded.config)
  base = FAMILIES[model_type][1](torch_mlm.config).eval()
  base.load_state_dict(torch_mlm.roberta.state_dict(), strict=False)
  with torch.no_grad():
    theirs = base(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
    logits = torch_mlm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
  assert len(out.hidden_states) == len(theirs.hidden_states) == 5
  m = mask[..., None]
  for n, (ours, want) in enumerate(zip(out.hidden_states, theirs.hidden_states)):
    want = want.numpy()
    assert np.abs((np.asarray(ours) - want) * m).max() < 1e-4, n
    np.testing.assert_allclose(np.asarray(out.pooled(n, "cls")), want[:, 0], atol=1e-4)
    np.testing.assert_allclose(np.asarray(out.pooled(n, "mean")), (want * m).sum(1) / m.sum(1), atol=1e-4)
  ours_logits = mlm_logits(loaded.params["mlm_head"], family_of(loaded.config).word_embeddings(loaded.params),
                           out.hidden_states[-1], layer_norm_eps=loaded.config.layer_norm_eps)
  assert np.abs((np.asarray(ours_logits) - logits) * m).max() < 1e-4


def load_without_warnings(cls, folder):
  model, info = cls.from_pretrained(str(folder), output_loading_info=True)
  assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
  return model.eval()


def test_exports_load_in_transformers_and_sentence_transformers(family_dir, tmp_path):
  from sentence_transformers import SentenceTransformer
  from starbucks_jax.inference.encoder import Encoder
  model_type, folder, torch_mlm = family_dir
  loaded = load_pretrained(folder)
  full = save_pretrained(tmp_path / "full", loaded.params, loaded.config, tokenizer_dir=folder, pooling="mean",
                         max_seq_length=64)
  mlm = save_pretrained(tmp_path / "mlm", loaded.params, loaded.config, tokenizer_dir=folder, with_mlm_head=True)
  three = save_pretrained(tmp_path / "three", loaded.params, loaded.config, tokenizer_dir=folder, num_layers=3)
  assert json.loads((full / "config.json").read_text())["model_type"] == model_type
  reloaded = load_without_warnings(transformers.AutoModel, full)
  batch = {k: torch.tensor(v) for k, v in padded(folder).items()}
  with torch.no_grad():
    hidden = reloaded(**batch, output_hidden_states=True).hidden_states
    assert torch.allclose(load_without_warnings(transformers.AutoModelForMaskedLM, mlm)(**batch).logits,
                          torch_mlm(**batch).logits, atol=1e-5)
    small = load_without_warnings(transformers.AutoModel, three)(**batch).last_hidden_state
  assert torch.allclose(small, hidden[3], atol=1e-6)
  for dim in (8, 32):
    theirs = SentenceTransformer(str(full), device="cpu", truncate_dim=dim).encode(TEXTS, convert_to_numpy=True)
    ours = Encoder.from_pretrained(full).encode(TEXTS, dim=dim)
    assert ours.shape == (len(TEXTS), dim) and np.abs(theirs - ours).max() < 1e-5


@pytest.mark.parametrize("task", ["srl", "smae"])
def test_srl_and_smae_train_and_export(family_dir, task, tmp_path):
  """A few steps of each task from the folder, with its own tokenizer: the loss falls, the export is the family's.
  Runs on RoBERTa only: XLM-R is the same code under other names, and its MLM head is checked above."""
  model_type, source, torch_mlm = family_dir
  if model_type == "xlm-roberta":
    pytest.skip("XLM-R trains with RoBERTa's code under other names (its parity and exports are tested above); "
                "RoBERTa's runs cover it")
  assert train_family_briefly(source, torch_mlm, task, tmp_path)["model_type"] == model_type
