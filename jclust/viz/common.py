"""What the picture kinds share: label checks, the contingency table and its Hungarian order,
and the atomic PNG writer."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import scipy.optimize

if TYPE_CHECKING:  # annotations only: nothing here needs jax at run time
    import jax
    from matplotlib.figure import Figure

    # Inputs may be host or device arrays (converted with np.asarray); paths str or pathlib.
    Array = jax.Array | np.ndarray
    StrPath = str | os.PathLike[str]

# matplotlib is imported inside the functions that draw: importing it costs ~0.6 s, which every
# training process would otherwise pay at start-up whether or not it draws a picture.

_DPI = 100


def _check_ids(values: np.ndarray, count: int, what: str) -> np.ndarray:
    """Returns ``values`` as a 1-D int64 array after checking it lies in ``0..count-1``."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {values.shape}.")
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{what} must be integers, got dtype {values.dtype}.")
    values = values.astype(np.int64)
    if values.size and (values.min() < 0 or values.max() >= count):
        raise ValueError(f"{what} must lie in 0..{count - 1}, got values "
                         f"{values.min()}..{values.max()}.")
    return values


def contingency_table(true_labels: Array, pred_labels: Array, num_classes: int,
                      num_clusters: int) -> np.ndarray:
    """int64 [num_classes, num_clusters]: how many examples of class i fell in cluster j.

    Unlike :func:`jclust.metrics.contingency`, absent classes and empty clusters keep their
    (all-zero) row or column, so indices are the label values themselves.

    Args:
      true_labels: int [N], classes in ``0..num_classes-1``.
      pred_labels: int [N], clusters in ``0..num_clusters-1``.
      num_classes: C.
      num_clusters: K.

    Returns:
      int64 [C, K]; entry [i, j] counts the examples of class i in cluster j.
    """
    true_labels = _check_ids(true_labels, num_classes, "true_labels")
    pred_labels = _check_ids(pred_labels, num_clusters, "pred_labels")
    if true_labels.shape != pred_labels.shape:
        raise ValueError(f"true_labels and pred_labels differ in length: {true_labels.size} vs "
                         f"{pred_labels.size}.")
    flat = np.bincount(true_labels * num_clusters + pred_labels,
                       minlength=num_classes * num_clusters)
    return flat.reshape(num_classes, num_clusters)


def _match(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching maximising matched counts. table: [C, K]. Returns (classes, clusters)."""
    return scipy.optimize.linear_sum_assignment(table, maximize=True)


def _order_from_table(table: np.ndarray) -> np.ndarray:
    """Cluster order for a contingency table [C, K]: matched by class, then the rest by size."""
    _, cols = _match(table)  # rows come back sorted, so cols follow the class order
    sizes = table.sum(axis=0)
    rest = np.setdiff1d(np.arange(table.shape[1]), cols)
    rest = rest[np.argsort(-sizes[rest], kind="stable")]
    return np.concatenate([cols, rest]).astype(np.int64)


def matched_order(true_labels: Array, pred_labels: Array, num_clusters: int,
                  num_classes: int) -> np.ndarray:
    """Orders the clusters so the one matched to class 0 comes first, then class 1's, and so on.

    The matching is the Hungarian one (as for ACC): a one-to-one map between classes and clusters
    maximising the number of examples whose cluster is matched to their class.

    Args:
      true_labels: int [N], classes in ``0..num_classes-1``.
      pred_labels: int [N], clusters in ``0..num_clusters-1``.
      num_clusters: K.
      num_classes: C.

    Returns:
      int64 [K], a permutation of ``0..K-1``: the matched clusters in class order, then the
      unmatched ones (when K > C) by decreasing size, ties by lower id.
    """
    return _order_from_table(contingency_table(true_labels, pred_labels, num_classes, num_clusters))


def _save(fig: Figure, path: StrPath, dpi: int = _DPI) -> None:
    """Writes ``fig`` as a PNG at ``path`` atomically, creating the parent folders."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = path + ".tmp.png"
    FigureCanvasAgg(fig)
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
