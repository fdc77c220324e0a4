"""Our Flax BERT against transformers' PyTorch BertModel: every layer, CLS and mean pooling, with padding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from starbucks_jax.hf.load import load_pretrained
from starbucks_jax.model import bert
from tests.helpers import padded_batch

TOLERANCE = 1e-4  # max abs, float32

TEXTS = ["A man is playing a guitar.", "Short.",
         "A very long sentence about a dog that runs through the park, chasing a ball and barking loudly.",
         "Two women sit on a bench."]


def torch_reference(model_dir, input_ids, attention_mask, token_type_ids):
  model = transformers.BertModel.from_pretrained(str(model_dir)).eval()
  with torch.no_grad():
    out = model(input_ids=torch.tensor(input_ids, dtype=torch.long),
                attention_mask=torch.tensor(attention_mask, dtype=torch.long),
                token_type_ids=torch.tensor(token_type_ids, dtype=torch.long), output_hidden_states=True)
  return [h.numpy() for h in out.hidden_states]


def numpy_mean(hidden, mask):
  m = mask[..., None].astype(np.float64)
  return (hidden * m).sum(1) / m.sum(1)


@pytest.mark.parametrize("which", ["tiny", "minilm"])
def test_every_layer_matches_transformers(which, tiny_dir, minilm_dir):
  model_dir = tiny_dir if which == "tiny" else minilm_dir
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
  input_ids, mask, token_types = padded_batch(tokenizer, TEXTS)
  assert (mask == 0).any(), "the batch must contain padding"
  token_types[1, 2:] = 1  # exercise the token-type table too
  model = load_pretrained(model_dir)
  ours = jax.jit(lambda p, i, m, t: bert.apply(p, i, m, t, config=model.config))(
      model.params, input_ids, mask, token_types)
  reference = torch_reference(model_dir, input_ids, mask, token_types)

  assert len(ours.hidden_states) == len(reference) == model.config.num_hidden_layers + 1
  valid = mask.astype(bool)
  for n, (h_ours, h_ref) in enumerate(zip(ours.hidden_states, reference)):
    # Padded positions are garbage in both implementations; only real tokens have to agree.
    err = np.abs(np.asarray(h_ours) - h_ref)[valid].max()
    assert err < TOLERANCE, f"{which} layer {n}: hidden max abs error {err:.2e}"
    cls_err = np.abs(np.asarray(ours.cls[n]) - h_ref[:, 0]).max()
    mean_err = np.abs(np.asarray(ours.mean[n]) - numpy_mean(h_ref, mask)).max()
    assert cls_err < TOLERANCE and mean_err < TOLERANCE, f"{which} layer {n}: cls {cls_err:.2e} mean {mean_err:.2e}"


def test_early_exit_needs_no_upper_layers(tiny_dir):
  model = load_pretrained(tiny_dir)
  ids = np.array([[101, 2023, 2003, 102, 0]], np.int32)
  mask = (ids > 0).astype(np.int32)
  full = bert.apply(model.params, ids, mask, config=model.config)
  # Remove layers 2 and 3 entirely: a 2-layer pass must not touch them.
  lower = {k: v for k, v in model.params["encoder"].items() if k not in ("layer_2", "layer_3")}
  early = bert.apply(lower, ids, mask, config=model.config, num_layers=2)
  assert len(early.hidden_states) == 3
  for n in range(3):
    np.testing.assert_array_equal(np.asarray(early.hidden_states[n]), np.asarray(full.hidden_states[n]))
  # And the compiled cost grows with the layers kept.
  flops = lambda n: jax.jit(lambda p: bert.apply(p, ids, mask, config=model.config, num_layers=n).mean[-1]) \
      .lower(model.params).compile().cost_analysis()["flops"]
  assert flops(1) < flops(2) < flops(4)


def test_bfloat16_compute_keeps_float32_params_and_stays_close(minilm_dir):
  model = load_pretrained(minilm_dir)
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
  ids, mask, types = padded_batch(tokenizer, TEXTS)
  f32 = bert.apply(model.params, ids, mask, types, config=model.config)
  bf16 = bert.apply(model.params, ids, mask, types, config=model.config, dtype=jnp.bfloat16)
  assert bf16.hidden_states[-1].dtype == jnp.bfloat16 and bf16.mean[-1].dtype == jnp.float32
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(model.params))
  cos = lambda a, b: np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
  assert cos(np.asarray(f32.mean[-1]), np.asarray(bf16.mean[-1])).min() > 0.99


def test_dropout_is_active_only_when_asked(tiny_dir):
  model = load_pretrained(tiny_dir)
  ids = np.array([[101, 2023, 2003, 102]], np.int32)
  det = bert.apply(model.params, ids, config=model.config).mean[-1]
  drop = lambda seed: bert.apply(model.params, ids, config=model.config, deterministic=False,
                                 dropout_rng=jax.random.key(seed)).mean[-1]
  assert not np.allclose(det, drop(0))
  np.testing.assert_array_equal(drop(1), drop(1))
  no_dropout = model.config.replace(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  np.testing.assert_allclose(bert.apply(model.params, ids, config=no_dropout, deterministic=False,
                                        dropout_rng=jax.random.key(0)).mean[-1], det, atol=1e-6)
