"""CliqueCNN's clique growth by a Student-t test (rounds >= 1), in jax.numpy.

For each clique, the mean similarity v(x) = mean_{q in clique} s(x, q) = x . centroid (centroid =
the mean of the members' features; similarity = dot product of L2-normalised features; for views
[N, V, D], an image and its mirror, v(x) is the mean of the views' similarities
:func:`jclust.cluster.views.view_similarity` to the members) of
``null_samples`` random non-members is the null distribution. It is fitted by a location-scale
Student-t: location = sample mean, scale = sample sd (ddof 1) times sqrt(1 + 1/n), df = n - 1,
the predictive distribution of one more draw from a normal sample of n. Every non-member among
the clique's candidates (the union of its members' k-NN lists) whose v has an upper-tail p-value
below ``p_value`` joins, highest v first, until ``max_size`` members.

The null samples are drawn with replacement and the draws that hit a member are dropped (n counts
the rest), which avoids a permutation of N per clique; with 500 draws among 70,000 samples this
differs from drawing without replacement only in rare repeats.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jclust.cluster.cliques import Cliques, clique_compactness
from jclust.cluster.views import as_views, view_similarity

Array = jax.Array | np.ndarray


def student_t_sf(x: jax.Array, df: jax.Array) -> jax.Array:
    """Upper tail P(T > x) of Student's t with ``df`` degrees of freedom (``scipy.stats.t.sf``):
    I_{df / (df + x^2)}(df / 2, 1 / 2) / 2 for x > 0 (the regularised incomplete beta), one minus
    that for x <= 0."""
    half = 0.5 * jax.scipy.special.betainc(0.5 * df, 0.5, df / (df + x * x))
    return jnp.where(x > 0, half, 1.0 - half)


def _grow_one(key, members, features, neighbours, *, null_samples, p_value, max_size):
    """One clique's new members [max_size] (-1 padded), its old members first."""
    n = features.shape[0]
    valid = members >= 0
    size = jnp.sum(valid)
    feats = features[jnp.maximum(members, 0)]  # [W, V, D]
    centroid = jnp.sum(jnp.where(valid[:, None], feats[:, 0], 0.0), axis=0) / jnp.maximum(size, 1)

    def mean_similarity(x):  # [M, V, D] -> [M]
        if features.shape[1] == 1:
            return x[:, 0] @ centroid
        return jnp.sum(jnp.where(valid[None, :], view_similarity(x, feats), 0.0),
                       axis=1) / jnp.maximum(size, 1)

    null = jax.random.randint(key, (null_samples,), 0, n)
    keep = ~jnp.any(null[:, None] == members[None, :], axis=1)
    count = jnp.sum(keep)
    null_v = mean_similarity(features[null])
    mean = jnp.sum(jnp.where(keep, null_v, 0.0)) / jnp.maximum(count, 1)
    var = jnp.sum(jnp.where(keep, (null_v - mean) ** 2, 0.0)) / jnp.maximum(count - 1, 1)
    scale = jnp.sqrt(var * (1.0 + 1.0 / jnp.maximum(count, 1)))
    scale = jnp.maximum(scale, jnp.finfo(scale.dtype).tiny)
    # Candidates: the members' k-NN lists, sorted so that repeats sit together (first one kept).
    cand = jnp.sort(jnp.where(valid[:, None], neighbours[jnp.maximum(members, 0)], n).reshape(-1))
    first = jnp.concatenate([jnp.array([True]), cand[1:] != cand[:-1]])
    ok = first & (cand < n) & ~jnp.any(cand[:, None] == members[None, :], axis=1)
    v = mean_similarity(features[jnp.minimum(cand, n - 1)])
    p = student_t_sf((v - mean) / scale, (count - 1).astype(v.dtype))
    accept = ok & (p < p_value) & (count >= 2)
    top, pos = jax.lax.top_k(jnp.where(accept, v, -jnp.inf), min(max_size, cand.shape[0]))
    added = jnp.full(max_size, -1).at[:top.shape[0]].set(jnp.where(jnp.isfinite(top), cand[pos],
                                                                     -1))  # ties: lower index
    slot = jnp.arange(max_size) - size
    old = jnp.full(max_size, -1, jnp.int32).at[:members.shape[0]].set(members)
    return jnp.where(slot >= 0, added[jnp.maximum(slot, 0)], old).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("null_samples", "p_value", "max_size", "chunk"))
def _grow_all(keys, members, features, neighbours, *, chunk, **static):
    return jax.lax.map(lambda a: _grow_one(a[0], a[1], features, neighbours, **static),
                       (keys, members), batch_size=chunk)


def grow_cliques(key: jax.Array, cliques: Cliques, features: Array, neighbours: Array, *,
                 null_samples: int = 500, p_value: float = 1e-3, max_size: int = 32,
                 chunk_size: int = 256) -> Cliques:
    """Adds to every clique the candidates significantly closer to it than random samples
    (module docstring).

    Args:
      key: a jax PRNG key; clique c draws its null samples with ``split(key, C)[c]``.
      cliques: from :func:`jclust.cluster.cliques.build_cliques`, members [C, W] with W <= max_size.
      features: [N, D] float, rows L2-normalised, or views [N, V, D].
      neighbours: [N, k] int k-NN lists.
      null_samples: random draws per clique for the null distribution (500).
      p_value: the one-sided significance level (0.001).
      max_size: the most members after growth (and the width of the result).
      chunk_size: cliques vmapped together.

    Returns:
      Cliques with members [C, max_size] (old members first, then the new ones by decreasing
      mean similarity to the clique), sizes and compactness recomputed.
    """
    features = as_views(features)
    neighbours = jnp.asarray(neighbours, jnp.int32)
    members = jnp.asarray(cliques.members, jnp.int32)
    if members.shape[1] > max_size:
        raise ValueError(f"cliques of width {members.shape[1]} exceed max_size={max_size}")
    if null_samples < 3 or not 0.0 < p_value < 1.0:
        raise ValueError(f"need null_samples >= 3 and 0 < p_value < 1, got {null_samples}, "
                         f"{p_value}")
    keys = jax.random.split(key, members.shape[0])
    grown = _grow_all(keys, members, features, neighbours, chunk=min(chunk_size, members.shape[0]),
                      null_samples=null_samples, p_value=p_value, max_size=max_size)
    return Cliques(grown, jnp.sum(grown >= 0, axis=1).astype(jnp.int32),
                   clique_compactness(grown, features))
