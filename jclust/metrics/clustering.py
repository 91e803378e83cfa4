"""Clustering metrics: ACC (Hungarian), NMI, ARI and purity.

Plain NumPy + SciPy, computed on the host from a contingency table. NMI and
ARI follow ``sklearn.metrics`` exactly, including its conventions for
degenerate labelings (a single cluster on one or both sides).

All functions take two 1-D label arrays of the same non-zero length. Labels can
be arbitrary (non-contiguous, negative) integers; they are relabelled to
``0..m-1`` in sorted order.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import scipy.optimize

if TYPE_CHECKING:  # annotations only: the metrics run on the host and need no jax at run time
    import jax

    # Labels may be host or device arrays (converted with np.asarray).
    Array = jax.Array | np.ndarray

_AVERAGE_METHODS = ("arithmetic", "geometric", "min", "max")


def _check_labels(y_true, y_pred):
    """Returns both labelings as 1-D numpy arrays after validating them."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.ndim != 1 or y_pred.ndim != 1:
        raise ValueError(
            "Labels must be 1-D arrays, got y_true.shape="
            f"{y_true.shape} and y_pred.shape={y_pred.shape}."
        )
    if y_true.shape[0] != y_pred.shape[0]:
        raise ValueError(
            "y_true and y_pred must have the same length, got "
            f"{y_true.shape[0]} and {y_pred.shape[0]}."
        )
    if y_true.shape[0] == 0:
        raise ValueError("Labels must be non-empty, got 0 examples.")
    return y_true, y_pred


def contingency(y_true: Array, y_pred: Array) -> np.ndarray:
    """Counts how many examples of each class fall in each predicted cluster.

    Args:
      y_true: [n] int, ground-truth classes (any integer values).
      y_pred: [n] int, predicted clusters (any integer values).

    Returns:
      [n_pred_clusters, n_true_classes] int64, where entry ``[i, j]`` counts
      the examples with the i-th smallest predicted label and the j-th smallest
      true label.
    """
    y_true, y_pred = _check_labels(y_true, y_pred)
    classes_true, t = np.unique(y_true, return_inverse=True)
    classes_pred, p = np.unique(y_pred, return_inverse=True)
    table = np.zeros((classes_pred.shape[0], classes_true.shape[0]), np.int64)
    np.add.at(table, (p.ravel(), t.ravel()), 1)
    return table


def accuracy(y_true: Array, y_pred: Array) -> float:
    """Unsupervised clustering accuracy with the best one-to-one matching.

    Each cluster is matched to at most one class (and each class to at most
    one cluster) so that the number of correctly matched examples is maximal
    (Hungarian algorithm). With more clusters than classes the unmatched
    clusters count as wrong; use :func:`purity` for over-clustering.

    Args:
      y_true: [n] int, ground-truth classes.
      y_pred: [n] int, predicted clusters.

    Returns:
      float in [0, 1].
    """
    table = contingency(y_true, y_pred)
    rows, cols = scipy.optimize.linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / table.sum())


def _entropy(counts):
    """Natural-log entropy of a distribution given by counts: [m] -> float."""
    counts = counts[counts > 0].astype(np.float64)
    p = counts / counts.sum()
    return float(-np.sum(p * np.log(p)))


def _mutual_info(table):
    """Natural-log mutual information of a [m_pred, m_true] count table.

    Same arithmetic as ``sklearn.metrics.mutual_info_score`` (terms below
    machine epsilon are zeroed and the sum is clipped at 0).
    """
    n = table.sum()
    pi = table.sum(axis=1)
    pj = table.sum(axis=0)
    if pi.size == 1 or pj.size == 1:
        return 0.0
    nzx, nzy = np.nonzero(table)
    nz = table[nzx, nzy].astype(np.float64)
    outer = pi[nzx].astype(np.int64) * pj[nzy].astype(np.int64)
    log_outer = -np.log(outer) + math.log(pi.sum()) + math.log(pj.sum())
    frac = nz / n
    mi = frac * (np.log(nz) - math.log(n)) + frac * log_outer
    mi = np.where(np.abs(mi) < np.finfo(mi.dtype).eps, 0.0, mi)
    return float(np.clip(mi.sum(), 0.0, None))


def nmi(y_true: Array, y_pred: Array, average_method: str = "arithmetic") -> float:
    """Normalised mutual information, as sklearn's ``normalized_mutual_info_score``.

    ``MI / mean(H(true), H(pred))`` where the mean is given by
    ``average_method``. Degenerate cases follow scikit-learn: 1.0 when both
    labelings have a single cluster, 0.0 whenever the mutual information is 0
    (in particular when exactly one labeling has a single cluster).

    Args:
      y_true: [n] int, ground-truth classes.
      y_pred: [n] int, predicted clusters.
      average_method: "arithmetic", "geometric", "min" or "max".

    Returns:
      float in [0, 1].
    """
    if average_method not in _AVERAGE_METHODS:
        raise ValueError(
            f"average_method must be one of {_AVERAGE_METHODS}, got "
            f"{average_method!r}."
        )
    table = contingency(y_true, y_pred)
    if table.shape == (1, 1):
        return 1.0
    mi = _mutual_info(table)
    if mi == 0.0:
        return 0.0
    h_pred = _entropy(table.sum(axis=1))
    h_true = _entropy(table.sum(axis=0))
    if average_method == "arithmetic":
        norm = 0.5 * (h_true + h_pred)
    elif average_method == "geometric":
        norm = math.sqrt(h_true * h_pred)
    elif average_method == "min":
        norm = min(h_true, h_pred)
    else:
        norm = max(h_true, h_pred)
    return float(mi / norm)


def ari(y_true: Array, y_pred: Array) -> float:
    """Adjusted Rand index, as ``sklearn.metrics.adjusted_rand_score``.

    Computed from the pair-confusion counts of the contingency table with
    Python integers (no overflow). Returns 1.0 when the two labelings induce
    the same pairs (this includes both being a single cluster, or both being
    all singletons).

    Args:
      y_true: [n] int, ground-truth classes.
      y_pred: [n] int, predicted clusters.

    Returns:
      float in [-0.5, 1].
    """
    table = contingency(y_true, y_pred)
    n = int(table.sum())
    sum_squares = int(np.sum(table.astype(object) ** 2))
    rows = table.sum(axis=1).astype(object)
    cols = table.sum(axis=0).astype(object)
    # Ordered pairs: tp = same in both, fp = same cluster / different class,
    # fn = same class / different cluster, tn = different in both.
    tp = sum_squares - n
    fp = int(np.sum(rows**2)) - sum_squares
    fn = int(np.sum(cols**2)) - sum_squares
    tn = n * n - fp - fn - sum_squares
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def purity(y_true: Array, y_pred: Array) -> float:
    """Majority-vote purity: each cluster predicts its most frequent class.

    Unlike :func:`accuracy`, several clusters may map to the same class, so it
    suits over-clustering (K much larger than the number of classes).

    Args:
      y_true: [n] int, ground-truth classes.
      y_pred: [n] int, predicted clusters.

    Returns:
      float in (0, 1].
    """
    table = contingency(y_true, y_pred)
    return float(table.max(axis=1).sum() / table.sum())


def evaluate(y_true: Array, y_pred: Array) -> dict[str, float]:
    """All clustering metrics at once.

    Args:
      y_true: [n] int, ground-truth classes.
      y_pred: [n] int, predicted clusters.

    Returns:
      dict with python floats ``acc``, ``nmi`` (arithmetic), ``ari``, ``purity``.
    """
    return dict(
        acc=accuracy(y_true, y_pred),
        nmi=nmi(y_true, y_pred),
        ari=ari(y_true, y_pred),
        purity=purity(y_true, y_pred),
    )


def cluster_sizes(labels: Array, num_clusters: int, prefix: str = "") -> dict[str, int | float]:
    """Label-free health of a partition: used/empty clusters, min/max size, size entropy.

    Args:
      labels: [N] int in [0, num_clusters).
      num_clusters: K (empty clusters count).
      prefix: prepended to every key (e.g. "pseudo_" for an over-clustering).

    Returns:
      {prefix + "clusters_used", "empty_clusters", "cluster_size_min", "cluster_size_max",
      "size_entropy"}: python ints, and the entropy of the size distribution divided by log K
      as a python float (1 = all equal, 0 = one cluster; 0 when K = 1).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D [N], got shape {labels.shape}.")
    sizes = np.bincount(labels, minlength=num_clusters)
    frac = sizes[sizes > 0] / labels.size
    entropy = (float(-np.sum(frac * np.log(frac)) / math.log(num_clusters)) if num_clusters > 1
               else 0.0)
    stats = {"clusters_used": int(np.sum(sizes > 0)), "empty_clusters": int(np.sum(sizes == 0)),
             "cluster_size_min": int(sizes.min()), "cluster_size_max": int(sizes.max()),
             "size_entropy": entropy}
    return {prefix + key: value for key, value in stats.items()}
