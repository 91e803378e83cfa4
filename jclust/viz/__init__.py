"""Pictures of a clustering: example grids, confusion matrices, 2-D projections, training curves.

Everything here runs on the host with NumPy and matplotlib's object API (``Figure`` plus the Agg
canvas, never ``pyplot``), so it works headless, from threads, and never opens a window. Every
plotting function writes one PNG atomically (to ``path + ".tmp.png"``, then ``os.replace``),
creating the parent folders.

Conventions: N examples, K clusters with ids ``0..K-1``, classes ``0..C-1`` (ground truth, when
known).

One module per picture kind (``grid``, ``confusion``, ``projection``, ``curves``) and their
shared helpers (``common``); the public names are all here.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from jclust.viz.common import contingency_table, matched_order
from jclust.viz.confusion import confusion_matrix
from jclust.viz.curves import training_curves
from jclust.viz.grid import cluster_grid, top_per_cluster
from jclust.viz.projection import embedding_projection

__all__ = ["cluster_grid", "confusion_matrix", "contingency_table", "embedding_projection",
           "matched_order", "top_per_cluster", "training_curves", "write_pictures"]


def write_pictures(out: str, inputs: np.ndarray | None, labels: np.ndarray,
                   confidence: np.ndarray, embeddings: np.ndarray, *, num_clusters: int,
                   class_labels: np.ndarray | None = None,
                   class_names: Sequence[str] | None = None, title: str = "",
                   projection: str = "pca", max_points: int = 5000, seed: int = 0) -> list[str]:
    """The pictures of one assignment, written into the folder ``out``.

    ``clusters.png`` (the most confident images of each cluster; only when ``inputs`` are images
    [N, H, W, C]), ``confusion.png`` (only with ``class_labels`` [N]) and ``embedding.png`` (a 2-D
    ``projection`` of ``embeddings`` [N, D]); ``labels`` [N] and ``confidence`` [N] are the
    assignment.

    Args:
      out: the folder (created if missing).
      inputs: uint8 or [0, 1] float images [N, H, W, C] (or [N, H, W]), or None for no grid.
      labels: int [N], cluster ids in ``0..num_clusters-1``.
      confidence: float [N]; higher is more confident (orders the grid).
      embeddings: float [N, D], projected to 2-D.
      num_clusters: K.
      class_labels: optional int [N] true classes (the confusion matrix, the grid's majorities).
      class_names: optional names of the classes (indexed by class id).
      title: every figure's title.
      projection: "pca" or "tsne", see :func:`embedding_projection`.
      max_points, seed: the projection's subset size and seed.

    Returns:
      The paths written.
    """
    paths = []
    if inputs is not None:
        paths.append(os.path.join(out, "clusters.png"))
        cluster_grid(inputs, labels, confidence, paths[-1], num_clusters=num_clusters,
                     class_labels=class_labels, class_names=class_names, title=title)
    if class_labels is not None:
        paths.append(os.path.join(out, "confusion.png"))
        confusion_matrix(class_labels, labels, paths[-1], num_clusters=num_clusters,
                         class_names=class_names, title=title)
    paths.append(os.path.join(out, "embedding.png"))
    embedding_projection(embeddings, labels, paths[-1], method=projection, max_points=max_points,
                         seed=seed, title=title)
    return paths
