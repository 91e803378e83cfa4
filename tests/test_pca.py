"""Tests for jclust.cluster.pca against sklearn.decomposition.PCA."""

import jax.numpy as jnp
import numpy as np
import pytest
import sklearn.datasets
import sklearn.decomposition

from jclust import cluster


@pytest.fixture(scope="module")
def spectral_data():
    """[200, 12] float32 with well-separated variances along rotated axes."""
    rng = np.random.default_rng(0)
    scales = np.linspace(5.0, 0.5, 12)
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    x = (rng.normal(size=(200, 12)) * scales) @ q.T + 3.0
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def digits():
    return (sklearn.datasets.load_digits().data / 16.0).astype(np.float32)


def _assert_close_up_to_sign(got, want, rtol=1e-4):
    """Columns of got equal those of want up to a per-column sign."""
    got = np.asarray(got, np.float64)
    signs = np.sign(np.sum(got * want, axis=0))
    # Entries near 0 are judged relative to their column's largest value.
    scale = np.abs(want).max(axis=0)
    np.testing.assert_allclose(got * signs / scale, want / scale, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dataset, m", [("spectral_data", 6), ("digits", 20)])
@pytest.mark.parametrize("whiten", [False, True])
def test_matches_sklearn(request, dataset, m, whiten):
    x = request.getfixturevalue(dataset)
    state, y = cluster.pca(x, m, whiten=whiten)
    ref = sklearn.decomposition.PCA(m, whiten=whiten, svd_solver="full")
    y_ref = ref.fit_transform(x.astype(np.float64))
    np.testing.assert_allclose(
        state.explained_variance, ref.explained_variance_, rtol=1e-4
    )
    np.testing.assert_allclose(state.mean, ref.mean_, rtol=1e-5, atol=1e-6)
    _assert_close_up_to_sign(y, y_ref)
    _assert_close_up_to_sign(np.asarray(state.components).T, ref.components_.T)
    # New data goes through the same projection.
    x_new = x[:10] * 0.5 + 0.1
    _assert_close_up_to_sign(
        cluster.pca_transform(state, x_new), ref.transform(x_new.astype(np.float64))
    )
    assert y.shape == (x.shape[0], m) and y.dtype == jnp.float32


def test_whitened_outputs_have_unit_variance(spectral_data):
    _, y = cluster.pca(spectral_data, 6, whiten=True)
    np.testing.assert_allclose(np.var(np.asarray(y), axis=0, ddof=1), 1.0, rtol=1e-4)
    np.testing.assert_allclose(np.mean(np.asarray(y), axis=0), 0.0, atol=1e-5)


def test_l2_normalised_rows_have_unit_norm(digits):
    for whiten in (False, True):
        _, y = cluster.pca(digits, 8, whiten=whiten, l2_normalize=True)
        np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, rtol=1e-5)


def test_components_orthonormal_with_deterministic_sign(spectral_data):
    state = cluster.pca_fit(spectral_data, 5)
    c = np.asarray(state.components)
    np.testing.assert_allclose(c @ c.T, np.eye(5), atol=1e-5)
    pivots = c[np.arange(5), np.abs(c).argmax(axis=1)]
    assert (pivots > 0).all()
    np.testing.assert_array_equal(state.scale, np.ones(5, np.float32))
    assert np.all(np.diff(state.explained_variance) <= 0)


def test_errors(spectral_data):
    msg = r"n_components=13 must be between 1 and min\(n, d\)=12"
    with pytest.raises(ValueError, match=msg):
        cluster.pca_fit(spectral_data, 13)
    with pytest.raises(ValueError, match="min\\(n, d\\)=5"):
        cluster.pca_fit(spectral_data[:5], 6)
    with pytest.raises(ValueError, match="n_components=0"):
        cluster.pca(spectral_data, 0)
    with pytest.raises(ValueError, match="2-D"):
        cluster.pca_fit(spectral_data[:, 0], 1)
    state = cluster.pca_fit(spectral_data, 3)
    with pytest.raises(ValueError, match=r"shape \[n, 12\]"):
        cluster.pca_transform(state, spectral_data[:, :5])
