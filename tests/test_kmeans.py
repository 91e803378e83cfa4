"""Tests for jclust.cluster.kmeans: sklearn parity, chunking, init, repair."""

import importlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sklearn.cluster
import sklearn.datasets

from jclust import cluster
from jclust.precision import float_dtype
from tests.conftest import x64_mode

# `jclust.cluster.kmeans` the attribute is the function; fetch the module.
kmeans_lib = importlib.import_module("jclust.cluster.kmeans")


@pytest.fixture(scope="module")
def blobs64():
    """[300, 5] float64 Gaussian blobs around 4 centres."""
    x, _ = sklearn.datasets.make_blobs(
        n_samples=300, centers=4, n_features=5, cluster_std=1.5, random_state=0
    )
    return x


@pytest.fixture(scope="module")
def blobs(blobs64):
    """``blobs64`` in float32."""
    return blobs64.astype(np.float32)


@pytest.fixture(scope="module")
def digits64():
    """[1797, 64] float64 digits scaled to [0, 1].

    Pixel values lie on a 1/16 grid, so some points are exactly equidistant
    from two initial centroids; such ties are broken by rounding, which
    differs between implementations. A 1e-3 jitter removes them.
    """
    x = sklearn.datasets.load_digits().data / 16.0
    jitter = np.random.default_rng(1).uniform(0.0, 1e-3, x.shape)
    return x + jitter


@pytest.fixture(scope="module")
def digits(digits64):
    """``digits64`` in float32."""
    return digits64.astype(np.float32)


def _sklearn_lloyd(x, c0, max_iter=300, tol=1e-4):
    return sklearn.cluster.KMeans(
        n_clusters=c0.shape[0],
        init=c0,
        n_init=1,
        algorithm="lloyd",
        max_iter=max_iter,
        tol=tol,
    ).fit(x)


def _random_rows(x, k, seed):
    rng = np.random.default_rng(seed)
    return x[rng.choice(x.shape[0], k, replace=False)]


# (a) parity with scikit-learn from a shared initialisation.
#
# Exact labels and iteration counts are compared in float64, jclust in x64 mode and scikit-learn
# on float64 data. In float32 a point can lie within a few roundings of a tie between two
# centroids (digits, k=10, seed 1: 2.8 float32 roundings), and scikit-learn's float32 sums
# depend on its OpenMP thread count and BLAS, so which side wins depends on the CPU. In float64
# the nearest such point is >= 3e11 float64 roundings from a tie (at the final centroids of every
# case here). Measured (AMD EPYC Zen 3, 2026-12-03) over every parity case in this file: jclust
# against scikit-learn, inertia <= 4.0e-16 relative, centroids <= 5.9e-16 of max|centroid|;
# scikit-learn with 1 against 2 threads, inertia <= 2.1e-15 relative. Held to 1e-12: ~500x the
# largest. (A float32 rounding anywhere, ~1e-7, fails it.)
F64_RTOL = 1e-12


def _assert_matches_sklearn(got, want):
    np.testing.assert_array_equal(np.asarray(got.labels), want.labels_)
    np.testing.assert_allclose(float(got.inertia), want.inertia_, rtol=F64_RTOL)
    np.testing.assert_allclose(got.centroids, want.cluster_centers_, rtol=0,
                               atol=F64_RTOL * np.abs(want.cluster_centers_).max())
    assert got.centroids.dtype == got.inertia.dtype == float_dtype() == np.float64


@pytest.mark.parametrize("dataset, k", [("blobs64", 4), ("blobs64", 7), ("digits64", 10)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_lloyd(request, dataset, k, seed):
    x = request.getfixturevalue(dataset)
    c0 = _random_rows(x, k, seed)
    want = _sklearn_lloyd(x, c0)
    with x64_mode():
        got = cluster.kmeans(x, k, key=jax.random.key(0), init=c0)
        _assert_matches_sklearn(got, want)
    assert int(got.n_iter) == want.n_iter_
    assert bool(got.converged)
    assert got.labels.dtype == jnp.int32
    assert got.n_iter.dtype == jnp.int32 and got.converged.dtype == jnp.bool_
    assert int(got.n_empty_repaired) == 0


def test_float32_by_default(blobs):
    got = cluster.kmeans(blobs, 4, key=jax.random.key(0), init=blobs[:4])
    assert got.centroids.dtype == got.inertia.dtype == jnp.float32
    assert got.labels.dtype == jnp.int32


def test_max_iter_reached_matches_sklearn(digits64):
    c0 = _random_rows(digits64, 10, 3)
    want = _sklearn_lloyd(digits64, c0, max_iter=3, tol=0.0)
    with x64_mode():
        got = cluster.kmeans(
            digits64, 10, key=jax.random.key(0), init=c0, max_iter=3, tol=0.0
        )
        _assert_matches_sklearn(got, want)
    assert int(got.n_iter) == 3
    assert not bool(got.converged)


# (b) chunked assignment.


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 299, 1000])
def test_chunked_assign_equals_unchunked(blobs, chunk_size):
    c = _random_rows(blobs, 6, 0)
    labels, dist = cluster.assign(blobs, c, chunk_size=chunk_size)
    ref_labels, ref_dist = cluster.assign(blobs, c, chunk_size=blobs.shape[0])
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_array_equal(dist, ref_dist)
    assert labels.shape == (300,) and labels.dtype == jnp.int32
    # Against brute force in float64.
    d2 = ((blobs[:, None, :].astype(np.float64) - c[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(labels, d2.argmin(1))
    np.testing.assert_allclose(dist, d2.min(1), rtol=1e-4, atol=1e-4)


def test_chunked_kmeans_equals_unchunked(blobs):
    c0 = _random_rows(blobs, 4, 5)
    ref = cluster.kmeans(blobs, 4, key=jax.random.key(0), init=c0)
    for kwargs in ({"chunk_size": 7}, {"memory_budget_bytes": 1000}):
        got = cluster.kmeans(blobs, 4, key=jax.random.key(0), init=c0, **kwargs)
        np.testing.assert_array_equal(got.labels, ref.labels)
        chex.assert_trees_all_close(got, ref, rtol=1e-5, atol=1e-5)


def test_chunk_rows_follow_memory_budget():
    # [rows, k] float32 block counted twice: 1000 // (2 * 4 * 4) = 31.
    assert kmeans_lib._chunk_rows(300, 4, None, 1000) == 31
    assert kmeans_lib._chunk_rows(300, 4, None, 256 * 2**20) == 300
    assert kmeans_lib._chunk_rows(300, 10**9, None, 10) == 1
    assert kmeans_lib._chunk_rows(300, 4, 50, 10) == 50


# (c) k-means++ and restarts.


def test_kmeans_plusplus_picks_distinct_data_points(blobs):
    seeds = cluster.kmeans_plusplus(blobs, 8, key=jax.random.key(3))
    assert seeds.shape == (8, 5)
    seeds = np.asarray(seeds)
    matches = (seeds[:, None, :] == blobs[None]).all(-1)
    assert (matches.sum(1) >= 1).all()  # every seed is a data point
    assert len(np.unique(seeds, axis=0)) == 8


def test_kmeans_plusplus_inertia_is_reasonable(blobs):
    best = sklearn.cluster.KMeans(4, n_init=10, random_state=0).fit(blobs).inertia_
    seed_inertias, final_inertias = [], []
    for i in range(5):
        key = jax.random.key(i)
        seeds = cluster.kmeans_plusplus(blobs, 4, key=key, n_local_trials=3)
        seed_inertias.append(float(jnp.sum(cluster.assign(blobs, seeds)[1])))
        final_inertias.append(float(cluster.kmeans(blobs, 4, key=key).inertia))
        random_seeds = cluster.random_init(blobs, 4, key=key)
        assert len(np.unique(np.asarray(random_seeds), axis=0)) == 4
    # Well-separated blobs: greedy k-means++ seeds are already near the optimum.
    assert np.median(seed_inertias) < 3 * best
    np.testing.assert_allclose(final_inertias, best, rtol=1e-4)


def test_n_init_keeps_lowest_inertia(digits):
    x = digits[:400]
    key = jax.random.key(7)
    out = cluster.kmeans(x, 10, key=key, init="random", n_init=4)
    runs = [
        cluster.kmeans(x, 10, key=ki, init=cluster.random_init(x, 10, key=ki))
        for ki in jax.random.split(key, 4)
    ]
    inertias = [float(r.inertia) for r in runs]
    assert len(set(inertias)) > 1  # the restarts do differ
    best = runs[int(np.argmin(inertias))]
    assert float(out.inertia) == min(inertias)
    np.testing.assert_array_equal(out.labels, best.labels)


# (d) empty-cluster repair.


def _two_groups():
    """Two tight groups in 2-D, each with one outlier."""
    a = [[0.0, 0.0], [0.5, 0.0], [0.0, 0.5], [-0.5, 0.0], [0.0, 3.0]]
    b = [[10.0, 0.0], [10.5, 0.0], [10.0, 0.5], [9.5, 0.0], [10.0, -2.0]]
    return np.array(a + b, np.float32)


def test_empty_cluster_repaired_at_farthest_point():
    x = _two_groups()
    c0 = np.array([[0.0, 0.5], [10.0, 0.0], [100.0, 100.0]], np.float32)
    out = cluster.kmeans(x, 3, key=jax.random.key(0), init=c0)
    # Cluster 2 gets nothing at first; (0, 3) is farthest from its centroid.
    assert int(out.n_empty_repaired) == 1
    np.testing.assert_allclose(out.centroids[2], [0.0, 3.0], atol=1e-6)
    assert int(out.labels[4]) == 2 and (np.asarray(out.labels) == 2).sum() == 1
    want = _sklearn_lloyd(x, c0)
    np.testing.assert_array_equal(out.labels, want.labels_)
    np.testing.assert_allclose(float(out.inertia), want.inertia_, rtol=1e-5)


def test_several_empty_clusters_get_distinct_points_farthest_first():
    x = _two_groups()
    c0 = np.array(
        [[0.0, 0.5], [10.0, 0.0], [100.0, 100.0], [-100.0, -100.0]], np.float32
    )
    out = cluster.kmeans(x, 4, key=jax.random.key(0), init=c0, max_iter=1)
    assert int(out.n_empty_repaired) == 2
    # (0, 3) is 2.5 from its centroid, (10, -2) only 2.0: lowest empty id first.
    np.testing.assert_allclose(out.centroids[2], [0.0, 3.0], atol=1e-6)
    np.testing.assert_allclose(out.centroids[3], [10.0, -2.0], atol=1e-6)
    # The moved points left their old clusters' means.
    np.testing.assert_allclose(out.centroids[0], [0.0, 0.125], atol=1e-6)
    np.testing.assert_allclose(out.centroids[1], [10.0, 0.125], atol=1e-6)


def test_unrepairable_empty_cluster_keeps_its_centroid():
    # Every point sits on a centroid, so no point can seed the empty cluster.
    x = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0]], np.float32)
    c0 = np.array([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]], np.float32)
    out = cluster.kmeans(x, 3, key=jax.random.key(0), init=c0)
    assert int(out.n_empty_repaired) == 0
    np.testing.assert_allclose(out.centroids, c0)
    assert float(out.inertia) == 0.0


def test_split_empty_copies_and_perturbs_the_donor():
    c = jnp.array([[1.0, 2.0, 3.0], [7.0, 7.0, 7.0]])  # row 1 is empty: its value is ignored
    counts = jnp.array([5.0, 0.0])
    eps = 0.1
    out_c, out_counts, n = kmeans_lib.split_empty(c, counts, jax.random.key(0), eps)
    sign = np.array([1.0, -1.0, 1.0])
    np.testing.assert_allclose(out_c[1], np.array([1.0, 2.0, 3.0]) * (1 + eps * sign), rtol=1e-6)
    np.testing.assert_allclose(out_c[0], np.array([1.0, 2.0, 3.0]) * (1 - eps * sign), rtol=1e-6)
    np.testing.assert_array_equal(out_counts, [3.0, 2.0])  # the new cluster takes floor(5/2)
    assert int(n) == 1


def test_split_donor_is_drawn_by_size_minus_one():
    c = jnp.arange(12.0).reshape(4, 3)
    counts = jnp.array([1.0, 3.0, 5.0, 0.0])  # weights n_j - 1 = 0, 2, 4
    split = jax.jit(jax.vmap(lambda key: kmeans_lib.split_empty(c, counts, key, 1e-3)[0]))
    new_rows = np.asarray(split(jax.random.split(jax.random.key(1), 3000)))[:, 3]
    donors = np.argmin(np.abs(new_rows[:, None, :] - np.asarray(c)[None, :3, :]).sum(-1), axis=1)
    freq = np.bincount(donors, minlength=3) / len(donors)
    assert freq[0] == 0.0  # a singleton is never split
    np.testing.assert_allclose(freq[1:], [1 / 3, 2 / 3], atol=0.03)


def test_split_is_impossible_when_all_clusters_are_singletons():
    c = jnp.array([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    out_c, out_counts, n = kmeans_lib.split_empty(c, jnp.array([1.0, 1.0, 0.0]),
                                                  jax.random.key(0), 0.1)
    assert int(n) == 0
    np.testing.assert_array_equal(out_c, c)


def test_kmeans_split_policy_fills_empty_clusters(blobs):
    # Two far-away initial centroids get no points at first and are filled by splits.
    c0 = np.concatenate([blobs[:2], np.full((2, 5), 1e3, np.float32)])
    out = cluster.kmeans(blobs, 4, key=jax.random.key(0), init=c0, empty_policy="split")
    assert int(out.n_empty_repaired) >= 2
    labels = np.asarray(out.labels)
    assert len(np.unique(labels)) == 4
    # Still a k-means fixed point: every point is at its nearest centroid.
    d = ((blobs[:, None, :] - np.asarray(out.centroids)[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(labels, d.argmin(1))
    with pytest.raises(ValueError, match="empty_policy"):
        cluster.kmeans(blobs, 4, key=jax.random.key(0), empty_policy="drop")


# (e) spherical k-means.


def _numpy_spherical_kmeans(x, c0, max_iter):
    """Reference: cosine assignment, mean, re-normalise; stop when stable."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    c = c0 / np.linalg.norm(c0, axis=1, keepdims=True)
    labels_old = None
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        labels = np.argmax(x @ c.T, axis=1)
        assert len(np.unique(labels)) == c.shape[0]  # no empty clusters here
        c = np.stack([x[labels == j].mean(0) for j in range(c.shape[0])])
        c /= np.linalg.norm(c, axis=1, keepdims=True)
        if labels_old is not None and (labels == labels_old).all():
            break
        labels_old = labels
    labels = np.argmax(x @ c.T, axis=1)
    inertia = np.sum(1.0 - np.sum(x * c[labels], axis=1))
    return c, labels, inertia, n_iter


def test_spherical_matches_numpy_reference():
    # In float64 (x64 mode): at the reference's iteration 2 a point's two best cosines differ by
    # 3.8e-8, a few float32 roundings (float32 passed by luck) but 3e8 float64 ones. Measured
    # against the reference (AMD EPYC Zen 3, 2026-12-03): centroids 1.1e-16, inertia and the
    # distance sum 2.1e-16 relative, centroid norms exactly 1; held to 1e-12.
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(5, 8))
    z = rng.integers(0, 5, 240)
    x = directions[z] * rng.uniform(0.5, 3.0, (240, 1))
    x = x + 0.6 * rng.normal(size=(240, 8))
    c0 = x[:5]
    c_ref, labels_ref, inertia_ref, n_iter_ref = _numpy_spherical_kmeans(x, c0, max_iter=100)
    with x64_mode():
        out = cluster.kmeans(
            x, 5, key=jax.random.key(0), init=c0, spherical=True, tol=0.0, max_iter=100
        )
        labels, dist = cluster.assign(x, out.centroids, spherical=True, chunk_size=50)
        # Host arrays: np.sum of a jax array would call its .sum(), in float32 outside the block.
        out, dist = jax.device_get((out, dist))
        assert out.centroids.dtype == dist.dtype == np.float64
    np.testing.assert_array_equal(out.labels, labels_ref)
    np.testing.assert_allclose(out.centroids, c_ref, rtol=0, atol=F64_RTOL)
    np.testing.assert_allclose(float(out.inertia), inertia_ref, rtol=F64_RTOL)
    assert int(out.n_iter) == n_iter_ref
    np.testing.assert_allclose(np.linalg.norm(out.centroids, axis=1), 1.0, rtol=F64_RTOL)
    np.testing.assert_array_equal(labels, out.labels)
    np.testing.assert_allclose(dist.sum(), inertia_ref, rtol=F64_RTOL)


# (f) jit and tracing.


def test_outer_jit_matches_eager(blobs):
    key = jax.random.key(4)
    eager = cluster.kmeans(blobs, 4, key=key, n_init=2)
    jitted = jax.jit(cluster.kmeans, static_argnames=("k", "n_init"))
    chex.assert_trees_all_close(jitted(blobs, k=4, key=key, n_init=2), eager)


def test_disable_jit_matches_jit():
    # Same case as the repair test, so the eager run also takes that branch.
    x = _two_groups()
    c0 = np.array([[0.0, 0.5], [10.0, 0.0], [100.0, 100.0]], np.float32)
    out = cluster.kmeans(x, 3, key=jax.random.key(0), init=c0)
    with jax.disable_jit():
        eager = cluster.kmeans(x, 3, key=jax.random.key(0), init=c0)
    assert int(eager.n_empty_repaired) == 1
    chex.assert_trees_all_close(out, eager, rtol=1e-6, atol=1e-6)


def test_no_retrace_on_repeated_calls(blobs):
    cluster.kmeans(blobs, 4, key=jax.random.key(0))
    fit_traces = kmeans_lib._fit._cache_size()
    init_traces = kmeans_lib._plusplus_indices._cache_size()
    cluster.kmeans(jnp.asarray(blobs) * 2.0, 4, key=jax.random.key(1), tol=1e-3)
    cluster.kmeans(np.asarray(blobs) + 1.0, 4, key=jax.random.key(2), n_init=2)
    assert kmeans_lib._fit._cache_size() == fit_traces
    assert kmeans_lib._plusplus_indices._cache_size() == init_traces


# (g) errors.


def test_errors(blobs):
    key = jax.random.key(0)
    msg = r"k=301 is larger than the number of examples n=300"
    with pytest.raises(ValueError, match=msg):
        cluster.kmeans(blobs, 301, key=key)
    with pytest.raises(ValueError, match="k=0 must be at least 1"):
        cluster.kmeans(blobs, 0, key=key)
    with pytest.raises(ValueError, match="2-D"):
        cluster.kmeans(blobs[:, 0], 2, key=key)
    bad = blobs.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        cluster.kmeans(bad, 2, key=key)
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        cluster.assign(bad, blobs[:2])
    with pytest.raises(ValueError, match=r"shape \(k, d\)=\(4, 5\)"):
        cluster.kmeans(blobs, 4, key=key, init=blobs[:3])
    with pytest.raises(ValueError, match="n_init must be 1"):
        cluster.kmeans(blobs, 4, key=key, init=blobs[:4], n_init=2)
    with pytest.raises(ValueError, match="init must be"):
        cluster.kmeans(blobs, 4, key=key, init="kmeans||")
    with pytest.raises(ValueError, match="chunk_size"):
        cluster.kmeans(blobs, 4, key=key, chunk_size=0)
    with pytest.raises(ValueError, match="features"):
        cluster.assign(blobs, blobs[:2, :3])
    with pytest.raises(ValueError, match="larger than the number of examples"):
        cluster.kmeans_plusplus(blobs[:3], 4, key=key)


def test_keep_policy_leaves_an_empty_centroid_in_place():
    # Two tight groups; the third initial centroid is far from every point and stays empty.
    x = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]], np.float32)
    init = np.array([[0.0, 0.1], [5.0, 5.1], [100.0, -100.0]], np.float32)
    out = cluster.kmeans(x, 3, key=jax.random.PRNGKey(0), init=init, max_iter=5, tol=0.0,
                         empty_policy="keep")
    np.testing.assert_allclose(out.centroids[2], init[2])
    np.testing.assert_allclose(out.centroids[:2], [[0.05, 0.0], [5.05, 5.0]], atol=1e-6)
    np.testing.assert_array_equal(out.labels, [0, 0, 1, 1])
    assert int(out.n_empty_repaired) == int(out.n_iter)  # empty at every iteration
    sph = cluster.kmeans(x[[0, 1, 2, 3]] + 1.0, 3, key=jax.random.PRNGKey(0), spherical=True,
                         init=np.array([[1.0, 0.9], [0.9, 1.0], [-1.0, -1.0]], np.float32),
                         max_iter=3, tol=0.0, empty_policy="keep")
    np.testing.assert_allclose(sph.centroids[2], np.array([-1.0, -1.0]) / np.sqrt(2), rtol=1e-6)


# (f) the host-streamed, memory-bounded path.


@pytest.mark.parametrize("dataset, k, chunk_size", [("blobs64", 4, 7), ("blobs64", 7, 64),
                                                    ("digits64", 10, 500), ("digits64", 10, 1797)])
def test_streamed_matches_sklearn_lloyd(request, dataset, k, chunk_size):
    # In float64, as test_matches_sklearn_lloyd (the measurement there covers these cases).
    x = request.getfixturevalue(dataset)
    c0 = _random_rows(x, k, 0)
    want = _sklearn_lloyd(x, c0)
    with x64_mode():
        got = cluster.kmeans_streamed(x, k, key=jax.random.key(0), init=c0,
                                      chunk_size=chunk_size, max_iter=300)
        _assert_matches_sklearn(got, want)
    assert int(got.n_iter) == want.n_iter_ and bool(got.converged)


def test_streamed_max_iter_and_memmap_input(digits64, tmp_path):
    path = tmp_path / "x.f64"
    stored = np.memmap(path, np.float64, "w+", shape=digits64.shape)
    stored[:] = digits64
    stored.flush()
    x = np.memmap(path, np.float64, "r", shape=digits64.shape)
    c0 = _random_rows(digits64, 10, 3)
    want = _sklearn_lloyd(digits64, c0, max_iter=3, tol=0.0)
    with x64_mode():
        got = cluster.kmeans_streamed(x, 10, key=jax.random.key(0), init=c0, max_iter=3,
                                      tol=0.0, chunk_size=400)
        _assert_matches_sklearn(got, want)
    assert int(got.n_iter) == 3 and not bool(got.converged)


def test_streamed_random_init_and_empty_clusters_keep_their_centroid():
    # 3 distinct points, k = 3 from a bad init: two centroids on one point, one far away.
    x = np.array([[0.0, 0.0], [0.0, 0.0], [10.0, 0.0], [10.0, 0.0]], np.float32)
    c0 = np.array([[0.0, 0.0], [0.0, 0.0], [100.0, 100.0]], np.float32)
    got = cluster.kmeans_streamed(x, 3, key=jax.random.key(0), init=c0, chunk_size=3)
    np.testing.assert_allclose(got.centroids[2], [100.0, 100.0])  # empty: kept in place
    assert int(got.n_empty_repaired) >= 1
    out = cluster.kmeans_streamed(np.repeat(x, 5, axis=0), 2, key=jax.random.key(1))
    assert sorted(np.bincount(out.labels).tolist()) == [10, 10]


def test_streamed_errors(blobs):
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="larger than the number of examples"):
        cluster.kmeans_streamed(blobs, 301, key=key)
    with pytest.raises(ValueError, match="2-D"):
        cluster.kmeans_streamed(blobs[0], 2, key=key)
    bad = blobs.copy()
    bad[123, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cluster.kmeans_streamed(bad, 3, key=key, chunk_size=100)
    with pytest.raises(ValueError, match="init"):
        cluster.kmeans_streamed(blobs, 3, key=key, init="k-means++")
    with pytest.raises(ValueError, match="shape"):
        cluster.kmeans_streamed(blobs, 3, key=key, init=blobs[:2])


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
def test_cache_sized_blocks_are_cpu_only(monkeypatch, backend):
    """On CPU the distance block is cut to cache size; on GPU/TPU only the memory budget bounds
    it (one [70,000, 1,000] block fits a 1 GiB budget whole)."""
    kmeans_module = importlib.import_module("jclust.cluster.kmeans")
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    assert kmeans_module._chunk_rows(70000, 1000, None, 2 ** 30) == 70000
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert kmeans_module._chunk_rows(70000, 1000, None, 2 ** 30) == \
        kmeans_module.CPU_BLOCK_BYTES // 4000
