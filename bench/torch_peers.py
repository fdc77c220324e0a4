"""The PyTorch peers of our training steps: the same work, the way the published PyTorch code does it.

Written for these benchmarks from the descriptions of the official Starbucks code (ielab/Starbucks) and of
sentence-transformers' losses; versions pinned in setup.py's "bench" extra (torch 2.13.0,
transformers 5.24.0, sentence-transformers 6.2.0).

- `StarbucksStyleLoss`: the Starbucks SRL loss built from sentence-transformers parts, as the official
  STS code does: forward hooks on the BERT layers catch every pair's hidden states during the one
  SentenceTransformer forward pass, ST's Pooling pools them, ST's MultipleNegativesRankingLoss scores
  each (layer, dim) pair, and a KL term pulls each pair's in-batch score distribution towards the full
  pair's (teacher detached), as the paper's retrieval code does. Same loss as our
  `SrlLossSpec(mode="starbucks", kl="scores", similarity="cosine")`.
- `st_matryoshka2d(model, dims)`: sentence-transformers' own `Matryoshka2dLoss` around MNRL (2DMSE).
- `OfficialSmae`: the official SMAE formulation: transformers' `BertForMaskedLM` whose head transform
  reads the first d input columns, full-vocabulary logits at every position for every pair, plus the
  one-layer MAE decoder fed the pair's transformed CLS vector.
- `einsum_retrieval_loss`: the official retrieval formulation: one [pairs, queries, docs, hidden]
  einsum of every pair's elementwise products, summed over the first d coordinates per pair.
- `train_step(model, loss_fn, optimizer)`: forward, backward, AdamW, zero_grad.
"""

from __future__ import annotations

import copy
import os
import tempfile

import torch
import torch.nn.functional as F
from torch import nn

def random_bert_folder(hidden: int = 768, layers: int = 12, heads: int = 12, intermediate: int = 3072,
                       tokenizer_dir: str | None = None, seed: int = 0, folder: str | None = None) -> str:
  """A Hugging Face folder with a randomly initialised BertForMaskedLM (BERT-base by default) and a tokenizer.

  Made once per shape and seed under the temporary directory (or in `folder`) and reused: a benchmark's
  memory run, in its own process, loads the very same weights.
  """
  import transformers
  folder = folder or os.path.join(tempfile.gettempdir(),
                                 f"starbucks_bench_bert_{layers}x{hidden}x{heads}x{intermediate}_s{seed}")
  if os.path.isfile(os.path.join(folder, "done")):
    return folder
  torch.manual_seed(seed)
  config = transformers.BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                   intermediate_size=intermediate)
  transformers.BertForMaskedLM(config).save_pretrained(folder)
  if tokenizer_dir:
    transformers.AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
  open(os.path.join(folder, "done"), "w").close()
  return folder


def sentence_transformer(folder: str, pooling: str = "mean"):
  from sentence_transformers import SentenceTransformer
  from sentence_transformers.base.modules import Transformer
  from sentence_transformers.sentence_transformer.modules import Pooling
  transformer = Transformer(folder)
  dim = transformer.auto_model.config.hidden_size
  return SentenceTransformer(modules=[transformer, Pooling(dim, pooling)], device="cpu")


def features_from_ids(input_ids, attention_mask) -> dict:
  """ST features from fixed token ids (no tokenizer: every variant sees the same tokens)."""
  ids = torch.as_tensor(input_ids).long()
  return {"input_ids": ids, "attention_mask": torch.as_tensor(attention_mask).long(),
          "token_type_ids": torch.zeros_like(ids)}


class StarbucksStyleLoss(nn.Module):
  """Starbucks SRL from sentence-transformers parts: hooks catch each pair's layer in the one forward pass."""

  def __init__(self, model, pairs, scale: float = 20.0, kl_weight: float = 1.0):
    super().__init__()
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    self.model = model
    self.pairs = [tuple(p) for p in pairs]
    self.scale = scale
    self.kl_weight = kl_weight
    self.mnrl = MultipleNegativesRankingLoss(model, scale=scale)
    self.pooling = model[1]
    self.caught: dict[int, torch.Tensor] = {}
    layers = model[0].auto_model.encoder.layer
    for n in sorted({n for n, _ in self.pairs}):
      layers[n - 1].register_forward_hook(self._catch(n))

  def _catch(self, n: int):
    def hook(module, inputs, output):
      self.caught[n] = output[0] if isinstance(output, tuple) else output
    return hook

  def forward(self, sentence_features, labels=None) -> torch.Tensor:
    pooled = []  # per column: {layer: [rows, hidden]}
    for features in sentence_features:
      self.caught = {}
      self.model(features)  # the full forward; the hooks keep each pair layer's token states
      mask = features["attention_mask"]
      pooled.append({n: self.pooling({"token_embeddings": h, "attention_mask": mask})["sentence_embedding"]
                     for n, h in self.caught.items()})
    total, teacher = 0.0, None
    for n, d in reversed(self.pairs):  # the full pair first: its scores teach the others
      embeddings = [column[n][:, :d] for column in pooled]
      total = total + self.mnrl.compute_loss_from_embeddings(embeddings, labels)
      scores = self.mnrl.similarity_fct(embeddings[0], torch.cat(embeddings[1:])) * self.scale
      if teacher is None:
        teacher = scores.detach()
      else:
        total = total + self.kl_weight * F.kl_div(F.log_softmax(scores, dim=-1), F.softmax(teacher, dim=-1),
                                                  reduction="batchmean")
    return total


def st_matryoshka2d(model, dims, scale: float = 20.0):
  """sentence-transformers' Matryoshka2dLoss(MNRL) with its defaults (one prior layer, one dim per step)."""
  from sentence_transformers.sentence_transformer.losses import Matryoshka2dLoss, MultipleNegativesRankingLoss
  return Matryoshka2dLoss(model, MultipleNegativesRankingLoss(model, scale=scale), list(dims))


class OfficialSmae(nn.Module):
  """SMAE as the official code computes it: full-vocabulary logits at every position, per pair."""

  def __init__(self, folder: str, pairs, decoder: bool = True, dropout: float = 0.1):
    super().__init__()
    import transformers
    self.mlm = transformers.BertForMaskedLM.from_pretrained(
        folder, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    self.pairs = [tuple(p) for p in pairs]
    self.vocab = self.mlm.config.vocab_size
    self.decoder_layer = copy.deepcopy(self.mlm.bert.encoder.layer[0]) if decoder else None

  def transform(self, hidden: torch.Tensor) -> torch.Tensor:
    """The head transform on the first d input columns of its dense layer (full bias), GELU, LayerNorm."""
    t = self.mlm.cls.predictions.transform
    h = F.linear(hidden, t.dense.weight[:, :hidden.shape[-1]], t.dense.bias)
    return t.LayerNorm(t.transform_act_fn(h))

  def logits(self, transformed: torch.Tensor) -> torch.Tensor:
    return self.mlm.cls.predictions.decoder(transformed)  # tied to the word embeddings, with the bias

  def forward(self, input_ids, attention_mask, labels, decoder_input_ids=None, decoder_labels=None):
    out = self.mlm.bert(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    cross_entropy = nn.CrossEntropyLoss()  # ignore_index -100
    bias = torch.zeros(attention_mask.shape, dtype=torch.float32)
    bias = bias.masked_fill(attention_mask == 0, torch.finfo(torch.float32).min)[:, None, None, :]
    total = 0.0
    for n, d in self.pairs:
      transformed = self.transform(out.hidden_states[n][:, :, :d])
      mlm = cross_entropy(self.logits(transformed).view(-1, self.vocab), labels.view(-1))
      if self.decoder_layer is None:
        total = total + mlm
        continue
      embedded = self.mlm.bert.embeddings(input_ids=decoder_input_ids)
      embedded = torch.cat([transformed[:, :1], embedded[:, 1:]], dim=1)  # the pair's CLS vector goes first
      decoded = self.decoder_layer(embedded, attention_mask=bias)
      decoded = decoded[0] if isinstance(decoded, tuple) else decoded
      mae = cross_entropy(self.logits(self.transform(decoded)).view(-1, self.vocab), decoder_labels.view(-1))
      total = total + (mlm + mae) / 2
    return total / len(self.pairs)


def einsum_retrieval_loss(q_reps: torch.Tensor, p_reps: torch.Tensor, dims, kl_weight: float = 1.0,
                          temperature: float = 1.0) -> torch.Tensor:
  """The official retrieval loss: q_reps [pairs, Q, H], p_reps [pairs, D, H], pair k cut to dims[k].

  All pairs' elementwise products are formed at once, [pairs, Q, D, H], and each pair sums its first
  d coordinates; cross-entropy on each pair's scores (positive of query i: doc i * D / Q) plus the KL
  to the full pair's detached scores.
  """
  products = torch.einsum("lqh,ldh->lqdh", q_reps, p_reps)
  queries, docs = q_reps.shape[1], p_reps.shape[1]
  target = torch.arange(queries) * (docs // queries)
  full = products[-1].sum(-1) / temperature
  total = F.cross_entropy(full, target)
  teacher = F.softmax(full.detach(), dim=1)
  for k, d in enumerate(dims[:-1]):
    scores = products[k, :, :, :d].sum(-1) / temperature
    total = total + F.cross_entropy(scores, target)
    total = total + kl_weight * F.kl_div(F.log_softmax(scores, dim=1), teacher, reduction="batchmean")
  return total


def train_step(loss_fn, optimizer, dtype: str = "float32") -> float:
  """One optimizer step of `loss_fn()`; returns the loss. bfloat16: the forward under CPU autocast, so the
  matmuls take bfloat16 operands (oneDNN's AVX512-BF16 path) while the weights and Adam stay float32."""
  optimizer.zero_grad(set_to_none=True)
  with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
    loss = loss_fn()
  loss.backward()
  optimizer.step()
  return float(loss.detach())


def adamw(parameters, lr: float = 1e-5):
  return torch.optim.AdamW([p for p in parameters if p.requires_grad], lr=lr, weight_decay=0.01)
