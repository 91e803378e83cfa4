"""Spectral clustering: the graph and normalised affinity against a plain NumPy construction from
scikit-learn's neighbours, the eigenvectors (LOBPCG and dense) against numpy's eigh, and the
clustering against scikit-learn's SpectralClustering on the same affinity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cluster import SpectralClustering
from sklearn.datasets import make_blobs, make_circles
from sklearn.metrics import adjusted_rand_score
from sklearn.neighbors import NearestNeighbors

from jclust.cluster import spectral


def numpy_affinity(x, k):
    """S = (W + W^T)/2 and A = D^-1/2 S D^-1/2 from the module docstring, in NumPy."""
    dist, idx = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    d2, idx = dist[:, 1:] ** 2, idx[:, 1:]
    sigma2 = np.median(d2[:, -1])
    n = len(x)
    w = np.zeros((n, n))
    w[np.repeat(np.arange(n), k), idx.ravel()] = np.exp(-d2 / sigma2).ravel()
    s = (w + w.T) / 2
    deg = s.sum(1)
    return s, s / np.sqrt(deg)[:, None] / np.sqrt(deg)[None, :], sigma2


def test_knn_affinity_and_normalised_product_match_numpy():
    x = np.random.default_rng(0).normal(size=(120, 6)).astype(np.float32)
    _, a_ref, sigma2 = numpy_affinity(x, 7)
    affinity = spectral.knn_affinity(x, 7, chunk_size=32)
    np.testing.assert_allclose(affinity.sigma2, sigma2, rtol=1e-4)
    np.testing.assert_allclose(spectral.dense_normalized_affinity(affinity), a_ref, atol=1e-5)
    v = np.random.default_rng(1).normal(size=(120, 3)).astype(np.float32)
    np.testing.assert_allclose(spectral.normalized_affinity(affinity)(jnp.asarray(v)), a_ref @ v,
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dense_max_points", [0, 10_000])  # LOBPCG, dense eigh
def test_eigenvectors_match_numpy_eigh(dense_max_points):
    x, _ = make_blobs(n_samples=300, centers=4, cluster_std=1.5, random_state=0)
    x = x.astype(np.float32)
    _, a_ref, _ = numpy_affinity(x, 8)
    values_ref, vectors_ref = np.linalg.eigh(a_ref)
    values_ref, vectors_ref = values_ref[::-1][:4], vectors_ref[:, ::-1][:, :4]
    vectors, values, residual = spectral.spectral_embedding(
        x, 4, key=jax.random.key(0), num_neighbours=8, max_iter=200,
        dense_max_points=dense_max_points)
    np.testing.assert_allclose(values, values_ref, atol=1e-4)
    assert float(residual) < 1e-3
    # Same invariant subspace: projecting one basis on the other keeps its norm.
    overlap = np.asarray(vectors).T @ vectors_ref
    np.testing.assert_allclose(np.linalg.svd(overlap, compute_uv=False), 1.0, atol=1e-3)


@pytest.mark.parametrize("dense_max_points", [0, 10_000])
@pytest.mark.filterwarnings("ignore:Graph is not fully connected")
def test_spectral_clustering_separates_rings_as_scikit_learn_does(dense_max_points):
    x, y = make_circles(n_samples=400, factor=0.4, noise=0.04, random_state=0)
    x = x.astype(np.float32)
    out = spectral.spectral_clustering(x, 2, key=jax.random.key(0), num_neighbours=10,
                                       dense_max_points=dense_max_points)
    s, _, _ = numpy_affinity(x, 10)
    ref = SpectralClustering(2, affinity="precomputed", random_state=0).fit_predict(s)
    assert adjusted_rand_score(y, np.asarray(out.labels)) == 1.0
    assert adjusted_rand_score(ref, np.asarray(out.labels)) == 1.0
    np.testing.assert_allclose(np.linalg.norm(out.embedding, axis=1), 1.0, atol=1e-5)
    assert out.labels.dtype == jnp.int32 and out.embedding.shape == (400, 2)


def test_bad_arguments_raise():
    x = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="larger than the number of examples"):
        spectral.spectral_clustering(x, 21, key=jax.random.key(0), num_neighbours=3)
    with pytest.raises(ValueError, match="num_neighbours"):
        spectral.spectral_embedding(x, 2, key=jax.random.key(0), num_neighbours=20)
    with pytest.raises(ValueError, match="5 \\* dim < N"):
        spectral.spectral_embedding(x, 4, key=jax.random.key(0), num_neighbours=3,
                                    dense_max_points=0)
    with pytest.raises(ValueError, match="NaN"):
        spectral.spectral_clustering(np.full((20, 3), np.nan), 2, key=jax.random.key(0))
