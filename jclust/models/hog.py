"""Histograms of oriented gradients (HOG) in jax.numpy, and their LDA whitening (HOG-LDA).

A fixed, parameter-free feature extractor: CliqueCNN's initial similarities (Sanakoyeu et al.,
NeurIPS 2016) are cosine similarities of whitened HOG, the HOG-LDA of Hariharan, Malik & Ramanan
(ECCV 2012). It lives in ``models/`` beside the pretrained networks because it is one: images in,
a feature vector out, nothing learnt by gradients (``data/`` holds sources and augmentations).

:func:`hog` reproduces ``skimage.feature.hog(image, orientations, pixels_per_cell,
cells_per_block, block_norm, feature_vector=True)`` (scikit-image 0.19 to 0.26) to float32
rounding, in its conventions:

- gradients are central differences ``x[i+1] - x[i-1]`` along rows and columns, 0 on the image's
  first and last row (column); pixel values are used as given (uint8 stays 0..255). For a colour
  image every pixel takes the gradient of the channel with the largest magnitude (first on ties).
- the orientation is unsigned, ``degrees(atan2(g_row, g_col)) mod 180``; a pixel votes its whole
  magnitude into the one bin ``[180 i / n, 180 (i + 1) / n)`` that holds it (no interpolation
  between bins or cells), with skimage's float32 bin edges. Angles that integer gradients hit
  exactly (0, 45, 90, 135 degrees) are set exactly, so that an 8-bit image is binned as skimage
  bins it whatever the float precision; a float image's angle within ~1e-5 degrees of an edge may
  fall on the other side of it in float32.
- a cell's histogram is the mean over its pixels (sum / cell area); only the whole cells from the
  top-left corner count (``H // cell_rows`` by ``W // cell_cols`` cells).
- blocks of ``cells_per_block`` cells at stride one cell are normalised (eps = 1e-5): ``L1``
  ``v / (|v|_1 + eps)``, ``L1-sqrt`` its square root, ``L2`` ``v / sqrt(|v|_2^2 + eps^2)``,
  ``L2-Hys`` the L2 result clipped at 0.2 and L2-normalised again. The feature vector is the
  blocks in (block_row, block_col, cell_row, cell_col, orientation) order.

The whitening (:func:`fit_hog_whitening`, :func:`apply_hog_whitening`) is Hariharan et al.'s
with the plain covariance of the whole template (fine for fixed-size images; their stationary
auto-covariance assembly is for templates of any size): ``Sigma = cov(h) + ridge I = L L^T``,
``whitened(h) = L^{-1} (h - mu)``. :func:`hog_features_with_mirror` fits it on the
block-normalised HOG of the images and of their left-right mirrors pooled (so that the metric is
the same for both and a max over the two is fair) and returns both whitened.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jclust.precision import float_dtype

# Inputs may be device or host arrays; the features of a data set come back as host arrays.
Array = jax.Array | np.ndarray

BLOCK_NORMS = ("L1", "L1-sqrt", "L2", "L2-Hys")
_EPS = 1e-5  # skimage's block-normalisation eps
_HYS_CLIP = 0.2
_PRECISION = jax.lax.Precision.HIGHEST


class HogConfig(NamedTuple):
    """HOG's parameters, as :func:`hog`'s keyword arguments (``hog(x, **config._asdict())``).

    The defaults suit 28 x 28 images (7 x 7 cells of 4 px, 6 x 6 blocks: 1,296 features);
    :func:`default_config` picks 8 px cells for images of 64 px and more (Dalal & Triggs's).
    """
    pixels_per_cell: int = 4
    orientations: int = 9
    cells_per_block: int = 2
    block_norm: str = "L2-Hys"


def default_config(height: int, width: int) -> HogConfig:
    """4 px cells for images smaller than 64 px on their shorter side, else 8 px cells."""
    return HogConfig(pixels_per_cell=4 if min(height, width) < 64 else 8)


class HogWhitening(NamedTuple):
    """A fitted LDA whitening of HOG templates.

    Attributes:
      mean: [D], mu, the mean template.
      chol: [D, D] lower-triangular L with ``L L^T = cov + ridge I`` (covariance normalised by N).
    """
    mean: jax.Array
    chol: jax.Array


class MirroredHog(NamedTuple):
    """Whitened HOG of images and of their left-right mirrors (host arrays [N, D]).

    CliqueCNN's similarity of examples i and j is ``max(sim(features[i], features[j]),
    sim(features[i], mirrored[j]))``, the second winning meaning "j matches i flipped"; see
    :func:`mirrored_max_similarity`.
    """
    features: np.ndarray
    mirrored: np.ndarray
    whitening: HogWhitening


def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}.")
    return int(pair[0]), int(pair[1])


def _bin_edges(orientations: int) -> np.ndarray:
    """skimage's bin edges ``float32(180 / n) * (i + 1)`` in float32 arithmetic, i = 0..n-1."""
    step = np.float32(180.0 / orientations)
    return np.array([step * np.float32(i + 1) for i in range(orientations)], np.float32)


def _gradients(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[B, H, W, C] -> (g_row, g_col) [B, H, W] of the channel of largest magnitude per pixel."""
    g_row = jnp.zeros_like(x).at[:, 1:-1].set(x[:, 2:] - x[:, :-2])
    g_col = jnp.zeros_like(x).at[:, :, 1:-1].set(x[:, :, 2:] - x[:, :, :-2])
    if x.shape[-1] == 1:
        return g_row[..., 0], g_col[..., 0]
    # The squared magnitude orders like skimage's hypot and is exact for integer pixel values.
    pick = jnp.argmax(g_row * g_row + g_col * g_col, axis=-1)[..., None]
    return (jnp.take_along_axis(g_row, pick, axis=-1)[..., 0],
            jnp.take_along_axis(g_col, pick, axis=-1)[..., 0])


def orientation_bins(g_row: jax.Array, g_col: jax.Array, orientations: int) -> jax.Array:
    """skimage's orientation bin of every pixel: int32 in [0, n], n = dropped (never, for n <= 36).

    The gradient is folded onto g_row >= 0 (an unsigned orientation is the same for -g), its
    angle in degrees is compared with skimage's float32 bin edges; 0, 45, 90 and 135 degrees, the
    only edges integer gradients can hit exactly (Niven's theorem), are set exactly.
    """
    flip = (g_row < 0) | ((g_row == 0) & (g_col < 0))
    r = jnp.where(flip, -g_row, g_row)
    c = jnp.where(flip, -g_col, g_col)
    degrees = jnp.arctan2(r, c) * jnp.asarray(180.0 / math.pi, r.dtype)
    exact = jnp.select([r == 0, c == 0, r == c, r == -c],
                       [jnp.zeros_like(r), jnp.full_like(r, 90.0), jnp.full_like(r, 45.0),
                        jnp.full_like(r, 135.0)], degrees)
    # skimage's angle is mod 180 in float64: never 180 itself.
    exact = jnp.minimum(exact, jnp.nextafter(jnp.asarray(180.0, r.dtype), 0.0))
    edges = jnp.asarray(_bin_edges(orientations), r.dtype)
    return jnp.sum(exact[..., None] >= edges, axis=-1, dtype=jnp.int32)


def _cell_histograms(x, *, cell, orientations):
    """[B, H, W, C] float -> [B, H // cell_rows, W // cell_cols, orientations]."""
    g_row, g_col = _gradients(x)
    (cr, cc), (b, h, w) = cell, g_row.shape
    ny, nx = h // cr, w // cc
    g_row, g_col = g_row[:, :ny * cr, :nx * cc], g_col[:, :ny * cr, :nx * cc]
    bins = orientation_bins(g_row, g_col, orientations)
    magnitude = jnp.hypot(g_row, g_col)
    votes = jnp.where(bins[..., None] == jnp.arange(orientations), magnitude[..., None], 0.0)
    sums = votes.reshape(b, ny, cr, nx, cc, orientations).sum(axis=(2, 4))
    return sums / (cr * cc)


def normalize_blocks(hist: jax.Array, *, cells_per_block, block_norm: str) -> jax.Array:
    """Cell histograms [B, ny, nx, O] -> normalised blocks [B, ny - by + 1, nx - bx + 1, by, bx, O]."""
    (by, bx), (_, ny, nx, _) = _pair(cells_per_block, "cells_per_block"), hist.shape
    nby, nbx = ny - by + 1, nx - bx + 1
    blocks = jnp.stack([jnp.stack([hist[:, dy:dy + nby, dx:dx + nbx] for dx in range(bx)], axis=3)
                        for dy in range(by)], axis=3)
    axes = (3, 4, 5)
    if block_norm in ("L1", "L1-sqrt"):
        out = blocks / (jnp.sum(jnp.abs(blocks), axis=axes, keepdims=True) + _EPS)
        return jnp.sqrt(out) if block_norm == "L1-sqrt" else out

    def l2(v):
        return v / jnp.sqrt(jnp.sum(v * v, axis=axes, keepdims=True) + _EPS ** 2)

    if block_norm == "L2":
        return l2(blocks)
    if block_norm == "L2-Hys":
        return l2(jnp.minimum(l2(blocks), _HYS_CLIP))
    raise ValueError(f"block_norm must be one of {BLOCK_NORMS}, got {block_norm!r}.")


@functools.partial(jax.jit, static_argnames=("cell", "orientations", "block", "block_norm"))
def _hog_chunk(x, *, cell, orientations, block, block_norm):
    """Jitted body of :func:`hog` (block=None: the cell histograms)."""
    x = x.astype(float_dtype())
    hist = _cell_histograms(x, cell=cell, orientations=orientations)
    if block is None:
        return hist
    blocks = normalize_blocks(hist, cells_per_block=block, block_norm=block_norm)
    return blocks.reshape(blocks.shape[0], -1)


def _as_images(images) -> np.ndarray | jax.Array:
    """[N, H, W] or [N, H, W, C] -> [N, H, W, C] (not copied, not converted)."""
    if not hasattr(images, "ndim"):
        images = np.asarray(images)
    if images.ndim == 3:
        return images[..., None]
    if images.ndim != 4:
        raise ValueError(f"images must be [N, H, W] or [N, H, W, C], got shape {images.shape}.")
    return images


def _check_sizes(shape, cell, block):
    ny, nx = shape[1] // cell[0], shape[2] // cell[1]
    if block is not None and (ny < block[0] or nx < block[1]):
        raise ValueError(f"images of {shape[1]} x {shape[2]} px are too small for blocks of "
                         f"{block[0]} x {block[1]} cells of {cell[0]} x {cell[1]} px.")
    if block is None and (ny < 1 or nx < 1):
        raise ValueError(f"images of {shape[1]} x {shape[2]} px hold no cell of {cell} px.")


def _featurise(images, *, cell, orientations, block, block_norm, batch_size) -> np.ndarray:
    """Runs :func:`_hog_chunk` over batches of batch_size images (the last one padded)."""
    x = _as_images(images)
    if not isinstance(orientations, (int, np.integer)) or orientations < 1:
        raise ValueError(f"orientations must be a positive int, got {orientations!r}.")
    if block is not None and block_norm not in BLOCK_NORMS:
        raise ValueError(f"block_norm must be one of {BLOCK_NORMS}, got {block_norm!r}.")
    _check_sizes(x.shape, cell, block)
    n = x.shape[0]
    size = max(1, min(batch_size, n))
    kwargs = dict(cell=cell, orientations=int(orientations), block=block, block_norm=block_norm)
    shape = jax.eval_shape(functools.partial(_hog_chunk, **kwargs),
                           jax.ShapeDtypeStruct((size,) + tuple(x.shape[1:]), x.dtype))
    out = np.empty((n,) + shape.shape[1:], shape.dtype)
    for start in range(0, n, size):
        chunk = x[start:start + size]
        m = chunk.shape[0]
        if m < size:
            chunk = jnp.pad(jnp.asarray(chunk), ((0, size - m),) + ((0, 0),) * 3)
        out[start:start + m] = np.asarray(_hog_chunk(chunk, **kwargs))[:m]
    return out


def hog(images: Array, *, pixels_per_cell=4, orientations: int = 9, cells_per_block=2,
        block_norm: str = "L2-Hys", batch_size: int = 2048) -> np.ndarray:
    """Block-normalised HOG feature vectors, skimage's ``hog(..., feature_vector=True)`` per image.

    Args:
      images: [N, H, W] grayscale or [N, H, W, C] (C = 1, or colour: per pixel the channel of
        largest gradient magnitude), any real dtype, values used as given (numpy or jax).
      pixels_per_cell: cell size in pixels, an int or (rows, cols).
      orientations: number of unsigned orientation bins over 0..180 degrees.
      cells_per_block: block size in cells, an int or (rows, cols).
      block_norm: "L1", "L1-sqrt", "L2" or "L2-Hys".
      batch_size: images per jitted call (memory ~ batch_size * H * W * orientations floats).

    Returns:
      [N, n_blocks_row * n_blocks_col * block_rows * block_cols * orientations] host array of
      :func:`jclust.precision.float_dtype`, in skimage's order (see the module docstring).
    """
    return _featurise(images, cell=_pair(pixels_per_cell, "pixels_per_cell"),
                      orientations=orientations, block=_pair(cells_per_block, "cells_per_block"),
                      block_norm=block_norm, batch_size=batch_size)


def cell_histograms(images: Array, *, pixels_per_cell=4, orientations: int = 9,
                    batch_size: int = 2048) -> np.ndarray:
    """HOG's cell grid before block normalisation (skimage's ``orientation_histogram``).

    Args:
      images, pixels_per_cell, orientations, batch_size: as for :func:`hog`.

    Returns:
      [N, H // cell_rows, W // cell_cols, orientations] host array: each cell's mean gradient
      magnitude per orientation bin.
    """
    return _featurise(images, cell=_pair(pixels_per_cell, "pixels_per_cell"),
                      orientations=orientations, block=None, block_norm=None,
                      batch_size=batch_size)


@functools.partial(jax.jit, static_argnames=("size",))
def _centred_moments(x, n_valid, mean, *, size):
    """Sum and scatter matrix of the first n_valid rows of x [size, D], centred at mean."""
    xc = jnp.where((jnp.arange(size) < n_valid)[:, None], x.astype(mean.dtype) - mean, 0.0)
    return jnp.sum(xc, axis=0), jnp.dot(xc.T, xc, precision=_PRECISION)


def _row_chunks(arrays: Sequence[Array], size: int):
    """(chunk padded to size rows, its number of real rows) over all the arrays' rows."""
    for a in arrays:
        for start in range(0, a.shape[0], size):
            chunk = jnp.asarray(a[start:start + size])
            m = chunk.shape[0]
            yield jnp.pad(chunk, ((0, size - m), (0, 0))), m


@jax.jit
def _cholesky(scatter, n, ridge):
    cov = scatter / n + ridge * jnp.eye(scatter.shape[0], dtype=scatter.dtype)
    return jnp.linalg.cholesky(cov)


def fit_hog_whitening(features: Array | Sequence[Array], *, ridge: float = 0.02,
                      chunk_size: int = 8192) -> HogWhitening:
    """Fits the LDA whitening ``L^{-1} (h - mu)``, ``L L^T = cov(h) + ridge I`` (Hariharan et al.).

    Two passes over row chunks (the mean, then the centred scatter matrix), so memory stays at
    ``chunk_size x D`` plus ``D x D`` whatever N.

    Args:
      features: [N, D] HOG templates (numpy or jax), or a sequence of such arrays pooled into one
        fit (e.g. the images' and their mirrors' HOG).
      ridge: lambda added to the covariance's diagonal (Hariharan et al.'s and CliqueCNN's 0.02
        for Felzenszwalb HOG; it bounds the whitening's gain on directions of small variance).
      chunk_size: rows per jitted step.

    Returns:
      HogWhitening(mean [D], chol [D, D]) of :func:`jclust.precision.float_dtype`.
    """
    arrays = [features] if hasattr(features, "ndim") else list(features)
    if not arrays or any(a.ndim != 2 or a.shape[1] != arrays[0].shape[1] for a in arrays):
        raise ValueError("features must be [N, D] arrays of one D.")
    n = sum(a.shape[0] for a in arrays)
    if n < 2:
        raise ValueError(f"the whitening needs at least 2 templates, got {n}.")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}.")
    size = min(chunk_size, max(a.shape[0] for a in arrays))
    dtype = float_dtype()
    zero = jnp.zeros(arrays[0].shape[1], dtype)
    total = sum(_centred_moments(c, m, zero, size=size)[0] for c, m in _row_chunks(arrays, size))
    mean = total / n
    scatter = sum(_centred_moments(c, m, mean, size=size)[1] for c, m in _row_chunks(arrays, size))
    chol = _cholesky(scatter, jnp.asarray(n, dtype), jnp.asarray(ridge, dtype))
    if not bool(jnp.all(jnp.isfinite(chol))):
        raise ValueError("the whitening's covariance is not positive definite (or the features "
                         "are not finite); raise ridge.")
    return HogWhitening(mean, chol)


@jax.jit
def _whiten_chunk(whitening, x):
    xc = x.astype(whitening.mean.dtype) - whitening.mean
    return jax.scipy.linalg.solve_triangular(whitening.chol, xc.T, lower=True).T


def apply_hog_whitening(whitening: HogWhitening, features: Array,
                        chunk_size: int = 8192) -> np.ndarray:
    """``L^{-1} (h - mu)`` of every row of features [N, D], chunked; a host array [N, D]."""
    d = whitening.mean.shape[0]
    if features.ndim != 2 or features.shape[1] != d:
        raise ValueError(f"features must have shape [N, {d}], got {features.shape}.")
    n = features.shape[0]
    size = max(1, min(chunk_size, n))
    out = np.empty((n, d), whitening.mean.dtype)
    for start, (chunk, m) in zip(range(0, n, size), _row_chunks([features], size)):
        out[start:start + m] = np.asarray(_whiten_chunk(whitening, chunk))[:m]
    return out


def hog_features_with_mirror(images: Array, *, config: HogConfig | None = None,
                             ridge: float = 0.02,
                             whitening: HogWhitening | None = None) -> MirroredHog:
    """HOG-LDA of images and of their left-right mirrors, for CliqueCNN's max-over-flip similarity.

    Args:
      images: [N, H, W] or [N, H, W, C], as for :func:`hog`.
      config: HOG's parameters; default :func:`default_config` of the image size.
      ridge: the whitening's ridge, see :func:`fit_hog_whitening`.
      whitening: a fitted whitening to apply; default: fitted here on the HOG of the images and
        of their mirrors pooled (2N templates).

    Returns:
      MirroredHog(features [N, D], mirrored [N, D], whitening). The similarity is the cosine of
      the rows (L2-normalise them, e.g. ``jclust.cluster.norms.l2_normalize``).
    """
    x = _as_images(images)
    config = config or default_config(x.shape[1], x.shape[2])
    plain = hog(x, **config._asdict())
    mirrored = hog(x[:, :, ::-1], **config._asdict())
    if whitening is None:
        whitening = fit_hog_whitening([plain, mirrored], ridge=ridge)
    return MirroredHog(apply_hog_whitening(whitening, plain),
                       apply_hog_whitening(whitening, mirrored), whitening)


@jax.jit
def mirrored_max_similarity(queries: jax.Array, features: jax.Array,
                            mirrored: jax.Array) -> tuple[jax.Array, jax.Array]:
    """CliqueCNN's S(i, j) = max(<q_i, f_j>, <q_i, mirror(f)_j>) and which one won.

    Args:
      queries: [B, D] (rows already L2-normalised for cosine similarity).
      features: [M, D], the same rows' features.
      mirrored: [M, D], the features of the mirrored images.

    Returns:
      (similarity [B, M], flip [B, M] bool: True where the mirrored image matched better).
    """
    plain = jnp.dot(queries, features.T, precision=_PRECISION)
    flipped = jnp.dot(queries, mirrored.T, precision=_PRECISION)
    return jnp.maximum(plain, flipped), flipped > plain
