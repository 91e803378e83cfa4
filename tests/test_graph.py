"""k-NN search, JULE's affinity graph, 1-NN components, GDL affinities and the merge scan against
scikit-learn, scipy, dense definitions, a plain NumPy merge loop and hand-computed cases."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.neighbors import NearestNeighbors

from jclust.cluster import affinity_graph, knn, nearest_neighbour_clusters
from jclust.cluster.graph import (AffinityGraph, gdl_affinity, merge_clusters, merge_state,
                                  resolve_labels)


@pytest.mark.parametrize("chunk_size", [7, 1024])
def test_knn_matches_scikit_learn(chunk_size):
    x = np.random.default_rng(0).normal(size=(150, 12)).astype(np.float32)
    out = knn(x, 5, chunk_size=chunk_size)
    dist, idx = NearestNeighbors(n_neighbors=6).fit(x).kneighbors(x)
    np.testing.assert_array_equal(out.indices, idx[:, 1:])  # sklearn lists the point itself first
    np.testing.assert_allclose(out.sq_distances, dist[:, 1:] ** 2, rtol=1e-4, atol=1e-4)


def test_affinity_graph_follows_the_paper():
    x = np.random.default_rng(1).normal(size=(60, 5))
    graph = affinity_graph(x, 4)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = ((xn[:, None] - xn[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nbrs = np.argsort(d, axis=1)[:, :4]
    dn = np.take_along_axis(d, nbrs, 1)
    sigma2 = dn.mean()
    np.testing.assert_array_equal(graph.indices, nbrs)
    np.testing.assert_allclose(graph.sigma2, sigma2, rtol=1e-5)
    np.testing.assert_allclose(graph.weights, np.exp(-dn / sigma2), rtol=1e-4, atol=1e-6)


def test_nearest_neighbour_clusters_on_a_hand_made_graph():
    # 0 <-> 1 mutual, 2 -> 1, 3 -> 2: one chain {0, 1, 2, 3}; 4 <-> 5; 6 -> 5; 7 <-> 8.
    nearest = np.array([1, 0, 1, 2, 5, 4, 5, 8, 7])
    labels = nearest_neighbour_clusters(nearest)
    np.testing.assert_array_equal(labels, [0, 0, 0, 0, 1, 1, 1, 2, 2])


def test_nearest_neighbour_clusters_match_scipy_components():
    x = np.random.default_rng(2).normal(size=(500, 3)).astype(np.float32)
    nearest = np.asarray(knn(x, 1).indices[:, 0])
    labels = np.asarray(nearest_neighbour_clusters(nearest))
    graph = coo_matrix((np.ones(500), (np.arange(500), nearest)), shape=(500, 500))
    count, expected = connected_components(graph, directed=False)
    assert labels.max() + 1 == count and 50 < count < 400  # many small clusters, as in JULE
    # Same partition (labels equal up to renaming).
    pairs = set(zip(labels.tolist(), expected.tolist()))
    assert len(pairs) == count


def test_bad_inputs_are_errors():
    with pytest.raises(ValueError, match="1 <= k < N"):
        knn(np.zeros((3, 2)), 3)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        knn(np.zeros(3), 1)


def numpy_gdl(indices, weights, labels, c):
    """A_us(a -> b) = 1^T W[C_b, C_a] W[C_a, C_b] 1 with a dense W, the definition itself."""
    n = len(labels)
    w = np.zeros((n, n))
    for i in range(n):
        w[i, indices[i]] = weights[i]
    a_us = np.zeros((c, c))
    for a in range(c):
        ia = labels == a
        for b in range(c):
            ib = labels == b
            a_us[a, b] = w[np.ix_(ib, ia)].sum(0) @ w[np.ix_(ia, ib)].sum(1)
    return a_us


def test_gdl_affinity_of_two_tiny_clusters_by_hand():
    # Samples 0, 1 in cluster 0 and 2 in cluster 1; edges 0->1 (0.5), 1->0 (0.25), 0->2 (1.0),
    # 2->0 (0.8), 1->2 (0.3), 2->1 (0.6) (k = 2).
    graph = AffinityGraph(indices=jnp.array([[1, 2], [0, 2], [0, 1]]),
                          weights=jnp.array([[0.5, 1.0], [0.25, 0.3], [0.8, 0.6]]),
                          sigma2=jnp.array(1.0))
    a_us, a = gdl_affinity(graph, jnp.array([0, 0, 1]), 2)
    # A_us(0 -> 1): m in {0, 1}: in_1(m) out_1(m) = W_20 W_02 + W_21 W_12 = 0.8*1.0 + 0.6*0.3
    # A_us(1 -> 0): m = 2: (W_02 + W_12)(W_20 + W_21) = 1.3 * 1.4
    np.testing.assert_allclose(a_us[0, 1], 0.8 + 0.18, rtol=1e-6)
    np.testing.assert_allclose(a_us[1, 0], 1.3 * 1.4, rtol=1e-6)
    # Within cluster 0: m = 0: W_10 W_01, m = 1: W_01 W_10.
    np.testing.assert_allclose(a_us[0, 0], 2 * 0.5 * 0.25, rtol=1e-6)
    # A(0, 1) = A_us(0->1) / |C_1|^2 + A_us(1->0) / |C_0|^2
    np.testing.assert_allclose(a[0, 1], 0.98 / 1 + 1.82 / 4, rtol=1e-6)
    assert float(a[0, 0]) == 0.0 and float(a[1, 0]) == float(a[0, 1])


def test_gdl_affinity_matches_the_dense_definition():
    x = np.random.default_rng(3).normal(size=(120, 4))
    graph = affinity_graph(x, 6)
    labels = np.asarray(nearest_neighbour_clusters(graph.indices[:, 0]))
    c = int(labels.max()) + 1
    a_us, a = gdl_affinity(graph, labels, c)
    expected = numpy_gdl(np.asarray(graph.indices), np.asarray(graph.weights, np.float64), labels, c)
    np.testing.assert_allclose(a_us, expected, rtol=1e-4, atol=1e-6)
    sizes = np.bincount(labels, minlength=c).astype(float)
    directed = expected / sizes[None, :] ** 2
    sym = directed + directed.T
    np.fill_diagonal(sym, 0.0)
    np.testing.assert_allclose(a, sym, rtol=1e-4, atol=1e-6)


def numpy_merge_sequence(a_us, sizes, num_merges, kc, lam):
    """JULE's merge loop written plainly: recompute every affinity and score at every merge."""
    a_us, sizes = a_us.astype(np.float64).copy(), sizes.astype(np.float64).copy()
    active = list(range(len(sizes)))
    merges = []
    for _ in range(num_merges):
        best_score, best_pair = -np.inf, None
        for i in active:
            aff = {j: a_us[i, j] / sizes[j] ** 2 + a_us[j, i] / sizes[i] ** 2
                   for j in active if j != i}
            values = sorted(aff.values(), reverse=True)[:kc]
            score = values[0] + lam / (kc - 1) * sum(values[0] - v for v in values[1:])
            neighbour = min(j for j in aff if aff[j] == values[0])
            if score > best_score:
                best_score, best_pair = score, (i, neighbour)
        keep, gone = min(best_pair), max(best_pair)
        a_us[:, keep] += a_us[:, gone]
        a_us[keep, :] += a_us[gone, :]
        sizes[keep] += sizes[gone]
        active.remove(gone)
        merges.append((keep, gone))
    return merges


@pytest.mark.parametrize("seed,lam", [(0, 1.0), (1, 1.0), (2, 0.0), (3, 2.0)])
def test_merge_sequence_matches_the_numpy_reference(seed, lam):
    rng = np.random.default_rng(seed)
    c = 14
    a_us = rng.gamma(1.0, size=(c, c)) * (rng.random((c, c)) < 0.5)  # sparse-ish, as GDL's are
    sizes = rng.integers(1, 6, size=c).astype(np.float64)
    expected = numpy_merge_sequence(a_us, sizes, c - 3, 5, lam)
    for cache_size in (None, 5, 8):  # the plain path and the cached one (5: many re-scans)
        state, merges = merge_clusters(merge_state(a_us, sizes), c - 3, num_neighbours=5,
                                       local_weight=lam, cache_size=cache_size, rescan_rows=4)
        assert [tuple(m) for m in np.asarray(merges).tolist()] == expected, cache_size
        assert int(state.active.sum()) == 3 and float(state.sizes.sum()) == sizes.sum()


def test_cached_merge_scan_equals_the_plain_one_on_a_real_graph():
    x = np.random.default_rng(5).normal(size=(600, 6))
    graph = affinity_graph(x, 10)
    labels = np.asarray(nearest_neighbour_clusters(graph.indices[:, 0]))
    c = int(labels.max()) + 1
    a_us, _ = gdl_affinity(graph, labels, c)
    start = merge_state(a_us, np.bincount(labels, minlength=c))
    _, plain = merge_clusters(start, c - 10, cache_size=None)
    _, cached = merge_clusters(start, c - 10, cache_size=6, rescan_rows=8)
    np.testing.assert_array_equal(cached, plain)


def test_merges_in_two_calls_equal_one_call_and_labels_resolve():
    x = np.random.default_rng(4).normal(size=(200, 3))
    graph = affinity_graph(x, 8)
    labels = np.asarray(nearest_neighbour_clusters(graph.indices[:, 0]))
    c = int(labels.max()) + 1
    a_us, _ = gdl_affinity(graph, labels, c)
    start = merge_state(a_us, np.bincount(labels, minlength=c))
    once, merges = merge_clusters(start, c - 4)
    half, first = merge_clusters(start, 7)
    twice, second = merge_clusters(half, c - 11)
    np.testing.assert_array_equal(merges, np.concatenate([first, second]))
    final = np.asarray(resolve_labels(once.parent, labels))
    assert sorted(np.unique(final).tolist()) == [0, 1, 2, 3]
    # Every sample follows its initial cluster: the merge list replayed on sets gives the same.
    groups = {i: {i} for i in range(c)}
    for keep, gone in np.asarray(merges).tolist():
        groups[keep] |= groups.pop(gone)
    by_slot = {slot: rank for rank, slot in enumerate(sorted(groups))}
    replay = np.array([next(by_slot[s] for s, g in groups.items() if l in g) for l in labels])
    np.testing.assert_array_equal(final, replay)
