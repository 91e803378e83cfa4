"""The confusion matrix: true classes against clusters in Hungarian-matched order."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from jclust.viz.common import _match, _order_from_table, _save, contingency_table

if TYPE_CHECKING:
    from jclust.viz.common import Array, StrPath


def _compact_count(count: int) -> str:
    """At most 4 characters: 999, 1.2k, 18k, 999k, 1.2M, 18M."""
    if count < 1000:
        return str(count)
    for scale, suffix in ((1e3, "k"), (1e6, "M"), (1e9, "G")):
        value = count / scale
        if value < 9.95:
            return f"{value:.1f}{suffix}"
        if value < 999.5:
            return f"{value:.0f}{suffix}"
    return f"{count:.0e}"


def confusion_matrix(true_labels: Array, pred_labels: Array, path: StrPath, *, num_clusters: int,
                     class_names: Sequence[str] | None = None, title: str = "",
                     num_classes: int | None = None) -> np.ndarray:
    """Heat map of true classes against clusters, columns in Hungarian-matched order.

    Colour is the row-normalised fraction (where each class went); each cell shows its count.
    Matched (class, cluster) pairs are outlined and, for K == C, lie on the diagonal.

    Args:
      true_labels: int [N], classes in ``0..C-1``.
      pred_labels: int [N], clusters in ``0..num_clusters-1``.
      path: where to write the PNG.
      num_clusters: K.
      class_names: optional C names; C defaults to ``len(class_names)``, else ``max(true) + 1``.
      title: figure title; ACC (one-to-one Hungarian matching, as in metrics) is appended.
      num_classes: C, when neither class_names nor the labels show it.

    Returns:
      int64 [C, K] contingency matrix in the original cluster order: entry [i, j] counts the
      examples of class i in cluster j.
    """
    from matplotlib.collections import PatchCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle
    true_labels = np.asarray(true_labels)
    if num_classes is None:
        num_classes = (len(class_names) if class_names is not None
                       else int(true_labels.max()) + 1 if true_labels.size else 1)
    table = contingency_table(true_labels, pred_labels, num_classes, num_clusters)
    order = _order_from_table(table)
    rows, cols = _match(table)
    total = int(table.sum())
    acc = table[rows, cols].sum() / total if total else float("nan")
    shown = table[:, order]
    row_sums = shown.sum(axis=1, keepdims=True)
    frac = np.divide(shown, row_sums, out=np.zeros(shown.shape), where=row_sums > 0)

    cell_in = float(np.clip(9.0 / max(num_clusters, num_classes), 0.36, 0.6))
    name_w = 0.3 + 0.075 * max((len(str(s)) for s in (class_names or [num_classes])), default=1)
    fig_w = name_w + num_clusters * cell_in + 1.6
    fig_h = num_classes * cell_in + 1.5
    fig = Figure(figsize=(fig_w, fig_h), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto",
                      interpolation="nearest")
    cbar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
    cbar.set_label("fraction of the class (row)")

    # Fit the longest number into ~85% of a cell's width (digits are ~0.6 em wide); when that
    # gets too small to read, write big counts compactly ("18k") instead.
    cell_pt = cell_in * 72
    digits = len(str(int(shown.max()))) if shown.size else 1
    fontsize = min(10.0, 0.85 * cell_pt / (0.62 * digits), 0.55 * cell_pt)
    compact = fontsize < 7.5 and digits > 3
    if compact:
        fontsize = min(10.0, 0.85 * cell_pt / (0.62 * 4), 0.55 * cell_pt)
    for i in range(num_classes):
        for k in range(num_clusters):
            count = int(shown[i, k])
            label = _compact_count(count) if compact else str(count)
            ax.text(k, i, label, ha="center", va="center", fontsize=fontsize,
                    color="white" if frac[i, k] > 0.55 else ("0.55" if count == 0 else "black"))
    position = {cluster: col for col, cluster in enumerate(order)}
    boxes = [Rectangle((position[k] - 0.5, r - 0.5), 1, 1) for r, k in zip(rows, cols)]
    ax.add_collection(PatchCollection(boxes, facecolor="none", edgecolor="darkorange",
                                      linewidth=1.5))

    ax.set_xticks(np.arange(num_clusters), [str(k) for k in order])
    ax.set_yticks(np.arange(num_classes),
                  [str(s) for s in class_names] if class_names is not None
                  else [str(i) for i in range(num_classes)])
    tick_font = float(np.clip(cell_pt * 0.4, 7, 10))
    ax.tick_params(axis="both", labelsize=tick_font, length=0)
    ax.set_xlabel("cluster (ordered by Hungarian match; matched cells outlined)")
    ax.set_ylabel("true class")
    head = f"ACC {acc:.1%} · N={total:,} · K={num_clusters}"
    ax.set_title(f"{title}\n{head}" if title else head, fontsize=11)
    _save(fig, path)
    return table
