"""JULE's weighted triplet loss (Yang et al. 2016, eq. 10 as in the reference code's
``TripletEmbedding`` criterion and ``organize_samples``).

Within a batch, every ordered pair (a, p) of different samples in the same cluster is an
anchor-positive pair; each gets up to ``num_negatives`` distinct negatives drawn uniformly from the
batch's samples of other clusters. With L2-normalised embeddings x,

  L = (1/T) sum over the T triplets of max(0, gamma ||x_a - x_p||^2 - ||x_a - x_n||^2 + margin).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jclust.precision import RANDOM_DTYPE


def triplet_loss(embeddings: jax.Array, labels: jax.Array, key: jax.Array, *,
                 num_negatives: int = 20, gamma: float = 1.0,
                 margin: float = 0.2) -> tuple[jax.Array, jax.Array]:
    """Mean hinge over the batch's triplets.

    Args:
      embeddings: [B, D] (L2-normalised in JULE).
      labels: [B] int cluster of each sample.
      key: PRNG key choosing the negatives.
      num_negatives: negatives per anchor-positive pair (fewer if the batch has fewer).
      gamma: weight of the positive distance (reference code 1; the paper 2).
      margin: hinge margin (reference 0.2).

    Returns:
      (loss, number of triplets T); loss is 0 when the batch has no triplet.
    """
    b = embeddings.shape[0]
    sq = jnp.sum(embeddings ** 2, axis=1)
    d = jnp.maximum(sq[:, None] - 2.0 * embeddings @ embeddings.T + sq[None, :], 0.0)  # [B, B]
    same = labels[:, None] == labels[None, :]
    positive = same & ~jnp.eye(b, dtype=bool)  # [a, p]
    negative = ~same  # [a, n]
    # Distinct uniform negatives per (a, p): the num_negatives smallest of iid uniform scores
    # among the allowed n.
    scores = jax.random.uniform(key, (b, b, b), RANDOM_DTYPE)
    scores = jnp.where(negative[:, None, :], scores, jnp.inf)
    k = min(num_negatives, b)
    picked_scores, picked = jax.lax.top_k(-scores, k)  # [a, p, k]
    picked_ok = jnp.isfinite(picked_scores) & positive[:, :, None]
    d_an = jnp.take_along_axis(jnp.broadcast_to(d[:, None, :], (b, b, b)), picked, axis=2)
    hinge = jnp.maximum(gamma * d[:, :, None] - d_an + margin, 0.0)
    count = jnp.sum(picked_ok)
    loss = jnp.sum(jnp.where(picked_ok, hinge, 0.0)) / jnp.maximum(count, 1)
    return loss, count
