"""Pseudo-label samplers (DeepCluster)."""

import numpy as np
import pytest

from jclust.data import samplers


def test_uniform_sampler_visits_non_empty_classes_equally():
    # Class 0 has 90 members, class 1 has 8, class 2 has 2, class 5 has 0 (ids need not be dense).
    labels = np.array([0] * 90 + [1] * 8 + [2] * 2 + [7] * 0)
    idx = samplers.uniform_over_labels(labels, 100, np.random.default_rng(0))
    assert idx.shape == (100,) and idx.min() >= 0 and idx.max() < 100
    counts = np.bincount(labels[idx], minlength=3)
    # 100 // 3 + 1 = 34 draws per class before the cut to 100: each class gets 32..34.
    assert counts.min() >= 32 and counts.max() <= 34
    # The big class is drawn without replacement, the small ones with.
    big = idx[labels[idx] == 0]
    assert len(np.unique(big)) == len(big)
    assert set(idx[labels[idx] == 2]) == {98, 99}


def test_uniform_sampler_is_reproducible_and_skips_empty_classes():
    labels = np.array([3, 3, 3, 9, 9, 9, 9])
    a = samplers.uniform_over_labels(labels, 7, np.random.default_rng([1, 2]))
    b = samplers.uniform_over_labels(labels, 7, np.random.default_rng([1, 2]))
    np.testing.assert_array_equal(a, b)
    assert set(labels[a]) == {3, 9}
    with pytest.raises(ValueError):
        samplers.uniform_over_labels(np.array([], int), 5, np.random.default_rng(0))


def test_inverse_size_weights_balance_classes():
    labels = np.array([0, 0, 0, 1])
    w = samplers.inverse_size_weights(labels, 3)
    np.testing.assert_allclose(w.mean(), 1.0)
    np.testing.assert_allclose(w[:3].sum(), w[3])  # equal total weight per class
