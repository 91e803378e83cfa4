"""Nearest-neighbour graphs in jax.numpy: k-NN search, JULE's sample affinity graph and its initial
over-clustering (connected components of the 1-NN graph).

Everything stays O(N k): the graph is a dense [N, k] pair of neighbour indices and weights, never an
N x N matrix; the search runs over row chunks so that the [chunk, N] distance block bounds memory.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp


class KNNOutput(NamedTuple):
    """k nearest neighbours of every row, nearest first.

    Attributes:
      indices: [N, k] int32 neighbour indices (the point itself excluded).
      sq_distances: [N, k] float32 squared Euclidean distances, ascending along each row.
    """
    indices: jax.Array
    sq_distances: jax.Array


class AffinityGraph(NamedTuple):
    """JULE's directed sample affinity graph (Yang et al. 2016, eq. 2).

    Attributes:
      indices: [N, k] int32, N_i: the k nearest neighbours of sample i.
      weights: [N, k] float32, W_ij = exp(-d_ij / sigma2) for j in N_i (0 elsewhere, implicitly).
      sigma2: [] float32, the mean of d_ij over all (i, j in N_i).
    """
    indices: jax.Array
    weights: jax.Array
    sigma2: jax.Array


@functools.partial(jax.jit, static_argnames=("k", "chunk"))
def _knn(x, *, k, chunk):
    n = x.shape[0]
    sq_norms = jnp.sum(x * x, axis=1)
    pad = -n % chunk
    rows = jnp.pad(jnp.arange(n), (0, pad)).reshape(-1, chunk)

    def one_chunk(row_ids):
        block = x[row_ids]
        d = sq_norms[row_ids, None] - 2.0 * block @ x.T + sq_norms[None, :]
        d = jnp.where(row_ids[:, None] == jnp.arange(n)[None, :], jnp.inf, d)  # not yourself
        neg, idx = jax.lax.top_k(-d, k)
        return idx.astype(jnp.int32), jnp.maximum(-neg, 0.0)

    indices, dists = jax.lax.map(one_chunk, rows)
    return indices.reshape(-1, k)[:n], dists.reshape(-1, k)[:n]


def knn(x, k: int, *, chunk_size: int = 1024) -> KNNOutput:
    """Exact k nearest neighbours (squared Euclidean), the point itself excluded.

    Args:
      x: [N, D] float.
      k: neighbours per point, 1 <= k < N.
      chunk_size: rows whose [chunk, N] distances are held at once.

    Returns:
      KNNOutput with indices [N, k] and squared distances [N, k], nearest first. Ties go to the
      lower index (``lax.top_k``).
    """
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 2:
        raise ValueError(f"x must be [N, D], got shape {x.shape}")
    n = x.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k={k} nearest neighbours need 1 <= k < N = {n}")
    indices, dists = _knn(x, k=k, chunk=min(chunk_size, n))
    return KNNOutput(indices=indices, sq_distances=dists)


def affinity_graph(features, k: int, *, chunk_size: int = 1024) -> AffinityGraph:
    """JULE's sample affinity graph on L2-normalised features.

    Args:
      features: [N, D]; rows are L2-normalised first (the reference's ``-normalize 1``).
      k: K_s, neighbours per sample (reference 20).
      chunk_size: see :func:`knn`.

    Returns:
      AffinityGraph: neighbours, W_ij = exp(-||x_i - x_j||^2 / sigma2), sigma2 = mean ||x_i - x_j||^2
      over the graph's edges.
    """
    x = jnp.asarray(features, jnp.float32)
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    out = knn(x, k, chunk_size=chunk_size)
    sigma2 = jnp.maximum(jnp.mean(out.sq_distances), 1e-12)
    return AffinityGraph(indices=out.indices, weights=jnp.exp(-out.sq_distances / sigma2),
                         sigma2=sigma2)


@jax.jit
def _components(nearest):
    n = nearest.shape[0]

    def spread(labels):
        # Each edge i - nearest[i] carries the smaller label both ways.
        labels = jnp.minimum(labels, labels[nearest])
        return labels.at[nearest].min(labels)

    def cond(carry):
        return carry[1]

    def body(carry):
        labels, _ = carry
        new = spread(labels)
        return new, jnp.any(new != labels)

    labels, _ = jax.lax.while_loop(cond, body, (jnp.arange(n, dtype=jnp.int32), jnp.array(True)))
    return labels


def nearest_neighbour_clusters(nearest) -> jax.Array:
    """JULE's initial over-clustering: connected components of the 1-NN graph.

    Every sample is joined to its nearest neighbour; each connected component is a cluster. (The
    reference follows 1-NN chains of at most 50 steps, which gives the same components unless a
    chain is longer; here components are exact.)

    Args:
      nearest: [N] int, the nearest neighbour of every sample (e.g. ``knn(x, 1).indices[:, 0]``).

    Returns:
      [N] int32 cluster labels 0..C-1, numbered in order of each cluster's smallest sample index.
    """
    nearest = jnp.asarray(nearest, jnp.int32)
    if nearest.ndim != 1:
        raise ValueError(f"nearest must be [N], got shape {nearest.shape}")
    roots = _components(nearest)  # smallest index of each component
    # Renumber roots to 0..C-1 in increasing order (a cumulative count of the roots).
    is_root = roots == jnp.arange(nearest.shape[0])
    return (jnp.cumsum(is_root) - 1)[roots].astype(jnp.int32)
