"""Tests for jclust.metrics.clustering against sklearn and brute force."""

import itertools

import numpy as np
import pytest
import sklearn.metrics

from jclust import metrics

AVERAGE_METHODS = ("arithmetic", "geometric", "min", "max")


def _random_labelings(seed, count=60):
    """Yields (y_true, y_pred) pairs with varied sizes, K and label values."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        n = int(rng.integers(1, 60))
        n_true = int(rng.integers(1, 6))
        n_pred = int(rng.integers(1, 7))
        y_true = rng.integers(0, n_true, n)
        if i % 3 == 0:
            # Correlated prediction: a noisy copy of the truth.
            y_pred = np.where(rng.random(n) < 0.7, y_true, rng.integers(0, n_pred, n))
        else:
            y_pred = rng.integers(0, n_pred, n)
        if i % 4 == 1:
            # Arbitrary, non-contiguous, negative label values.
            y_pred = y_pred * 7 - 3
            y_true = y_true * 5 + 100
        yield y_true, y_pred


def _brute_force_acc(y_true, y_pred):
    """Best accuracy over all one-to-one cluster->class maps (small K only)."""
    classes = np.unique(y_true)
    clusters = np.unique(y_pred)
    size = max(len(classes), len(clusters))
    # Zero-padded square table: a cluster matched to a padding class is wrong.
    table = np.zeros((size, size), np.int64)
    for i, c in enumerate(clusters):
        for j, t in enumerate(classes):
            table[i, j] = np.sum((y_pred == c) & (y_true == t))
    best = max(
        sum(table[i, j] for i, j in enumerate(perm))
        for perm in itertools.permutations(range(size))
    )
    return best / len(y_true)


def _sklearn_purity(y_true, y_pred):
    table = sklearn.metrics.cluster.contingency_matrix(y_true, y_pred)
    return table.max(axis=0).sum() / table.sum()


@pytest.mark.parametrize("average_method", AVERAGE_METHODS)
def test_nmi_matches_sklearn(average_method):
    for y_true, y_pred in _random_labelings(0):
        want = sklearn.metrics.normalized_mutual_info_score(
            y_true, y_pred, average_method=average_method
        )
        got = metrics.nmi(y_true, y_pred, average_method=average_method)
        assert got == pytest.approx(want, rel=1e-10, abs=1e-12), (y_true, y_pred)


def test_ari_matches_sklearn():
    for y_true, y_pred in _random_labelings(1):
        want = sklearn.metrics.adjusted_rand_score(y_true, y_pred)
        got = metrics.ari(y_true, y_pred)
        assert got == pytest.approx(want, rel=1e-10, abs=1e-12), (y_true, y_pred)


def test_accuracy_matches_brute_force():
    for y_true, y_pred in _random_labelings(2, count=40):
        assert metrics.accuracy(y_true, y_pred) == pytest.approx(
            _brute_force_acc(y_true, y_pred), abs=1e-12
        ), (y_true, y_pred)


def test_purity_matches_majority_vote():
    for y_true, y_pred in _random_labelings(3):
        assert metrics.purity(y_true, y_pred) == pytest.approx(
            _sklearn_purity(y_true, y_pred), abs=1e-12
        )


@pytest.mark.parametrize(
    "y_true, y_pred",
    [
        ([0, 0, 0], [0, 0, 0]),  # both single-cluster
        ([0, 0, 0, 0], [0, 1, 2, 3]),  # true single, pred all singletons
        ([0, 1, 2, 3], [5, 5, 5, 5]),  # pred single
        ([0, 1, 2, 3], [3, 2, 1, 0]),  # both all singletons
        ([1], [2]),  # one example
        ([0, 0, 1, 1], [0, 1, 0, 1]),  # independent
    ],
)
def test_degenerate_cases_match_sklearn(y_true, y_pred):
    for method in AVERAGE_METHODS:
        want = sklearn.metrics.normalized_mutual_info_score(
            y_true, y_pred, average_method=method
        )
        assert metrics.nmi(y_true, y_pred, method) == pytest.approx(want, abs=1e-12)
    want = sklearn.metrics.adjusted_rand_score(y_true, y_pred)
    assert metrics.ari(y_true, y_pred) == pytest.approx(want, abs=1e-12)


def test_contingency_relabels_and_orients():
    y_true = np.array([10, 10, 20, 20, 20])
    y_pred = np.array([-1, 7, 7, 7, -1])
    table = metrics.contingency(y_true, y_pred)
    assert table.dtype == np.int64
    # rows: clusters -1, 7; columns: classes 10, 20
    np.testing.assert_array_equal(table, [[1, 1], [1, 2]])


def test_hand_computed_values():
    # Perfect clustering up to renaming.
    assert metrics.accuracy([0, 0, 1, 1, 2], [2, 2, 0, 0, 1]) == 1.0
    # 3 clusters, 2 classes: cluster 2 unmatched -> its example is wrong.
    y_true = [0, 0, 0, 1, 1, 1]
    y_pred = [0, 0, 2, 1, 1, 1]
    assert metrics.accuracy(y_true, y_pred) == pytest.approx(5 / 6)
    assert metrics.purity(y_true, y_pred) == 1.0
    # 1 cluster, 2 classes: the cluster matches the larger class.
    assert metrics.accuracy([0, 0, 0, 1], [4, 4, 4, 4]) == pytest.approx(0.75)
    # sklearn docstring examples.
    assert metrics.ari([0, 0, 1, 1], [0, 0, 1, 2]) == pytest.approx(0.5714285714285714)
    assert metrics.ari([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)
    # MI = ln 2, H(true) = ln 2, H(pred) = ln 3 with pred [0,0,1,2].
    got = metrics.nmi([0, 0, 1, 1], [0, 0, 1, 2], "min")
    assert got == pytest.approx(1.0)
    got = metrics.nmi([0, 0, 1, 1], [0, 0, 1, 2], "arithmetic")
    assert got == pytest.approx(2 * np.log(2) / (np.log(2) + 1.5 * np.log(2)))


def test_evaluate_returns_python_floats():
    out = metrics.evaluate(np.array([0, 1, 1, 2]), np.array([1, 0, 0, 2]))
    assert set(out) == {"acc", "nmi", "ari", "purity"}
    for value in out.values():
        assert type(value) is float
    assert out == {"acc": 1.0, "nmi": 1.0, "ari": 1.0, "purity": 1.0}


@pytest.mark.parametrize(
    "fn", [metrics.accuracy, metrics.nmi, metrics.ari, metrics.purity, metrics.evaluate]
)
def test_input_errors(fn):
    with pytest.raises(ValueError, match="same length"):
        fn([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match="1-D"):
        fn([[0, 1]], [[0, 1]])
    with pytest.raises(ValueError, match="non-empty"):
        fn([], [])


def test_unknown_average_method():
    with pytest.raises(ValueError, match="average_method"):
        metrics.nmi([0, 1], [0, 1], average_method="harmonic")


def test_cluster_sizes_hand_computed():
    from jclust.metrics import cluster_sizes
    # Sizes (2, 2, 0, 0) over K = 4: two used, two empty, entropy log 2 / log 4 = 0.5.
    stats = cluster_sizes(np.array([0, 1, 0, 1]), 4, prefix="pseudo_")
    assert stats == {"pseudo_clusters_used": 2, "pseudo_empty_clusters": 2,
                     "pseudo_cluster_size_min": 0, "pseudo_cluster_size_max": 2,
                     "pseudo_size_entropy": pytest.approx(0.5)}
    assert cluster_sizes(np.zeros(5, int), 1)["size_entropy"] == 0.0
