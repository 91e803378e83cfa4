"""k-NN search, JULE's affinity graph and 1-NN components against scikit-learn, scipy and by hand."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.neighbors import NearestNeighbors

from jclust.cluster import affinity_graph, knn, nearest_neighbour_clusters


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
