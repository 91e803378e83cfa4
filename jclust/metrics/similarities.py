"""Similarities of unit rows for the similarity benchmark: cosines, or for views (an image and its
mirror image, CliqueCNN's mirrored match) the largest cosine over pairs of views."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def similarities(queries, database):
    """[M, N] cosines of unit rows [M, D] and [N, D]; of views [M, V, D] and [N, V, D] (an
    image and its mirror image), the largest over pairs of views (:mod:`jclust.cluster.views`)."""
    if queries.ndim == 2:
        return jnp.matmul(queries, database.T, precision=jax.lax.Precision.HIGHEST)
    m, views, dim = queries.shape
    block = jnp.matmul(queries.reshape(m * views, dim), database.reshape(-1, dim).T,
                       precision=jax.lax.Precision.HIGHEST)
    return jnp.max(block.reshape(m, views, database.shape[0], views), axis=(1, 3))


def pair_similarities(a, b):
    """[P] cosines of pairs of unit rows a, b [P, D], or of views [P, V, D] as above."""
    if a.ndim == 2:
        return jnp.sum(a * b, axis=1)
    return jnp.max(jnp.einsum("pad,pbd->pab", a, b, precision=jax.lax.Precision.HIGHEST),
                   axis=(1, 2))
