"""Average linkage (cosine) against scipy's hierarchical clustering."""

import numpy as np
import pytest
from scipy.cluster import hierarchy

from jclust.cluster import linkage


def same_partition(a, b):
    a, b = np.asarray(a), np.asarray(b)
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("num_groups", [1, 3, 10, 29])
def test_average_linkage_matches_scipy(num_groups):
    rng = np.random.default_rng(num_groups)
    points = (rng.normal(size=(30, 5)) + np.repeat(rng.normal(size=(3, 5)) * 3, 10, 0))
    out = linkage.average_linkage(points.astype(np.float32), num_groups)
    tree = hierarchy.linkage(points, method="average", metric="cosine")
    expected = hierarchy.cut_tree(tree, n_clusters=num_groups)[:, 0]
    assert same_partition(out.labels, expected)
    assert sorted(set(np.asarray(out.labels).tolist())) == list(range(num_groups))
    np.testing.assert_allclose(np.asarray(out.heights), tree[:30 - num_groups, 2], atol=1e-5)


def test_merges_record_survivor_and_absorbed_slots():
    points = np.array([[1, 0], [1, 0.01], [0, 1], [0.01, 1]], np.float32)
    out = linkage.average_linkage(points, 2)
    assert np.asarray(out.merges).tolist() in ([[0, 1], [2, 3]], [[2, 3], [0, 1]])
    assert np.asarray(out.labels).tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="num_groups"):
        linkage.average_linkage(points, 5)
