"""The cluster grid: each cluster's most confident images, one row per cluster."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from jclust.viz.common import _DPI, _check_ids, _save, contingency_table

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from jclust.viz.common import Array, StrPath


def top_per_cluster(labels: Array, confidence: Array, num_clusters: int,
                    per_cluster: int) -> list[np.ndarray]:
    """The most confident members of each cluster.

    Args:
      labels: int [N], cluster ids in ``0..num_clusters-1``.
      confidence: float [N]; higher is more confident. NaN counts as the lowest.
      num_clusters: K.
      per_cluster: at most this many indices per cluster.

    Returns:
      K int64 arrays; entry j holds up to ``per_cluster`` indices i with ``labels[i] == j``,
      sorted by decreasing confidence, ties broken by the lower index. Empty for an empty cluster.
    """
    labels = _check_ids(labels, num_clusters, "labels")
    confidence = np.asarray(confidence, dtype=np.float64)
    if confidence.shape != labels.shape:
        raise ValueError(f"confidence must have shape {labels.shape}, got {confidence.shape}.")
    confidence = np.where(np.isnan(confidence), -np.inf, confidence)
    # lexsort's last key is the primary one: cluster, then -confidence, then index.
    order = np.lexsort((np.arange(labels.size), -confidence, labels))
    starts = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=num_clusters))])
    per_cluster = max(int(per_cluster), 0)
    return [order[starts[j]:min(starts[j] + per_cluster, starts[j + 1])]
            for j in range(num_clusters)]


def _as_images(images) -> np.ndarray:
    """uint8 [N, H, W, C] with C in {1, 3}; accepts [N, H, W] and floats in [0, 1]."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be [N, H, W, C] with C in {{1, 3}}, got {images.shape}.")
    if images.dtype != np.uint8:
        images = np.clip(np.rint(images.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return images


def _row_labels(labels: np.ndarray, num_clusters: int, class_labels: np.ndarray | None,
                class_names: Sequence[str] | None) -> tuple[list[str], list[int | None]]:
    """Each cluster's row label and majority class (None when empty or without class labels).

    labels: int [N] in 0..K-1; class_labels: optional int [N] >= 0.
    """
    sizes = np.bincount(labels, minlength=num_clusters)
    texts = [f"cluster {j} · n={sizes[j]:,}" for j in range(num_clusters)]
    majors: list[int | None] = [None] * num_clusters
    if class_labels is None or not labels.size:
        return texts, majors
    num_classes = int(class_labels.max()) + 1
    table = contingency_table(class_labels, labels, num_classes, num_clusters)
    for j in np.flatnonzero(sizes):
        major = int(np.argmax(table[:, j]))  # ties: the lower class id
        name = (class_names[major] if class_names is not None and major < len(class_names)
                else f"class {major}")
        texts[j] += f"\nmostly {name} {table[major, j] / sizes[j]:.0%}"
        majors[j] = major
    return texts, majors


def _checked_class_labels(class_labels: Array | None, labels: np.ndarray) -> np.ndarray | None:
    """``class_labels`` as int64 [N] of the shape of ``labels``, checked non-negative; or None."""
    if class_labels is None:
        return None
    class_labels = np.asarray(class_labels)
    if class_labels.shape != labels.shape:
        raise ValueError(f"class_labels must have shape {labels.shape}, "
                         f"got {class_labels.shape}.")
    return _check_ids(class_labels, int(class_labels.max(initial=0)) + 1, "class_labels")


def _mosaic(images: np.ndarray, tops: list[np.ndarray], per_cluster: int,
            pad: int) -> np.ndarray:
    """uint8 [K * (H + pad) - pad, per_cluster * (W + pad) - pad, C], white: row j holds the
    images ``tops[j]`` of images [N, H, W, C], ``pad`` pixels apart.

    One mosaic image (a single imshow) instead of K * per_cluster axes: much faster, no gaps.
    """
    _, h, w, c = images.shape
    cell_h, cell_w = h + pad, w + pad
    mosaic = np.full((len(tops) * cell_h - pad, per_cluster * cell_w - pad, c), 255, np.uint8)
    for j, idx in enumerate(tops):
        for col, i in enumerate(idx):
            mosaic[j * cell_h:j * cell_h + h, col * cell_w:col * cell_w + w] = images[i]
    return mosaic


def _show_mosaic(ax: Axes, mosaic: np.ndarray, grid_h: float, pad: int) -> None:
    """Draws the mosaic over all of ``ax`` (``grid_h`` inches high), without ticks or frame."""
    display_px = grid_h * _DPI / mosaic.shape[0]
    interp = "nearest" if display_px >= 1.0 else "antialiased"
    extent = (-0.5, mosaic.shape[1] - 0.5, mosaic.shape[0] - 0.5, -0.5)
    if mosaic.shape[-1] == 1:
        ax.imshow(mosaic[..., 0], cmap="gray", vmin=0, vmax=255, interpolation=interp,
                  extent=extent, aspect="auto")
    else:
        ax.imshow(mosaic, interpolation=interp, extent=extent, aspect="auto")
    ax.set_xlim(-pad / 2 - 0.5, mosaic.shape[1] + pad / 2 - 0.5)
    ax.set_ylim(mosaic.shape[0] + pad / 2 - 0.5, -pad / 2 - 0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _annotate_rows(ax: Axes, tops: list[np.ndarray], texts: list[str], sizes: np.ndarray,
                   majors: list[int | None], class_labels: np.ndarray | None,
                   image_size: tuple[int, int], pad: int, font: float,
                   mark_minority: bool) -> None:
    """Each row's label left of the mosaic, "empty" in an empty row and, with ``mark_minority``,
    a red frame round each image whose class is not its row's majority class."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle
    h, w = image_size
    cell_h, cell_w = h + pad, w + pad
    frames = []
    for j, idx in enumerate(tops):
        y_mid = j * cell_h + h / 2 - 0.5
        ax.text(-pad - 0.5 - 0.15 * cell_w, y_mid, texts[j], ha="right", va="center",
                fontsize=font, linespacing=1.15)
        if not sizes[j]:
            ax.text(-0.5 + 0.1 * cell_w, y_mid, "empty", ha="left", va="center", fontsize=font,
                    color="0.45", style="italic")
        if mark_minority and majors[j] is not None:
            frames += [Rectangle((col * cell_w - 0.5, j * cell_h - 0.5), w, h)
                       for col, i in enumerate(idx) if class_labels[i] != majors[j]]
    if frames:
        ax.add_collection(PatchCollection(frames, facecolor="none", edgecolor="red",
                                          linewidth=1.5))


def cluster_grid(images: Array, labels: Array, confidence: Array, path: StrPath, *,
                 num_clusters: int, per_cluster: int = 10, class_labels: Array | None = None,
                 class_names: Sequence[str] | None = None, title: str = "",
                 mark_minority: bool = True) -> list[np.ndarray]:
    """A grid of each cluster's most confident images: one row per cluster, best first.

    Args:
      images: uint8 [N, H, W, C], C in {1, 3} ([N, H, W] is taken as grayscale; floats are
        taken in [0, 1] and scaled to uint8).
      labels: int [N], cluster ids in ``0..num_clusters-1``.
      confidence: float [N]; higher is more confident.
      path: where to write the PNG.
      num_clusters: K; every cluster gets a row, an empty one says "empty".
      per_cluster: images per row.
      class_labels: optional int [N] true classes; adds each cluster's majority class and share.
      class_names: optional names of the classes (indexed by class id).
      title: figure title.
      mark_minority: with class_labels, frame in red the images whose class is not the row's
        majority class.

    Returns:
      The K index arrays shown (``top_per_cluster``'s result).
    """
    from matplotlib.figure import Figure
    images = _as_images(images)
    labels = _check_ids(labels, num_clusters, "labels")
    if images.shape[0] != labels.size:
        raise ValueError(f"images has {images.shape[0]} examples but labels has {labels.size}.")
    per_cluster = max(int(per_cluster), 1)
    tops = top_per_cluster(labels, confidence, num_clusters, per_cluster)
    sizes = np.bincount(labels, minlength=num_clusters)
    _, h, w, _ = images.shape
    class_labels = _checked_class_labels(class_labels, labels)

    pad = max(1, round(min(h, w) / 8))
    cell_h, cell_w = h + pad, w + pad
    mosaic = _mosaic(images, tops, per_cluster, pad)
    texts, majors = _row_labels(labels, num_clusters, class_labels, class_names)

    # Each image cell gets ~0.6 in (a bit less for long rows) so K=30 or 8x8 images stay legible.
    row_in = float(np.clip(7.5 / per_cluster, 0.45, 0.65))
    col_in = row_in * cell_w / cell_h
    font = float(np.clip(row_in * 72 * 0.3, 7, 10))
    longest = max(len(line) for text in texts for line in text.split("\n"))
    label_in = 0.25 + longest * 0.56 * font / 72  # ~0.56 em per character of DejaVu Sans
    top_in = 0.75 if title else 0.45
    grid_w, grid_h = per_cluster * col_in, num_clusters * row_in
    subtitle = f"each row: the {per_cluster} most confident members, most confident first"
    if mark_minority and any(m is not None for m in majors):
        subtitle += "; red frame = not the majority class"
    # Wide enough for the title and the explanation line, too.
    text_w = max(len(subtitle) * 0.56 * 8.5, len(title) * 0.62 * 12) / 72 + 0.3
    fig_w, fig_h = max(label_in + grid_w + 0.2, text_w), top_in + grid_h + 0.15
    fig = Figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes((label_in / fig_w, 0.15 / fig_h, grid_w / fig_w, grid_h / fig_h))
    _show_mosaic(ax, mosaic, grid_h, pad)
    _annotate_rows(ax, tops, texts, sizes, majors, class_labels, (h, w), pad, font,
                   mark_minority)
    if title:
        fig.text(0.5, 1 - 0.12 / fig_h, title, ha="center", va="top", fontsize=12,
                 fontweight="bold")
    fig.text(0.5, 1 - (top_in - 0.12) / fig_h, subtitle, ha="center", va="bottom", fontsize=8.5,
             color="0.3")
    _save(fig, path)
    return tops
