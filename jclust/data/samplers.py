"""Example orders that depend on the current clustering (host-side numpy, seeded)."""

from __future__ import annotations

import numpy as np


def uniform_over_labels(labels: np.ndarray, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """DeepCluster's sampler: an epoch that visits every non-empty pseudo-class equally often.

    With K' non-empty classes, ``num_samples // K' + 1`` examples are drawn from each class
    (without replacement when the class is large enough, with replacement otherwise), the draws
    are concatenated, shuffled and cut to ``num_samples``. Empty classes are skipped, so a
    collapsed clustering cannot make the epoch sample an absent class.

    Args:
      labels: int [N] pseudo-labels (any non-negative ids; the number of classes is inferred).
      num_samples: length of the epoch, e.g. N.
      rng: numpy Generator (seed it with the run's seed and the epoch for reproducibility).

    Returns:
      int64 [num_samples] example indices.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty [N] array, got shape {labels.shape}")
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    order = np.argsort(labels, kind="stable")
    classes, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    per_class = num_samples // len(classes) + 1
    draws = [rng.choice(order[start:start + count], per_class, replace=count < per_class)
             for start, count in zip(starts, counts)]
    indices = np.concatenate(draws)
    rng.shuffle(indices)
    return indices[:num_samples].astype(np.int64)


def inverse_size_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-example loss weights 1/|class|, scaled to mean 1 over the examples.

    The re-weighting alternative to :func:`uniform_over_labels`: every non-empty class then carries
    the same total weight. labels: int [N] in [0, num_classes) -> float32 [N].
    """
    labels = np.asarray(labels)
    sizes = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = 1.0 / sizes[labels]
    return (weights / weights.mean()).astype(np.float32)


def grouped_by_label(labels: np.ndarray, group_size: int, rng: np.random.Generator) -> np.ndarray:
    """One epoch in which examples of the same label arrive in runs of ``group_size``.

    Every example appears exactly once. Each label's examples are shuffled and cut into runs of
    ``group_size`` (the last run of a label may be shorter); the runs of all labels are shuffled
    and concatenated. A batch cut from the result then holds about ``batch / group_size`` runs,
    so it contains same-label pairs even when the labels are many and small (JULE's first
    periods: ~9,000 clusters of ~8 examples, where a random batch of 100 holds about one pair).
    Negative labels mean "no label yet": those examples form runs of one.

    Args:
      labels: int [N] labels (any ids; negative = unlabelled).
      group_size: examples per run, >= 1 (1: a plain permutation).
      rng: numpy Generator (seed it with the run's seed and the period for reproducibility).

    Returns:
      int64 [N], a permutation of 0..N-1.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty [N] array, got shape {labels.shape}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    n = labels.shape[0]
    # Sort by (label, random key): each label's examples become a shuffled contiguous block.
    order = np.lexsort((rng.random(n), labels))
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    run_start = (rank % group_size == 0) | (sorted_labels < 0)
    run_id = np.cumsum(run_start) - 1
    run_order = rng.permutation(run_id[-1] + 1)
    # Stable sort by the runs' shuffled ranks keeps each run's examples together and in order.
    return order[np.argsort(np.argsort(run_order)[run_id], kind="stable")].astype(np.int64)
