"""Clean in-batch negatives: which candidates of a query are not its negatives, and the scores without them.

With `data.clean_negatives` the batch carries an identity per text and each query's labelled positives'
(`data/text_ids.py`, read into `batch.SrlBatch`). For query i of a batch of B queries and G passages each
(passage i*G its positive), candidate passage j is a false negative when j != i*G and passage j's text is
a positive of query i's text: the text of i's own positive (another example's positive with the same
text, a hard negative equal to the positive, the same text twice), any other of i's labelled positives
(a Tevatron row lists several and trains with one of them: the others, wherever they appear in the batch,
as another example's positive, a hard negative or a filled group slot), or a positive or labelled positive
of any example k whose query has the same text as query i (then k's are i's query's too).

The loss takes such a candidate out of query i's softmax: its logit becomes -inf, so it adds nothing to
the log-sum-exp and gets no gradient, exactly as if the column were absent from row i (other rows, to
which it is a real negative, keep it). Where the mask applies:
- the contrastive objective (MNRL, and any registered objective of the [B, B*G] scores, e.g. a symmetric
  one: a passage's column masks the queries to which it is a positive) of every pair and schedule
  (starbucks, grid, separate, 2dmse and its monitor pairs);
- the starbucks / grid score KL toward the full model: the same candidates leave both the teacher's
  and the student's distributions (`contrastive.score_kl`), so they stay distributions over one set;
- not the embedding KLs (starbucks `kl="embeddings"`, 2dmse's KL): they are over a vector's coordinates,
  with no candidates; not CoSENT: scored pairs have no negatives, and `data.clean_negatives` is refused
  with it (a mixture's scored source does not take it from the data block).
The mask is computed on the whole (global) batch's ids inside the step, so it is the same whether the
batch is on one device or many, and under GradCache (the loss sees the whole batch's pooled vectors);
with `grad_accum_steps` each micro-batch masks among its own texts, as its negatives are its own.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def false_negatives(query_ids: jnp.ndarray, passage_ids: jnp.ndarray, group_size: int,
                    labelled_ids: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """bool [B, B*G]: [i, j] is True where passage j is a positive of query i's text but not its own positive.

  Args:
    query_ids: int32 [B], one identity per query.
    passage_ids: int32 [B*G], one per passage, query-major (passage i*G is query i's positive).
    group_size: G.
    labelled_ids: int32 [B, P], each query's labelled positives (padded with ids of its own), or None:
      the positive each query trains with is its only one.
  """
  num_queries, num_passages = query_ids.shape[0], passage_ids.shape[0]
  positive_ids = passage_ids[::group_size]                                    # [B]
  same_query = (query_ids[:, None] == query_ids[None, :]).astype(jnp.float32)  # [B, B]
  is_positive_text = positive_ids[:, None] == passage_ids[None, :]            # [k, j]
  if labelled_ids is not None:
    # Whether passage j's id is among k's labelled ones: a binary search of each sorted row, so the work
    # is [B, B*G] x log P, never a [B, P, B*G] comparison.
    rows = jnp.sort(labelled_ids, axis=1)                                     # [B, P]
    at = jax.vmap(lambda row: jnp.searchsorted(row, passage_ids))(rows)        # [B, B*G], in [0, P]
    found = jnp.take_along_axis(rows, jnp.minimum(at, rows.shape[1] - 1), axis=1) == passage_ids[None, :]
    is_positive_text = is_positive_text | found
  # Any k with query k's text = query i's and passage j's text = a positive of k: a product of 0/1 matrices,
  # exact at any matmul precision (0 and 1 are bfloat16 numbers; the sums are small integers).
  positive_of_query = jnp.matmul(same_query, is_positive_text.astype(jnp.float32)) > 0.5
  own = jnp.arange(num_passages)[None, :] == (jnp.arange(num_queries) * group_size)[:, None]
  return positive_of_query & ~own


def mask_scores(scores: jnp.ndarray, mask: Optional[jnp.ndarray]) -> jnp.ndarray:
  """`scores` with the masked candidates' logits at -inf (none masked: `scores` itself)."""
  return scores if mask is None else jnp.where(mask, -jnp.inf, scores)
