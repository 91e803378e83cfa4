"""Pseudo-label samplers (DeepCluster's uniform sampling, JULE's grouped batches)."""

import math

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


def test_grouped_sampler_is_a_permutation_of_same_label_runs():
    rng = np.random.default_rng(0)
    labels = np.concatenate([np.repeat(np.arange(30), rng.integers(1, 12, 30)), [-1] * 7])
    labels = labels[rng.permutation(labels.size)]
    n, g = labels.size, 4
    order = samplers.grouped_by_label(labels, g, np.random.default_rng(1))
    np.testing.assert_array_equal(np.sort(order), np.arange(n))
    seq = labels[order]
    # Cut the sequence into maximal same-label stretches: a stretch holds whole runs of one
    # label (two runs of a label may meet by chance), and the runs of a label of size s are
    # ceil(s / g) with at most one shorter than g; unlabelled examples come one at a time.
    for label in np.unique(labels):
        size = int(np.sum(labels == label))
        positions = np.flatnonzero(seq == label)
        if label < 0:
            assert size == 7
            continue
        breaks = np.flatnonzero(np.diff(positions) > 1)
        stretches = np.split(positions, breaks + 1)
        assert len(stretches) <= math.ceil(size / g)
        assert sum(len(s) for s in stretches) == size
    # Same-label neighbours in the sequence: far more than in a shuffle.
    same = np.sum(seq[1:] == seq[:-1])
    shuffled = labels[np.random.default_rng(2).permutation(n)]
    assert same > 5 * max(1, np.sum(shuffled[1:] == shuffled[:-1]))
    again = samplers.grouped_by_label(labels, g, np.random.default_rng(1))
    np.testing.assert_array_equal(order, again)
    other = samplers.grouped_by_label(labels, g, np.random.default_rng(3))
    assert not np.array_equal(order, other)


def test_grouped_sampler_runs_have_the_group_size():
    labels = np.repeat([4, 9], [10, 3])
    for seed in range(5):
        seq = labels[samplers.grouped_by_label(labels, 4, np.random.default_rng(seed))]
        # Label 9 is one run of 3; label 4 runs of 4, 4 and 2, which only label 9's run can
        # separate: one stretch of 10, or two of 4 + 6 or 2 + 8.
        nine = np.flatnonzero(seq == 9)
        np.testing.assert_array_equal(nine, np.arange(nine[0], nine[0] + 3))
        four = np.flatnonzero(seq == 4)
        stretches = np.split(four, np.flatnonzero(np.diff(four) > 1) + 1)
        assert sorted(len(s) for s in stretches) in ([10], [4, 6], [2, 8])
    np.testing.assert_array_equal(
        np.sort(samplers.grouped_by_label(labels, 1, np.random.default_rng(0))), np.arange(13))
    with pytest.raises(ValueError, match="group_size"):
        samplers.grouped_by_label(labels, 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="non-empty"):
        samplers.grouped_by_label(np.zeros((0,), int), 2, np.random.default_rng(0))
