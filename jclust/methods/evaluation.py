"""The shared evaluation rule: spherical k-means with K = ``num_clusters`` on the whole data set's
features, optionally PCA-whitened first, fitted anew by the trainer before every evaluation.

It is DeepCluster's evaluation (whitened, L2-normalised features; Caron et al. 2018) and the
k-means probe of DeepCluster-v2, SwAV and ODC, written once: a method whose own clustering is not a
K-way assignment (pseudo-labels over 100 classes, memories, a queue) hands it to the trainer as
its ``Method.evaluation``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jclust import cluster as jcluster
from jclust.cluster import l2_normalize
from jclust.methods.base import Evaluation
from jclust.precision import float_dtype

_PRECISION = jax.lax.Precision.HIGHEST  # full float32 similarities also on GPU/TPU


class KMeansProbeState(NamedTuple):
    """What :func:`kmeans_probe` fits (checkpointed in ``TrainState.eval``).

    Attributes:
      mean: [D] the PCA's mean (zeros without whitening).
      projection: [D, P] the PCA's projection with the whitening folded in (the identity [D, D]
        without whitening).
      centroids: [num_clusters, P] unit rows.
    """
    mean: jax.Array
    projection: jax.Array
    centroids: jax.Array


def kmeans_probe(num_clusters: int, *, pca_dim: int = 0, n_init: int = 10,
                 prepare: Callable[[jax.Array], jax.Array] = lambda features: features,
                 input_dim: Callable[[int], int] = lambda dim: dim) -> Evaluation:
    """The k-means probe as an :class:`~jclust.methods.base.Evaluation`.

    Fit: x = prepare(features); with ``pca_dim`` > 0, x is PCA-whitened to ``pca_dim`` dimensions
    and L2-normalised (:func:`jclust.cluster.whiten`); then spherical k-means with
    ``num_clusters`` clusters and ``n_init`` restarts. Assign: the centroid of largest cosine
    similarity with the example's (whitened) unit features; confidence = that cosine.

    Args:
      num_clusters: K.
      pca_dim: whitening dimension P (0: none).
      n_init: k-means restarts (the best inertia is kept).
      prepare: the method's features [B, D] -> the probe's input [B, D'] (e.g. a column slice, a
        row normalisation).
      input_dim: D -> D', the width of ``prepare``'s output.
    """
    def init(feature_dim: int) -> KMeansProbeState:
        dim = input_dim(feature_dim)
        out = pca_dim or dim
        return KMeansProbeState(mean=jnp.zeros((dim,), float_dtype()),
                                projection=jnp.eye(dim, out, dtype=float_dtype()),
                                centroids=jnp.zeros((num_clusters, out), float_dtype()))

    def fit(features, cluster, key) -> KMeansProbeState:
        del cluster
        x = prepare(jnp.asarray(features))
        if pca_dim:
            mean, projection = jcluster.fit_whitening(x, pca_dim)
            x = jcluster.whiten(x, mean, projection)
        else:
            mean, projection = init(features.shape[1])[:2]
        km = jcluster.kmeans(x, num_clusters, key=key, n_init=n_init, spherical=True)
        return KMeansProbeState(mean=mean, projection=projection, centroids=km.centroids)

    def assign(state: KMeansProbeState, features: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = prepare(features)
        z = jcluster.whiten(x, state.mean, state.projection) if pca_dim else l2_normalize(x)
        sims = jnp.dot(z, state.centroids.T, precision=_PRECISION)
        return jnp.argmax(sims, -1).astype(jnp.int32), jnp.max(sims, -1)

    return Evaluation(init=init, fit=fit, assign=assign)


def split_feature_probe(part: str, num_clusters: int, feature_dim: int, *, pca_dim: int,
                        n_init: int) -> Evaluation:
    """The k-means probe on one part of a feature pass that yields [z, h] concatenated (z the
    first ``feature_dim`` columns, a projection's output; h the rest, the backbone's features):
    "projection": on z, L2-normalised; "backbone": on h, PCA-whitened to ``pca_dim`` and
    L2-normalised (DeepCluster v1's rule)."""
    if part == "projection":
        return kmeans_probe(num_clusters, n_init=n_init,
                            prepare=lambda f: l2_normalize(f[:, :feature_dim]),
                            input_dim=lambda dim: feature_dim)
    if part == "backbone":
        return kmeans_probe(num_clusters, pca_dim=pca_dim, n_init=n_init,
                            prepare=lambda f: f[:, feature_dim:],
                            input_dim=lambda dim: dim - feature_dim)
    raise ValueError(f"unknown feature part {part!r}: 'projection' or 'backbone'")
