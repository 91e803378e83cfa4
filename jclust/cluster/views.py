"""Similarities over views: CliqueCNN's mirrored match (Bautista, Sanakoyeu et al. 2016).

A sample may be given by V views, features [N, V, D] with unit rows: V = 2 holds an image's
features and those of its mirror image, as the authors compute their HOG-LDA and fc7
similarities. The similarity of samples p and q is the largest dot product over the pairs of
their views, s(p, q) = max_{a, b} f_p^a . f_q^b: symmetric, and for features whose mirror image's
features are their own mirrored, the paper's max(s(x, y), s(x, mirror(y))). Features [N, D] are
one view, and with one view every function here computes exactly the plain dot product.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jclust.precision import float_dtype

Array = jax.Array | np.ndarray


def as_views(features: Array) -> jax.Array:
    """Features as views [N, V, D]: [N, D] is one view."""
    x = jnp.asarray(features, float_dtype())
    if x.ndim == 2:
        return x[:, None, :]
    if x.ndim != 3:
        raise ValueError(f"features must be [N, D] or views [N, V, D], got shape {x.shape}")
    return x


def view_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
    """Similarities [..., A, B] of views a [..., A, V, D] and b [B, V, D]."""
    if a.shape[-2] == 1:
        return a[..., 0, :] @ b[:, 0, :].T
    lead, (count, views, dim) = a.shape[:-3], a.shape[-3:]
    products = a.reshape(*lead, count * views, dim) @ b.reshape(-1, dim).T
    return jnp.max(products.reshape(*lead, count, views, b.shape[0], views), axis=(-3, -1))


def view_column(a: jax.Array, f: jax.Array) -> jax.Array:
    """Similarities [A] of views a [A, V, D] and one sample's views f [V, D]."""
    if a.shape[-2] == 1:
        return a[:, 0, :] @ f[0]
    return view_similarity(a, f[None])[:, 0]


def view_similarity_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`view_similarity` in NumPy, for a [A, V, D] and b [B, V, D]."""
    if a.shape[1] == 1:
        return a[:, 0] @ b[:, 0].T
    (count, views, dim), other = a.shape, b.shape[0]
    products = a.reshape(-1, dim) @ b.reshape(-1, dim).T
    return products.reshape(count, views, other, views).max(axis=(1, 3))


@functools.partial(jax.jit, static_argnames=("k", "chunk"))
def _view_knn(x, *, k, chunk):
    n = x.shape[0]
    rows = jnp.pad(jnp.arange(n), (0, -n % chunk)).reshape(-1, chunk)

    def one_chunk(row_ids):
        s = view_similarity(x[row_ids], x)
        s = jnp.where(row_ids[:, None] == jnp.arange(n)[None, :], -jnp.inf, s)  # not yourself
        top, idx = jax.lax.top_k(s, k)
        return idx.astype(jnp.int32), top

    indices, sims = jax.lax.map(one_chunk, rows)
    return indices.reshape(-1, k)[:n], sims.reshape(-1, k)[:n]


def view_knn(features: Array, k: int, *, chunk_size: int = 256) -> tuple[jax.Array, jax.Array]:
    """Exact k most similar samples under the views' similarity, the sample itself excluded.

    Args:
      features: views [N, V, D] (or [N, D]), unit rows.
      k: neighbours per sample, 1 <= k < N.
      chunk_size: samples whose [chunk V, N V] products are held at once.

    Returns:
      (indices [N, k] int32, similarities [N, k]), most similar first; ties to the lower index.
    """
    x = as_views(features)
    n = x.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k={k} nearest neighbours need 1 <= k < N = {n}")
    return _view_knn(x, k=k, chunk=min(chunk_size, n))
