"""PCA (optionally whitened) in jax.numpy.

The fit forms the ``[d, d]`` float32 covariance of the centred data and calls
``jnp.linalg.eigh``, which is fast and accurate enough for d up to a few
thousand features (memory and time grow as d² and d³). The leading
eigenvalues equal scikit-learn's ``PCA.explained_variance_`` (normalised by
``n - 1``). Components get scikit-learn's deterministic sign (``svd_flip``
with ``u_based_decision=False``): the entry of largest absolute value in each
component is positive.

Whitening is a property of the fitted state: ``PCAState.scale`` holds
``1 / sqrt(explained_variance + eps)`` when fitted with ``whiten=True`` and
ones otherwise, and :func:`pca_transform` always multiplies by it.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jclust.cluster import norms
from jclust.precision import float_dtype

# Inputs may be device or host arrays (converted with jnp.asarray); outputs are device arrays.
Array = jax.Array | np.ndarray

_PRECISION = jax.lax.Precision.HIGHEST


class PCAState(NamedTuple):
    """A fitted PCA.

    Attributes:
      mean: [d] float32, per-feature mean of the training data.
      components: [m, d] float32, orthonormal principal axes, by decreasing
        explained variance.
      explained_variance: [m] float32, variance along each axis (``n - 1``
        normalisation).
      scale: [m] float32, per-component output scale:
        ``1 / sqrt(explained_variance + eps)`` if whitened, else ones.
    """

    mean: jax.Array
    components: jax.Array
    explained_variance: jax.Array
    scale: jax.Array


def _check_fit_args(x, n_components):
    """Returns x as a float32 [n, d] jax array after validating the arguments."""
    x = jnp.asarray(x, dtype=float_dtype())
    if x.ndim != 2:
        raise ValueError(f"x must be a 2-D array [n, d], got shape {x.shape}.")
    n, d = x.shape
    if n < 2:
        raise ValueError(f"PCA needs at least 2 examples, got n={n}.")
    if not isinstance(n_components, int) or isinstance(n_components, bool):
        raise ValueError(f"n_components must be a python int, got {n_components!r}.")
    if n_components < 1 or n_components > min(n, d):
        raise ValueError(
            f"n_components={n_components} must be between 1 and min(n, d)="
            f"{min(n, d)} (n={n}, d={d})."
        )
    return x


@functools.partial(jax.jit, static_argnames=("n_components", "whiten"))
def _fit(x, eps, *, n_components, whiten):
    """Jitted body of :func:`pca_fit`."""
    n = x.shape[0]
    mean = jnp.mean(x, axis=0)
    xc = x - mean
    cov = jnp.dot(xc.T, xc, precision=_PRECISION) / (n - 1)
    eigvals, eigvecs = jnp.linalg.eigh(cov)  # ascending
    variance = jnp.maximum(eigvals[::-1][:n_components], 0.0)
    components = eigvecs[:, ::-1][:, :n_components].T  # [m, d]
    pivot = jnp.argmax(jnp.abs(components), axis=1)
    signs = jnp.sign(jnp.take_along_axis(components, pivot[:, None], axis=1))
    components = components * signs
    if whiten:
        scale = jax.lax.rsqrt(variance + eps)
    else:
        scale = jnp.ones_like(variance)
    return PCAState(mean, components, variance, scale)


def pca_fit(x: Array, n_components: int, *, whiten: bool = False,
            eps: float = 1e-8) -> PCAState:
    """Fits PCA by eigendecomposition of the float32 covariance.

    Args:
      x: [n, d] float32 data (numpy or jax), n >= 2.
      n_components: m, with 1 <= m <= min(n, d).
      whiten: if True, :func:`pca_transform` divides each component by
        ``sqrt(explained_variance + eps)`` (unit variance outputs).
      eps: added to the variance before whitening.

    Returns:
      PCAState(mean [d], components [m, d], explained_variance [m], scale [m]), all float32.
    """
    x = _check_fit_args(x, n_components)
    return _fit(x, jnp.asarray(eps, float_dtype()), n_components=n_components, whiten=whiten)


@functools.partial(jax.jit, static_argnames=("l2_normalize",))
def _transform(state, x, *, l2_normalize):
    """Jitted body of :func:`pca_transform`."""
    y = jnp.dot(x - state.mean, state.components.T, precision=_PRECISION)
    y = y * state.scale
    if l2_normalize:
        y = norms.l2_normalize(y, jnp.finfo(y.dtype).tiny)
    return y


def pca_transform(state: PCAState, x: Array, *, l2_normalize: bool = False) -> jax.Array:
    """Projects data on the fitted components.

    Args:
      state: a PCAState from :func:`pca_fit`.
      x: [n, d] float32 data (numpy or jax).
      l2_normalize: scale every output row to unit L2 norm (after whitening),
        as DeepCluster does before k-means.

    Returns:
      [n, m] float32.
    """
    x = jnp.asarray(x, dtype=float_dtype())
    d = state.mean.shape[0]
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"x must have shape [n, {d}], got {x.shape}.")
    return _transform(state, x, l2_normalize=l2_normalize)


def pca(x: Array, n_components: int, *, whiten: bool = False,
        l2_normalize: bool = False) -> tuple[PCAState, jax.Array]:
    """Fits PCA on x and transforms x.

    Args:
      x: [n, d] float32 data (numpy or jax).
      n_components: m, with 1 <= m <= min(n, d).
      whiten: unit-variance components, see :func:`pca_fit`.
      l2_normalize: unit-norm output rows, see :func:`pca_transform`.

    Returns:
      (PCAState, [n, m] float32 transformed data).
    """
    state = pca_fit(x, n_components, whiten=whiten)
    return state, pca_transform(state, x, l2_normalize=l2_normalize)


def fit_whitening(features: Array, dim: int, power: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """PCA-whitening of features [N, D] to ``dim`` dimensions in folded form, for :func:`whiten`
    (DeepCluster's, ODC's and SwAV's evaluation and clustering features).

    Args:
      features: [N, D] float32 (numpy or jax), N >= 2.
      dim: output dimensions, 1 <= dim <= min(N, D).
      power: the whitening's strength: component i is scaled by ``variance_i ** (-power / 2)``;
        1 whitens, 0 only projects, and between them the spectrum is flattened part-way (the
        power-law whitening of image retrieval, e.g. Jegou & Chum, ECCV 2012).

    Returns:
      (mean [D], projection [D, dim] with the whitening scale folded into the components), float32.
    """
    if not 0.0 <= power <= 1.0:
        raise ValueError(f"power must be in [0, 1], got {power!r}.")
    state = pca_fit(features, dim, whiten=True)
    scale = state.scale if power == 1.0 else state.scale ** power
    return state.mean, (state.components * scale[:, None]).T


def whiten(features: jax.Array, mean: jax.Array, projection: jax.Array) -> jax.Array:
    """PCA-whitened, L2-normalised features [B, D] -> [B, dim], from :func:`fit_whitening`'s
    folded projection (one matrix product; :func:`pca_transform` scales after projecting, which
    rounds differently).

    Args:
      features: [B, D] float.
      mean: [D], from :func:`fit_whitening`.
      projection: [D, dim], from :func:`fit_whitening`.

    Returns:
      [B, dim], rows of unit L2 norm.
    """
    z = (features - mean) @ projection
    return norms.l2_normalize(z)


def power_whiten(features: Array, dim: int, power: float) -> jax.Array:
    """Features [N, D] on their top ``dim`` principal components (min(N, D) when fewer), component
    i scaled by ``variance_i ** (-power / 2)`` (:func:`fit_whitening`), rows of unit L2 norm: the
    space in which CliqueCNN's learned similarity is the cosine. Fitted on ``features``, so a
    few examples (predict on a handful of images) get as many components as they can carry."""
    x = jnp.asarray(features, float_dtype())
    mean, projection = fit_whitening(x, min(dim, *x.shape), power)
    return whiten(x, mean, projection)
