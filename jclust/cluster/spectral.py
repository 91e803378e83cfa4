"""Spectral clustering in jax.numpy on a k-nearest-neighbour graph (Ng, Jordan and Weiss, 2002).

The graph is the [N, k] neighbour/weight pair of :func:`jclust.cluster.graph.knn`, never an N x N
matrix: Gaussian weights w_ij = exp(-d_ij^2 / sigma^2) for the k nearest neighbours j of i, with
sigma^2 the median squared distance of a point to its k-th neighbour; symmetrised as
S = (W + W^T) / 2. The leading eigenvectors of the normalised affinity A = D^-1/2 S D^-1/2
(D = diag(S 1)) come from LOBPCG (``jax.experimental.sparse.linalg.lobpcg_standard``) with a
matrix-free product, or from a dense ``eigh`` for small N; their rows, L2-normalised, are
clustered by k-means.

On a pretrained autoencoder's embedding this is the manifold step that N2D (McConville et al.,
2020) found to matter: k-means sees the data's neighbourhood structure instead of its raw
geometry (BENCHMARKS.md, DEC).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental.sparse import linalg as sparse_linalg

from jclust.cluster import graph
from jclust.cluster.graph import Array
from jclust.cluster.kmeans import KMeansOutput, _as_data, _check_k, kmeans
from jclust.cluster.norms import l2_normalize
from jclust.precision import float_dtype

# Below this many points the normalised affinity is materialised and diagonalised exactly.
DENSE_MAX_POINTS = 2048


class SpectralOutput(NamedTuple):
    """Result of :func:`spectral_clustering`.

    Attributes:
      labels: [N] int32 cluster of each point.
      embedding: [N, k] float32, rows of the k leading eigenvectors of A, L2-normalised.
      eigenvalues: [k] float32, the k largest eigenvalues of A (at most 1), descending.
      residual: [] float32, max over the eigenpairs of ||A v - lambda v|| (v of unit norm).
      kmeans: the KMeansOutput of the k-means on ``embedding``.
    """
    labels: jax.Array
    embedding: jax.Array
    eigenvalues: jax.Array
    residual: jax.Array
    kmeans: KMeansOutput


class KNNAffinity(NamedTuple):
    """The directed Gaussian k-NN graph W (row i holds i's k nearest neighbours).

    Attributes:
      indices: [N, k] int32 neighbour indices.
      weights: [N, k] float32, exp(-d_ij^2 / sigma2).
      sigma2: [] float32, median over i of the squared distance to i's k-th neighbour.
    """
    indices: jax.Array
    weights: jax.Array
    sigma2: jax.Array


def knn_affinity(x: Array, num_neighbours: int, *, chunk_size: int = 1024) -> KNNAffinity:
    """Gaussian weights on the k nearest neighbours (Euclidean) of every point.

    Args:
      x: [N, D] float32 (numpy or jax).
      num_neighbours: k, 1 <= k < N.
      chunk_size: rows whose [chunk, N] distances the neighbour search holds at once.

    Returns:
      KNNAffinity(indices [N, k] int32, weights [N, k] float32, sigma2 [] float32).
    """
    nearest = graph.knn(x, num_neighbours, chunk_size=chunk_size)
    sigma2 = jnp.median(nearest.sq_distances[:, -1])
    # All points identical: every distance is 0 and every weight 1.
    sigma2 = jnp.where(sigma2 > 0, sigma2, 1.0)
    return KNNAffinity(indices=nearest.indices, weights=jnp.exp(-nearest.sq_distances / sigma2),
                       sigma2=sigma2)


def _degrees(affinity: KNNAffinity) -> jax.Array:
    n = affinity.indices.shape[0]
    col_sums = jnp.zeros((n,), float_dtype()).at[affinity.indices.ravel()].add(
        affinity.weights.ravel())
    return 0.5 * (affinity.weights.sum(axis=1) + col_sums)


def normalized_affinity(affinity: KNNAffinity) -> Callable[[jax.Array], jax.Array]:
    """The product v -> A v with A = D^-1/2 S D^-1/2, S = (W + W^T)/2, never forming A.

    Args:
      affinity: the k-NN graph W.

    Returns:
      A function from [N, m] to [N, m].
    """
    indices, weights = affinity.indices, affinity.weights
    n, k = indices.shape
    # A point whose weights all underflowed (a far outlier) has degree 0: it gets a zero row.
    degrees = _degrees(affinity)
    inv_sqrt = jnp.where(degrees > 0, jax.lax.rsqrt(jnp.maximum(degrees, 1e-30)), 0.0)

    def matvec(v):
        v = v * inv_sqrt[:, None]
        wv = jnp.einsum("nk,nkm->nm", weights, v[indices], precision=jax.lax.Precision.HIGHEST)
        contributions = (weights[:, :, None] * v[:, None, :]).reshape(n * k, -1)
        wtv = jnp.zeros_like(v).at[indices.ravel()].add(contributions)
        return 0.5 * (wv + wtv) * inv_sqrt[:, None]

    return matvec


def dense_normalized_affinity(affinity: KNNAffinity) -> jax.Array:
    """A = D^-1/2 S D^-1/2 as an [N, N] matrix (small N only; tests and the exact path).

    Args:
      affinity: the k-NN graph W ([N, k] indices and weights).

    Returns:
      [N, N] float32, symmetric.
    """
    n = affinity.indices.shape[0]
    rows = jnp.repeat(jnp.arange(n), affinity.indices.shape[1])
    w = jnp.zeros((n, n), float_dtype()).at[rows, affinity.indices.ravel()].add(
        affinity.weights.ravel())
    s = 0.5 * (w + w.T)
    degrees = s.sum(axis=1)
    inv_sqrt = jnp.where(degrees > 0, jax.lax.rsqrt(jnp.maximum(degrees, 1e-30)), 0.0)
    return s * inv_sqrt[:, None] * inv_sqrt[None, :]


@functools.partial(jax.jit, static_argnames=("dim", "max_iter"))
def _lobpcg(indices, weights, sigma2, key, *, dim, max_iter):
    matvec = normalized_affinity(KNNAffinity(indices, weights, sigma2))
    start = jax.random.normal(key, (indices.shape[0], dim), float_dtype())
    # tol=0: run all max_iter iterations. The default tolerance scales with N and, at N = 70,000
    # in float32, accepts the random start after a few iterations.
    values, vectors, _ = sparse_linalg.lobpcg_standard(matvec, start, m=max_iter, tol=0.0)
    residual = jnp.linalg.norm(matvec(vectors) - vectors * values[None, :], axis=0).max()
    return values, vectors, residual


@functools.partial(jax.jit, static_argnames=("dim",))
def _dense_eigh(indices, weights, sigma2, *, dim):
    a = dense_normalized_affinity(KNNAffinity(indices, weights, sigma2))
    values, vectors = jnp.linalg.eigh(a)
    values, vectors = values[::-1][:dim], vectors[:, ::-1][:, :dim]
    residual = jnp.linalg.norm(a @ vectors - vectors * values[None, :], axis=0).max()
    return values, vectors, residual


def spectral_embedding(x: Array, dim: int, *, key: jax.Array, num_neighbours: int = 10,
                       max_iter: int = 100, chunk_size: int = 1024,
                       dense_max_points: int = DENSE_MAX_POINTS
                       ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The ``dim`` leading eigenvectors of the normalised k-NN affinity of ``x``.

    Args:
      x: [N, D] float32 (numpy or jax).
      dim: number of eigenvectors, at most N; with the iterative solver 5 * dim < N.
      key: PRNG key of LOBPCG's random start.
      num_neighbours: k of the k-NN graph.
      max_iter: LOBPCG iterations (all are run).
      chunk_size: rows per block of the neighbour search.
      dense_max_points: up to this N, A is formed and diagonalised exactly instead.

    Returns:
      (eigenvectors [N, dim] float32 with unit columns, eigenvalues [dim] float32 descending,
      residual [] float32).
    """
    x = _as_data(x)
    n = x.shape[0]
    if not 1 <= dim <= n:
        raise ValueError(f"dim={dim} eigenvectors need 1 <= dim <= N = {n}")
    if not 1 <= num_neighbours < n:
        raise ValueError(f"num_neighbours={num_neighbours} needs 1 <= num_neighbours < N = {n}")
    affinity = knn_affinity(x, num_neighbours, chunk_size=chunk_size)
    if n <= dense_max_points:
        values, vectors, residual = _dense_eigh(*affinity, dim=dim)
    else:
        if 5 * dim >= n:
            raise ValueError(f"LOBPCG needs 5 * dim < N; got dim={dim}, N={n}")
        values, vectors, residual = _lobpcg(*affinity, key, dim=dim, max_iter=max_iter)
    return vectors, values, residual


def spectral_clustering(x: Array, k: int, *, key: jax.Array, num_neighbours: int = 10,
                        n_init: int = 10, max_iter: int = 300, eig_iter: int = 100,
                        chunk_size: int = 1024,
                        dense_max_points: int = DENSE_MAX_POINTS) -> SpectralOutput:
    """Spectral clustering (Ng-Jordan-Weiss) of ``x`` into k clusters.

    Args:
      x: [N, D] float32 points (numpy or jax).
      k: number of clusters (and of eigenvectors), 1 <= k <= N.
      key: PRNG key (LOBPCG's start and the k-means restarts).
      num_neighbours: k of the k-NN graph.
      n_init, max_iter: k-means restarts (lowest inertia kept) and Lloyd iterations.
      eig_iter: LOBPCG iterations.
      chunk_size: rows per block of the neighbour search.
      dense_max_points: up to this N the eigenvectors come from a dense ``eigh``.

    Returns:
      SpectralOutput(labels [N] int32, embedding [N, k] float32, eigenvalues [k] float32,
      residual [] float32, kmeans).
    """
    x = _as_data(x)
    _check_k(k, x.shape[0])
    eig_key, km_key = jax.random.split(key)
    vectors, values, residual = spectral_embedding(
        x, k, key=eig_key, num_neighbours=num_neighbours, max_iter=eig_iter,
        chunk_size=chunk_size, dense_max_points=dense_max_points)
    embedding = l2_normalize(vectors)
    km = kmeans(embedding, k, key=km_key, n_init=n_init, max_iter=max_iter)
    return SpectralOutput(labels=km.labels, embedding=embedding, eigenvalues=values,
                          residual=residual, kmeans=km)
