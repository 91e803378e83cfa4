"""The 2-D projection of the embeddings (PCA or t-SNE), coloured by cluster."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import numpy as np
import scipy.linalg

from jclust.viz.common import _check_ids, _save

if TYPE_CHECKING:
    from jclust.viz.common import Array, StrPath


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
