"""The pooling registry: `last` (decoder embedders' last-token pooling) against PyTorch's, on a BERT
folder (transformers' BertModel states; sentence-transformers' `lasttoken` Pooling and Qwen3-Embedding's
`last_token_pool` on them), right and left padded and packed; and every kind reaching every consumer."""

import jax
import numpy as np
import pytest
import torch
import transformers
from sentence_transformers.sentence_transformer.modules import Pooling

from starbucks_jax.data import packing
from starbucks_jax.hf.load import load_pretrained
from starbucks_jax.model import bert, pooling

TOLERANCE = 1e-5  # max abs, float32, relative to the largest value

TEXTS = ["A man is playing a guitar.", "Short.",
         "A very long sentence about a dog that runs through the park, chasing a ball and barking loudly.",
         "Two women sit on a bench."]


def qwen3_last_token_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
  """Qwen3-Embedding's model card: the last column for left padding, else each row's last real token."""
  if bool(mask[:, -1].sum() == mask.shape[0]):
    return hidden[:, -1]
  lengths = mask.sum(dim=1) - 1
  return hidden[torch.arange(hidden.shape[0]), lengths]


def torch_states(model_dir, input_ids, mask):
  model = transformers.BertModel.from_pretrained(str(model_dir)).eval()
  with torch.no_grad():
    out = model(input_ids=torch.tensor(input_ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
  return out.hidden_states


def tokenized(model_dir, side: str):
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
  tokenizer.padding_side = side
  encoded = tokenizer(TEXTS, padding=True, return_tensors="np")
  return encoded["input_ids"].astype(np.int32), encoded["attention_mask"].astype(np.int32)


def relative(ours, reference) -> float:
  reference = np.asarray(reference)
  return float(np.abs(np.asarray(ours) - reference).max() / np.abs(reference).max())


@pytest.mark.parametrize("side", ["right", "left"])
def test_last_pooling_equals_pytorch_on_a_bert_folder(side, minilm_dir):
  input_ids, mask = tokenized(minilm_dir, side)
  assert (mask == 0).any()
  model = load_pretrained(minilm_dir)
  ours = jax.jit(lambda p, i, m: bert.apply(p, i, m, config=model.config))(model.params, input_ids, mask)
  states = torch_states(minilm_dir, input_ids, mask)
  st_pooling = Pooling(model.config.hidden_size, pooling_mode="lasttoken")
  for n in (1, 3, 6):
    st = st_pooling({"token_embeddings": states[n], "attention_mask": torch.tensor(mask)})["sentence_embedding"]
    qwen = qwen3_last_token_pool(states[n], torch.tensor(mask))
    assert relative(ours.pooled(n, "last"), st.numpy()) < TOLERANCE, (side, n)
    assert relative(ours.pooled(n, "last"), qwen.numpy()) < TOLERANCE, (side, n)


def test_last_pooling_of_packed_rows_equals_pytorch(minilm_dir):
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
  ids = [np.asarray(tokenizer(t)["input_ids"], np.int32) for t in TEXTS]
  packed = packing.pack({"input_ids": ids}, {"input_ids": 0}, np.arange(len(TEXTS)), length=48, rows=2)
  assert (packed["segment_ids"][:, :, None] == np.arange(len(TEXTS))).any(axis=1).sum() == len(TEXTS)
  model = load_pretrained(minilm_dir)
  ours = bert.apply(model.params, packed["input_ids"], packed["attention_mask"], config=model.config,
                    segment_ids=packed["segment_ids"], position_ids=packed["position_ids"], num_texts=len(TEXTS))
  input_ids, mask = tokenized(minilm_dir, "right")
  states = torch_states(minilm_dir, input_ids, mask)
  for n in (2, 6):
    reference = qwen3_last_token_pool(states[n], torch.tensor(mask)).numpy()
    assert relative(ours.pooled(n, "last"), reference) < TOLERANCE, n


def test_every_kind_is_a_choice_everywhere():
  from starbucks_jax.hf import load, save
  for kind in pooling.POOLINGS.values():
    flags = save._st_pooling_flags(kind.name)
    assert [k for k, v in flags.items() if v] == [kind.st_flag]
    assert load._pooling_from_st_config(flags) == kind.name
    assert load._pooling_from_st_config({"pooling_mode": kind.st_mode}) == kind.name
    Pooling(8, pooling_mode=kind.st_mode)  # a mode sentence-transformers knows
  with pytest.raises(Exception, match="pooling must be one of cls, mean, last"):
    pooling.pooling_kind("max")
