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
