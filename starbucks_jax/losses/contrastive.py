"""Loss families for Starbucks training, as pure float32 jnp functions of embeddings and scores.

- `similarity_scores`: the [queries, docs] logits, cosine x scale (sentence-transformers' MNRL and
  CoSENT, scale 20) or dot / temperature (Tevatron, temperature 1, no normalisation).
- `mnrl_loss`: in-batch-negative cross-entropy (MultipleNegativesRankingLoss / Tevatron's loss).
- `cosent_loss`: sentence-transformers' CoSENTLoss on pairwise scores and graded labels.
- `score_kl`: KL from the full-size model's score distribution to a sub-model's, teacher detached:
  the Starbucks paper's retrieval formulation (ielab/Starbucks `retrieval/modeling.py`).
- `embedding_kl`: KL between softmaxes over embedding coordinates, teacher NOT detached: the
  Starbucks paper's sentence-transformers (STS) formulation (ielab/Starbucks `sts/starbucks_loss.py`).

Matrix products run at `Precision.HIGHEST`: on TPU the default would round float32 operands to
bfloat16, and the losses are cheap next to the encoder, so exact float32 costs nothing that matters.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from starbucks_jax.errors import StarbucksError
from starbucks_jax.losses.negatives import mask_scores
from starbucks_jax.model.pooling import SIMILARITIES, l2_normalize


def similarity_scores(queries: jnp.ndarray, docs: jnp.ndarray, *, similarity: str, scale: float = 20.0,
                      temperature: float = 1.0) -> jnp.ndarray:
  """Every query scored against every doc: [Q, d] x [D, d] -> [Q, D] float32 logits.

  Args:
    queries: [Q, d] query embeddings.
    docs: [D, d] document embeddings.
    similarity: "cosine" (scale * cos, as sentence-transformers) or "dot" (q . d / temperature,
      as Tevatron; the embeddings are used as given, normalise them first if wanted).
    scale: multiplies the cosine; unused for "dot".
    temperature: divides the dot product; unused for "cosine".
  """
  queries = queries.astype(jnp.float32)
  docs = docs.astype(jnp.float32)
  if similarity == "cosine":
    queries, docs = l2_normalize(queries), l2_normalize(docs)
    factor = scale
  elif similarity == "dot":
    factor = 1.0 / temperature
  else:
    raise StarbucksError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
  scores = jnp.matmul(queries, docs.T, precision=jax.lax.Precision.HIGHEST)
  return scores * factor


def mnrl_loss(scores: jnp.ndarray, group_size: int) -> jnp.ndarray:
  """Mean cross-entropy of each query over all docs of the batch; query i's positive is doc i * G.

  Docs are laid out query-major: doc i*G is query i's positive, docs i*G+1 .. i*G+G-1 its hard
  negatives, and every other doc is an in-batch negative. (sentence-transformers lays its docs out
  column-major instead; the cross-entropy does not depend on the order of the columns.)

  Args:
    scores: [Q, Q * G] logits.
    group_size: G, docs per query (1 for pairs, 2 for triplets).
  """
  num_queries, num_docs = scores.shape
  if num_docs != num_queries * group_size:
    raise StarbucksError(f"mnrl_loss needs [Q, Q * group_size] scores; got {scores.shape} with group_size "
                         f"{group_size}")
  scores = scores.astype(jnp.float32)
  positive = scores[jnp.arange(num_queries), jnp.arange(num_queries) * group_size]
  return jnp.mean(jax.nn.logsumexp(scores, axis=1) - positive)


def cosent_loss(scores: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """sentence-transformers' CoSENTLoss: log(1 + sum over label_i > label_j of exp(s_j - s_i)).

  Args:
    scores: [B] pairwise scores, e.g. scale * cos(sentence1_i, sentence2_i).
    labels: [B] graded similarity labels; only their order matters.
  """
  scores = scores.astype(jnp.float32)
  labels = labels.astype(jnp.float32)
  if scores.shape != labels.shape or scores.ndim != 1:
    raise StarbucksError(f"cosent_loss needs scores and labels of the same shape [B]; got {scores.shape} "
                         f"and {labels.shape}")
  differences = scores[None, :] - scores[:, None]  # [i, j] = s_j - s_i
  ordered = labels[:, None] > labels[None, :]
  # Pairs that do not satisfy label_i > label_j drop out as exp(-inf) = 0; the leading 0 is the "1 +".
  terms = jnp.where(ordered, differences, -jnp.inf).reshape(-1)
  return jax.nn.logsumexp(jnp.concatenate([jnp.zeros((1,), jnp.float32), terms]))


def _kl_rows(student_logits: jnp.ndarray, teacher_logits: jnp.ndarray, mask: Optional[jnp.ndarray] = None
             ) -> jnp.ndarray:
  """KL(softmax(teacher) || softmax(student)) of each row, summed over the last axis; entries where `mask`
  is True leave both distributions (`negatives.py`)."""
  if mask is not None:
    teacher_log_probs = jax.nn.log_softmax(mask_scores(teacher_logits, mask), axis=-1)
    student_log_probs = jax.nn.log_softmax(mask_scores(student_logits, mask), axis=-1)
    # -inf - -inf is NaN: a masked entry's term is 0 (its probability is), and where() sends it no gradient.
    differences = jnp.where(mask, 0.0, teacher_log_probs - student_log_probs)
    return jnp.sum(jnp.exp(teacher_log_probs) * differences, axis=-1)
  teacher_log_probs = jax.nn.log_softmax(teacher_logits, axis=-1)
  student_log_probs = jax.nn.log_softmax(student_logits, axis=-1)
  return jnp.sum(jnp.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs), axis=-1)


def score_kl(student_scores: jnp.ndarray, teacher_scores: jnp.ndarray, temperature: float = 1.0,
             mask: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """Mean over queries of KL(softmax(teacher / tau) || softmax(student / tau)), teacher detached.

  Equals torch's `F.kl_div(log_softmax(s / tau), softmax(t.detach() / tau), reduction="batchmean")`,
  the Starbucks retrieval formulation: sub-models learn the full model's score distribution over the
  batch's docs, and no gradient reaches the full model through this term.

  Args:
    student_scores: [Q, D] a sub-model's logits.
    teacher_scores: [Q, D] the full model's logits.
    temperature: tau, divides both.
    mask: bool [Q, D], candidates taken out of both distributions (clean negatives), or None.
  """
  teacher = jax.lax.stop_gradient(teacher_scores.astype(jnp.float32)) / temperature
  student = student_scores.astype(jnp.float32) / temperature
  return jnp.mean(_kl_rows(student, teacher, mask))


def embedding_kl(student_emb: jnp.ndarray, teacher_emb: jnp.ndarray) -> jnp.ndarray:
  """Mean over rows of KL(softmax(teacher) || softmax(student)) over embedding coordinates.

  Equals torch's `F.kl_div(F.log_softmax(student, -1), F.softmax(teacher, -1), reduction="batchmean")`
  as the Starbucks STS code uses it: the teacher is NOT detached, so the full model also moves
  towards the sub-model. Callers scale it (by 0.3 in the paper's STS setup) and, where a detached
  teacher is wanted, pass `jax.lax.stop_gradient(teacher_emb)`.

  Args:
    student_emb: [N, d] sub-model embeddings.
    teacher_emb: [N, d] full-model embeddings, cut to the same d.
  """
  return jnp.mean(_kl_rows(student_emb.astype(jnp.float32), teacher_emb.astype(jnp.float32)))
