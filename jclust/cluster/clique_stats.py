"""Diagnostics of CliqueCNN's cliques: coverage, per-sample counts, intra- vs inter-clique
similarity and (with labels, for evaluation only) purity. Similarity is the dot product of
L2-normalised features; of views [N, V, D] (an image and its mirror), the first view's."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jclust.cluster.cliques import Cliques
from jclust.precision import float_dtype

Array = jax.Array | np.ndarray


class CliqueSimilarity(NamedTuple):
    """Mean similarities over pairs of clique members.

    Attributes:
      intra: [] mean s(a, b) over ordered pairs a != b of members of one clique.
      inter: [] mean s(a, b) over ordered pairs of members of two different cliques (a sample in
        several cliques counts once per clique).
    """
    intra: jax.Array
    inter: jax.Array


def clique_sample_counts(cliques: Cliques, num_samples: int) -> jax.Array:
    """[num_samples] int32: the number of cliques each sample belongs to."""
    members = jnp.asarray(cliques.members, jnp.int32).reshape(-1)
    return jnp.zeros(num_samples, jnp.int32).at[jnp.where(members >= 0, members, num_samples)].add(
        1, mode="drop")


def clique_coverage(cliques: Cliques, num_samples: int) -> jax.Array:
    """[] the fraction of the ``num_samples`` samples in at least one clique."""
    return jnp.mean(clique_sample_counts(cliques, num_samples) > 0)


@jax.jit
def _similarity(members, features):
    valid = members >= 0
    f = jnp.where(valid[..., None], features[jnp.maximum(members, 0)], 0.0)
    sums = jnp.sum(f, axis=1)  # [C, D]
    sizes = jnp.sum(valid, axis=1).astype(features.dtype)
    # Sums over pairs via the bilinear identity sum_{a in A, b in B} s(a, b) = S_A . S_B.
    within = jnp.sum(sums * sums)  # every clique with itself, self-pairs included
    self_pairs = jnp.sum(f * f)
    total = jnp.sum(sums, axis=0)
    intra = (within - self_pairs) / jnp.maximum(jnp.sum(sizes * (sizes - 1.0)), 1.0)
    inter = (jnp.dot(total, total) - within) / jnp.maximum(
        jnp.sum(sizes) ** 2 - jnp.sum(sizes * sizes), 1.0)
    return CliqueSimilarity(intra, inter)


def clique_similarity(cliques: Cliques, features: Array) -> CliqueSimilarity:
    """Mean intra- and inter-clique similarity (exact, in O(C W D) through the clique sums).

    Args:
      cliques: members [C, W] (-1 = empty).
      features: [N, D] float, rows L2-normalised (of views [N, V, D], the first view).

    Returns:
      CliqueSimilarity(intra, inter).
    """
    features = jnp.asarray(features, float_dtype())
    return _similarity(jnp.asarray(cliques.members, jnp.int32),
                       features[:, 0] if features.ndim == 3 else features)


def clique_purity(cliques: Cliques, labels: Array) -> jax.Array:
    """[C] the share of each clique's members that carry its most common label (NaN for an empty
    clique). Labels are for evaluation only.

    Args:
      cliques: members [C, W] (-1 = empty).
      labels: [N] int ground-truth classes.

    Returns:
      [C] float32 purities; ``jnp.nanmean`` of it is the mean clique purity.
    """
    members = jnp.asarray(cliques.members, jnp.int32)
    valid = members >= 0
    y = jnp.asarray(labels)[jnp.maximum(members, 0)]
    same = (y[:, :, None] == y[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    top = jnp.max(jnp.sum(same, axis=2), axis=1)
    sizes = jnp.sum(valid, axis=1)
    return jnp.where(sizes > 0, top / jnp.maximum(sizes, 1), jnp.nan).astype(jnp.float32)
