"""Pictures of a clustering: example grids, confusion matrices, 2-D projections, training curves.

Everything here runs on the host with NumPy and matplotlib's object API (``Figure`` plus the Agg
canvas, never ``pyplot``), so it works headless, from threads, and never opens a window. Every
plotting function writes one PNG atomically (to ``path + ".tmp.png"``, then ``os.replace``),
creating the parent folders.

Conventions: N examples, K clusters with ids ``0..K-1``, classes ``0..C-1`` (ground truth, when
known).
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any, Sequence

from typing import TYPE_CHECKING

import numpy as np
import scipy.linalg
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
# Keys of a training log line that are bookkeeping, not losses.
_NOT_LOSSES = frozenset({"step", "time", "grad_norm", "steps_per_s", "epoch", "batch_in_epoch",
                         "lr", "learning_rate"})
_QUALITY_KEYS = (("acc", "ACC"), ("nmi", "NMI"), ("ari", "ARI"))
_HEALTH_KEYS = (("size_entropy", "cluster-size entropy (normalised)"),
                ("nmi_previous", "NMI with previous assignment"))


# --------------------------------------------------------------------------------------------
# Pure helpers


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


def _cluster_colors(num_clusters: int) -> np.ndarray:
    """RGBA [K, 4], distinct colours: tab10 up to 10 clusters, tab20 up to 20, else spread hues."""
    import matplotlib
    from matplotlib.colors import hsv_to_rgb
    if num_clusters <= 10:
        return matplotlib.colormaps["tab10"](np.arange(num_clusters))
    if num_clusters <= 20:
        return matplotlib.colormaps["tab20"](np.arange(num_clusters))
    # Golden-ratio hue steps so neighbouring ids get far-apart hues; alternate the brightness
    # so hues that end up close still differ.
    hue = (np.arange(num_clusters) * 0.618033988749895) % 1.0
    sat = np.full(num_clusters, 0.85)
    val = np.where(np.arange(num_clusters) % 2 == 0, 0.95, 0.65)
    rgb = hsv_to_rgb(np.stack([hue, sat, val], axis=1))
    return np.concatenate([rgb, np.ones((num_clusters, 1))], axis=1)


def _thread_limit(num_threads: int | None, user_api: str | None = None):
    """Context limiting BLAS and OpenMP threads (no-op for None or without threadpoolctl).

    Why: on a machine whose cores are busy (pictures drawn beside training), extra threads spin
    against the busy ones. Measured on 2 busy cores: eigh of a 784x784 matrix 5 s vs 0.03 s with
    one thread; t-SNE of 40 points 18 s vs 0.1 s, of 3,000 points 50 s vs 13 s.
    """
    if num_threads is None:
        return contextlib.nullcontext()
    try:
        import threadpoolctl
    except ImportError:
        return contextlib.nullcontext()
    return threadpoolctl.threadpool_limits(num_threads, user_api=user_api)


def _principal_axes(x: np.ndarray, count: int) -> np.ndarray:
    """The top ``count`` principal directions of centred x [M, D]: [min(count, M, D), D]."""
    m, d = x.shape
    if d <= m:
        # Only the top eigenvectors of the D x D scatter matrix: far cheaper than an SVD of x.
        count = min(count, d)
        scatter = x.T @ x
        with _thread_limit(1, "blas"):  # tiny LAPACK job: threads only spin
            _, vectors = scipy.linalg.eigh(scatter, subset_by_index=[d - count, d - 1])
        return vectors[:, ::-1].T
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return vt[:count]


def _pca_2d(x: np.ndarray) -> np.ndarray:
    """Projects x [M, D] on its top two principal components, signs fixed: [M, 2] float64."""
    x = x - x.mean(axis=0)
    vt = _principal_axes(x, 2)
    # SVD signs are arbitrary; make each axis' largest loading positive so pictures are stable.
    signs = np.sign(vt[np.arange(vt.shape[0]), np.argmax(np.abs(vt), axis=1)])
    out = x @ (vt * np.where(signs == 0, 1.0, signs)[:, None]).T
    if out.shape[1] < 2:  # D == 1 (or M == 1): pad the missing axis with zeros
        out = np.concatenate([out, np.zeros((x.shape[0], 2 - out.shape[1]))], axis=1)
    return out


def _tsne_2d(x: np.ndarray, seed: int) -> np.ndarray:
    """t-SNE of x [M, D] to [M, 2] (PCA to 50 dims first when D > 50, as usually recommended)."""
    from sklearn.manifold import TSNE

    if x.shape[1] > 50:
        x = x - x.mean(axis=0)
        x = x @ _principal_axes(x, 50).T
    m = x.shape[0]
    if m < 3:  # t-SNE needs perplexity < M; with so few points PCA is as good
        return _pca_2d(x)
    perplexity = min(30.0, (m - 1) / 3.0)
    tsne = TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity)
    return tsne.fit_transform(x.astype(np.float32)).astype(np.float64)


def _phase_changes(records: Sequence[dict]) -> list[tuple[float, str]]:
    """(step, new phase) wherever the "phase" key changes between records sorted by step.

    The line goes at the last step of the old phase: the trainer logs and evaluates at every phase
    end, so that is where the new phase starts.
    """
    steps = [(r["step"], r["phase"]) for r in records
             if _is_number(r.get("step")) and isinstance(r.get("phase"), str)]
    steps.sort(key=lambda t: t[0])
    return [(steps[i - 1][0], steps[i][1]) for i in range(1, len(steps))
            if steps[i][1] != steps[i - 1][1]]


def _first_phase(records: Sequence[dict]) -> tuple[float, str] | None:
    """(first step, its phase) of the records carrying a phase, or None."""
    steps = [(r["step"], r["phase"]) for r in records
             if _is_number(r.get("step")) and isinstance(r.get("phase"), str)]
    return min(steps, key=lambda t: t[0]) if steps else None


def _series(records: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the records holding a finite number under ``key``, sorted by step."""
    pts = sorted((float(r["step"]), float(r[key])) for r in records
                 if _is_number(r.get(key)) and _is_number(r.get("step")))
    if not pts:
        return np.zeros(0), np.zeros(0)
    arr = np.asarray(pts)
    return arr[:, 0], arr[:, 1]


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


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            and math.isfinite(float(value)))


# --------------------------------------------------------------------------------------------
# Saving


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


# --------------------------------------------------------------------------------------------
# Pictures


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
    from matplotlib.collections import PatchCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle
    images = _as_images(images)
    labels = _check_ids(labels, num_clusters, "labels")
    if images.shape[0] != labels.size:
        raise ValueError(f"images has {images.shape[0]} examples but labels has {labels.size}.")
    per_cluster = max(int(per_cluster), 1)
    tops = top_per_cluster(labels, confidence, num_clusters, per_cluster)
    sizes = np.bincount(labels, minlength=num_clusters)
    _, h, w, c = images.shape
    if class_labels is not None:
        class_labels = np.asarray(class_labels)
        if class_labels.shape != labels.shape:
            raise ValueError(f"class_labels must have shape {labels.shape}, "
                             f"got {class_labels.shape}.")
        class_labels = _check_ids(class_labels, int(class_labels.max(initial=0)) + 1,
                                  "class_labels")

    # One mosaic image (a single imshow) instead of K * per_cluster axes: much faster, no gaps.
    pad = max(1, round(min(h, w) / 8))
    cell_h, cell_w = h + pad, w + pad
    mosaic = np.full((num_clusters * cell_h - pad, per_cluster * cell_w - pad, c), 255, np.uint8)
    for j, idx in enumerate(tops):
        for col, i in enumerate(idx):
            mosaic[j * cell_h:j * cell_h + h, col * cell_w:col * cell_w + w] = images[i]

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
    display_px = grid_h * _DPI / mosaic.shape[0]
    interp = "nearest" if display_px >= 1.0 else "antialiased"
    extent = (-0.5, mosaic.shape[1] - 0.5, mosaic.shape[0] - 0.5, -0.5)
    if c == 1:
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
    if title:
        fig.text(0.5, 1 - 0.12 / fig_h, title, ha="center", va="top", fontsize=12,
                 fontweight="bold")
    fig.text(0.5, 1 - (top_in - 0.12) / fig_h, subtitle, ha="center", va="bottom", fontsize=8.5,
             color="0.3")
    _save(fig, path)
    return tops


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


def embedding_projection(embeddings: Array, labels: Array, path: StrPath, *, method: str = "pca",
                         max_points: int = 5000, seed: int = 0, title: str = "",
                         num_clusters: int | None = None,
                         num_threads: int | None = 1) -> tuple[np.ndarray, np.ndarray]:
    """Scatter of a 2-D projection of the embeddings, coloured by cluster.

    Args:
      embeddings: float [N, D]. D == 2 is plotted as is.
      labels: int [N], cluster ids (>= 0).
      path: where to write the PNG.
      method: "pca" (top eigenvectors of the covariance, no scikit-learn) or "tsne"
        (scikit-learn, init="pca", random_state=seed; inputs over 50-D are PCA-reduced to 50).
      max_points: a random subset (fixed by ``seed``) of at most this many points is shown.
      seed: seed of the subset and of t-SNE.
      title: figure title.
      num_clusters: K for the colours; defaults to ``max(labels) + 1``.
      num_threads: BLAS/OpenMP threads for the projection; None keeps the libraries' defaults. One
        by default: beside training on busy cores, more threads are much slower (``_thread_limit``).

    Returns:
      (coords, indices): float64 [M, 2] plotted coordinates, int64 [M] their rows in
      ``embeddings`` (ascending), M = min(N, max_points).
    """
    from matplotlib import figure, patheffects
    if method not in ("pca", "tsne"):
        raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}.")
    x = np.asarray(embeddings)  # cast after subsampling: a float64 copy of all N can be large
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"embeddings must be [N, D] with N > 0, got shape {x.shape}.")
    n, d = x.shape
    if num_clusters is None:
        num_clusters = int(np.max(labels)) + 1 if np.size(labels) else 1
    labels = _check_ids(labels, num_clusters, "labels")
    if labels.size != n:
        raise ValueError(f"embeddings has {n} rows but labels has {labels.size}.")
    m = min(n, max(int(max_points), 1))
    rng = np.random.default_rng(seed)
    indices = np.sort(rng.choice(n, size=m, replace=False)) if m < n else np.arange(n)
    sub, sub_labels = x[indices].astype(np.float64), labels[indices]
    if d == 2:
        coords, axis_name = sub.copy(), "dim"
    else:
        if method == "tsne":
            # Load sklearn's OpenMP runtime first: threadpoolctl limits only loaded libraries.
            import sklearn.manifold  # noqa: F401
        with _thread_limit(num_threads):
            if method == "pca":
                coords, axis_name = _pca_2d(sub), "PC"
            else:
                coords, axis_name = _tsne_2d(sub, seed), "t-SNE"

    colors = _cluster_colors(num_clusters)
    fig = figure.Figure(figsize=(7.5, 6.5), layout="constrained")
    ax = fig.add_subplot()
    marker = float(np.clip(25000.0 / m, 4.0, 30.0))
    # Shuffle the drawing order so no cluster is systematically painted over the others.
    draw = rng.permutation(m)
    ax.scatter(coords[draw, 0], coords[draw, 1], c=colors[sub_labels[draw]], s=marker,
               alpha=0.7, linewidths=0, rasterized=True)
    stroke = [patheffects.withStroke(linewidth=3.5, foreground="white")]
    for k in np.unique(sub_labels):
        cx, cy = np.median(coords[sub_labels == k], axis=0)
        # The number sits beside its cluster with a leader line to the median, so it never hides
        # the densest points (DEC-like methods pack a cluster into a tight blob); its frame has
        # the cluster's colour.
        ax.annotate(str(k), xy=(cx, cy), xytext=(14, 10), textcoords="offset points",
                    ha="center", va="center", fontsize=11, fontweight="bold", color="black",
                    path_effects=stroke, zorder=5,
                    bbox=dict(boxstyle="round,pad=0.2", facecolor=(1, 1, 1, 0.75),
                              edgecolor=colors[k], linewidth=2.0),
                    arrowprops=dict(arrowstyle="-", color=colors[k], linewidth=1.2,
                                    shrinkA=0, shrinkB=0))
    ax.set_xlabel(f"{axis_name} 1")
    ax.set_ylabel(f"{axis_name} 2")
    method_name = "raw 2-D" if d == 2 else {"pca": "PCA", "tsne": "t-SNE"}[method]
    head = (f"{method_name} of {m:,} of {n:,} points · colour = cluster, "
            f"numbers point at each cluster's median")
    ax.set_title(f"{title}\n{head}" if title else head, fontsize=11 if title else 10)
    _save(fig, path)
    return coords, indices


def training_curves(eval_records: Sequence[dict], train_records: Sequence[dict], path: StrPath,
                    *, title: str = "") -> None:
    """Stacked panels over training steps: losses, ACC/NMI/ARI, cluster health.

    Args:
      eval_records: one dict per evaluation (``metrics.jsonl`` lines): "step", optional "phase",
        "acc", "nmi", "ari", "size_entropy", "nmi_previous"; other keys are ignored.
      train_records: one dict per training log line: "step", "phase" and loss values. Every
        numeric key except step/time/grad_norm (and epoch/learning-rate bookkeeping) is a curve.
      path: where to write the PNG.
      title: figure title.

    Panels without data are left out (e.g. ACC/NMI/ARI on unlabelled data); with no data at all
    the figure says "no data yet". Dotted vertical lines mark phase changes.
    """
    from matplotlib.figure import Figure
    eval_records = list(eval_records or [])
    train_records = list(train_records or [])
    # "loss" (the total) first, then the parts alphabetically.
    loss_keys = sorted({k for r in train_records for k, v in r.items()
                        if k not in _NOT_LOSSES and _is_number(v)},
                       key=lambda k: (k != "loss", k))
    panels = []  # (y label, [(label, steps, values)], bounded to [0, 1])
    losses = [(k, *_series(train_records, k)) for k in loss_keys]
    if any(s.size for _, s, _ in losses):
        panels.append(("training loss", losses, False))
    quality = [(name, *_series(eval_records, k)) for k, name in _QUALITY_KEYS]
    if any(s.size for _, s, _ in quality):
        panels.append(("agreement with labels", quality, True))
    health = [(name, *_series(eval_records, k)) for k, name in _HEALTH_KEYS]
    if any(s.size for _, s, _ in health):
        panels.append(("cluster health", health, True))

    if not panels:
        fig = Figure(figsize=(6, 2.5))
        fig.text(0.5, 0.5, "no data yet", ha="center", va="center", fontsize=14, color="0.4")
        if title:
            fig.suptitle(title)
        _save(fig, path)
        return

    fig = Figure(figsize=(9.5, 1.2 + 2.5 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    changes = _phase_changes(train_records + eval_records)
    # Evaluations often cover only the last phase (e.g. DEC's clustering after a long
    # pretraining): their panels get their own step axis spanning the evaluations, so that
    # their curves are not squeezed into a sliver at the right edge.
    eval_axes = [ax for ax, (ylabel, _, _) in zip(axes, panels) if ylabel != "training loss"]
    eval_steps = np.array([r["step"] for r in eval_records if _is_number(r.get("step"))], float)
    for ax in eval_axes[1:]:
        ax.sharex(eval_axes[0])
    if eval_axes and eval_steps.size:
        lo, hi = eval_steps.min(), eval_steps.max()
        pad = max((hi - lo) * 0.03, 1.0)
        eval_axes[0].set_xlim(lo - pad, hi + pad)
    for ax, (ylabel, curves, bounded) in zip(axes, panels):
        values = [v for _, s, v in curves if s.size]
        for name, steps, vals in curves:
            if steps.size:
                ax.plot(steps, vals, label=name, linewidth=1.4,
                        marker="o" if steps.size <= 30 else None, markersize=3)
        if bounded:
            ax.set_ylim(-0.02, 1.02)
        elif all(np.all(v > 0) for v in values):
            ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        for step, _ in changes:
            ax.axvline(step, color="0.35", linestyle=":", linewidth=1.2)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    first = _first_phase(train_records + eval_records)
    starts = ([first] if first else []) + changes
    if starts:
        # Phase names as ticks on a top axis: above the curves, and laid out by the layout engine.
        top = axes[0].secondary_xaxis("top")
        top.set_xticks([s for s, _ in starts], [f"▸ {p}" for _, p in starts])
        top.tick_params(length=0, labelsize=8, labelcolor="0.25", pad=2)
        for label in top.get_xticklabels():
            label.set_horizontalalignment("left")
    for ax in axes:
        if ax is axes[-1] or ax not in eval_axes:
            ax.set_xlabel("step" if ax not in eval_axes or not eval_steps.size else
                          f"step (evaluations: steps {int(eval_steps.min()):,}–"
                          f"{int(eval_steps.max()):,})")
    for ax in eval_axes[:-1]:
        ax.tick_params(labelbottom=False)
    if title:
        fig.suptitle(title)
    _save(fig, path)


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
