"""CliqueCNN's similarity space of a round: the initial features (round 0) or the trunk's, z-scored,
reduced and normalised, optionally with the mirror images' features as a second view (the paper's
mirrored match), and their k-NN lists (docs of :mod:`jclust.methods.cliquecnn`, step 1)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jclust import cluster as jcluster
from jclust.methods.common import relative_spread
from jclust.models import hog as jhog
from jclust.precision import float_dtype


class Similarity(NamedTuple):
    """The similarity space of a round: unit rows [N, D] or views [N, 2, D] (an image and its
    mirror image) and their k-NN lists."""
    features: jax.Array
    neighbours: jax.Array


def zscore(features) -> jax.Array:
    """Per-dimension standardisation (a constant dimension stays 0); views [N, V, D] by the first
    view's mean and sd."""
    x = jnp.asarray(features, float_dtype())
    first = x[:, 0] if x.ndim == 3 else x
    sd = jnp.std(first, axis=0)
    return (x - jnp.mean(first, axis=0)) / jnp.where(sd > 0, sd, 1.0)


def reduce_and_normalise(features, pca_dim: int) -> jax.Array:
    """PCA to ``pca_dim`` (without whitening; none when the features are no wider) and unit rows;
    views [N, V, D] by the first view's PCA."""
    x = jnp.asarray(features, float_dtype())
    if x.ndim == 3:
        if pca_dim and x.shape[2] > pca_dim:
            state = jcluster.pca_fit(x[:, 0], pca_dim)
            flat = jcluster.pca_transform(state, x.reshape(-1, x.shape[2]), l2_normalize=True)
            return flat.reshape(x.shape[0], x.shape[1], -1)
        return jcluster.l2_normalize(x)
    if pca_dim and x.shape[1] > pca_dim:
        return jcluster.pca(x, pca_dim, l2_normalize=True)[1]
    return jcluster.l2_normalize(x)


def initial_features(inputs: np.ndarray, kind: str, *, pca_dim: int, ridge: float = 0.02,
                     mirror: bool = False):
    """Round 0's features of the raw inputs [N, H, W, C]: "hog_lda" (HOG whitened with the data's
    covariance + ``ridge`` I, :mod:`jclust.models.hog`) or "pca_whiten" (pixels / 255 PCA-whitened
    to ``pca_dim``); [N, D] before the round's reduction, or with ``mirror`` the views [N, 2, D]
    of the images and their mirror images (the whitening fitted on the images)."""
    images = [inputs, mirrored(inputs)] if mirror else [inputs]
    if kind == "hog_lda":
        config = jhog.default_config(*inputs.shape[1:3])
        views = [jhog.hog(x, **config._asdict()) for x in images]
        whitening = jhog.fit_hog_whitening(views[0], ridge=ridge)
        views = [jhog.apply_hog_whitening(whitening, h) for h in views]
    else:
        views = [jnp.asarray(x.reshape(x.shape[0], -1), float_dtype()) / 255.0 for x in images]
        mean, projection = jcluster.fit_whitening(views[0], pca_dim)
        views = [jcluster.whiten(x, mean, projection) for x in views]
    return jnp.stack(views, axis=1) if mirror else views[0]


def mirrored(images: np.ndarray) -> np.ndarray:
    """Images [N, H, W, C] mirrored left to right."""
    return np.ascontiguousarray(np.asarray(images)[:, :, ::-1])


def round_space(round_index: int, context, *, init_features: str, pca_dim: int,
                num_neighbours: int, mirror_match: bool) -> tuple[Similarity, float]:
    """A round's similarity space (module docstring, step 1) and the relative spread of the
    trunk's features (1 for round 0's initial features). With ``mirror_match`` the space holds
    the views [N, 2, D] of the images and their mirror images (the trunk's through
    ``context.embed``), every normalisation fitted on the images: the paper's
    s(x, y) = max over mirroring (:mod:`jclust.cluster.views`)."""
    if round_index == 0 and init_features != "network":
        raw = initial_features(np.asarray(context.inputs), init_features, pca_dim=pca_dim,
                               mirror=mirror_match)
        spread = 1.0
    else:
        views = context.features
        if mirror_match and context.embed is None:
            raise ValueError("mirror_match needs context.embed (the trainer's feature pass)")
        if mirror_match:
            views = np.stack([context.features, context.embed(mirrored(context.inputs))], axis=1)
        raw, spread = zscore(views), relative_spread(context.features)
    features = reduce_and_normalise(raw, pca_dim)
    if features.ndim == 3:
        return Similarity(features, jcluster.view_knn(features, num_neighbours)[0]), spread
    return Similarity(features, jcluster.knn(features, num_neighbours).indices), spread
