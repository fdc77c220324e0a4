"""The PyTorch peers of bench/ compute the same losses as ours, so the benchmarks compare the same work.

Dropout off (both deterministic), the same weights from one Hugging Face folder, the same token ids.
"""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import torch_peers  # noqa: E402
from starbucks_jax.hf.load import load_pretrained  # noqa: E402
from starbucks_jax.losses.smae import SmaeSpec, init_decoder_params, smae_loss  # noqa: E402
from starbucks_jax.losses.srl import srl_loss  # noqa: E402
from starbucks_jax.losses.srl_spec import SrlLossSpec  # noqa: E402
from starbucks_jax.training.tasks.srl import SrlStepSettings  # noqa: E402

PAIRS = ((1, 8), (2, 16), (4, 32))


@pytest.fixture(scope="module")
def folder(tmp_path_factory, minilm_dir):
  return torch_peers.random_bert_folder(hidden=32, layers=4, heads=4, intermediate=64, tokenizer_dir=str(minilm_dir),
                                        seed=3, folder=str(tmp_path_factory.mktemp("peer_bert")))


def ids(rng, rows, length):
  x = rng.integers(1000, 29000, (rows, length)).astype(np.int32)
  x[:, 0] = 101
  return x


def test_starbucks_style_loss_equals_ours(folder):
  queries, group, length = 6, 2, 12
  rng = np.random.default_rng(0)
  q, p = ids(rng, queries, length), ids(rng, queries * group, length)
  mask_q, mask_p = np.ones_like(q), np.ones_like(p)
  mask_p[1, 7:] = 0  # one padded passage: pooling must respect the mask on both sides
  p[1, 7:] = 0

  model = load_pretrained(folder)
  spec = SrlLossSpec(mode="starbucks", num_model_layers=4, hidden_size=32, pairs=PAIRS, group_size=group)
  no_dropout = model.config.replace(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  settings = SrlStepSettings(model_config=no_dropout, spec=spec, pooling="mean")
  batch = {"query_input_ids": q, "query_attention_mask": mask_q, "passage_input_ids": p,
           "passage_attention_mask": mask_p}
  ours = float(settings.loss(model.params, batch, jax.random.key(0))[0])

  st = torch_peers.sentence_transformer(folder, pooling="mean").eval()
  loss = torch_peers.StarbucksStyleLoss(st, PAIRS)
  columns = [torch_peers.features_from_ids(q, mask_q)]
  for k in range(group):
    columns.append(torch_peers.features_from_ids(p.reshape(queries, group, -1)[:, k],
                                                 mask_p.reshape(queries, group, -1)[:, k]))
  with torch.no_grad():
    theirs = float(loss(columns, None))
  np.testing.assert_allclose(ours, theirs, rtol=2e-5)


def test_official_smae_equals_ours(folder):
  rows, length = 4, 16
  rng = np.random.default_rng(1)
  input_ids = ids(rng, rows, length)
  mask = np.ones_like(input_ids)
  mask[2, 11:] = 0
  labels = np.where(rng.random((rows, length)) < 0.2, input_ids, -100).astype(np.int32)
  labels[:, 0] = -100
  labels[mask == 0] = -100
  decoder_labels = np.where(rng.random((rows, length)) < 0.4, input_ids, -100).astype(np.int32)
  decoder_labels[:, 0] = -100
  decoder_labels[mask == 0] = -100
  batch = {"input_ids": input_ids, "attention_mask": mask, "labels": labels,
           "decoder_input_ids": np.where(decoder_labels != -100, 103, input_ids).astype(np.int32),
           "decoder_labels": decoder_labels}
  input_ids = np.where(labels != -100, 103, input_ids).astype(np.int32)
  batch["input_ids"] = input_ids

  model = load_pretrained(folder)
  params = dict(model.params, mae_decoder=init_decoder_params(model.params["encoder"], model.config))
  spec = SmaeSpec(pairs=PAIRS, num_model_layers=4, hidden_size=32, encoder_mask_rate=None)
  ours = float(smae_loss(params, batch, spec=spec, model_config=model.config)[0])

  official = torch_peers.OfficialSmae(folder, PAIRS).eval()
  with torch.no_grad():
    theirs = float(official(**{k: torch.as_tensor(v).long() for k, v in batch.items()}))
  np.testing.assert_allclose(ours, theirs, rtol=2e-5)


def test_einsum_retrieval_loss_equals_ours():
  pairs = ((2, 8), (4, 16), (6, 24))
  rng = np.random.default_rng(2)
  q = rng.standard_normal((3, 5, 24)).astype(np.float32)
  p = rng.standard_normal((3, 20, 24)).astype(np.float32)
  spec = SrlLossSpec(mode="starbucks", num_model_layers=6, hidden_size=24, pairs=pairs, similarity="dot",
                     group_size=4)
  query = {n: jnp.asarray(q[k]) for k, (n, _) in enumerate(pairs)}
  passage = {n: jnp.asarray(p[k]) for k, (n, _) in enumerate(pairs)}
  ours = float(srl_loss(query, passage, None, spec, jax.random.key(0))[0])
  theirs = float(torch_peers.einsum_retrieval_loss(torch.tensor(q), torch.tensor(p), [d for _, d in pairs]))
  np.testing.assert_allclose(ours, theirs, rtol=1e-5)
