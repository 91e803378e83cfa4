"""k-means (Lloyd's algorithm) in jax.numpy.

The loop follows scikit-learn's ``KMeans(algorithm="lloyd")``: each iteration
assigns every point to its nearest centroid and recomputes the centroids as
means; it stops when the labels stop changing (strict convergence) or when the
total squared centroid shift is at most ``tol * mean(var(x, axis=0))``. After
the loop the labels and inertia are recomputed from the final centroids. Like
scikit-learn, Euclidean k-means runs on mean-centred data (better float32
accuracy of the ``||x||² - 2 x·c + ||c||²`` expansion) and shifts the centroids
back at the end. With the same initial centroids the two give identical labels
and inertia to float32 rounding; only a point (almost) exactly equidistant
from two centroids may be assigned differently, as rounding then decides.

Memory: the ``[n, k]`` distance matrix is never materialised. Points are
processed in chunks of ``chunk_size`` rows (by default derived from
``memory_budget_bytes``); the centroid update uses ``jax.ops.segment_sum``, so
no ``[n, k]`` one-hot either. Working memory beyond ``x`` itself is a few
``[n, d]`` and ``[k, d]`` arrays plus one ``[chunk_size, k]`` block.

Empty-cluster policy: after an assignment step, every cluster with no points is
re-seeded at a data point: the point currently farthest from its own centroid
goes to the first empty cluster, the second farthest to the second, and so on
(distinct points, farthest first). The point is moved out of its old
cluster's mean and becomes the whole new cluster, as in scikit-learn's
relocation. A point that already sits exactly on its centroid is never used,
and a cluster that stays empty keeps its previous centroid. Every re-seeded
cluster adds one to ``KMeansOutput.n_empty_repaired``.

With ``empty_policy="split"`` (DeepCluster's policy, the one in faiss's
``Clustering.cpp``) an empty cluster e instead takes a copy of a non-empty
cluster j drawn with probability proportional to ``n_j - 1`` (so singletons are
never split), perturbed symmetrically: even coordinates of e are multiplied by
``1 + split_eps`` and of j by ``1 - split_eps``, odd coordinates the other way
round, and j's count is shared between the two. Empty clusters are handled in
index order, each seeing the counts left by the previous splits. The
perturbation acts on the mean-centred coordinates the loop works in (faiss works
on raw coordinates). The next assignment step then divides j's points between
the two copies.

With ``empty_policy="keep"`` (DeepCluster-v2's rule) an empty cluster simply keeps its previous
centroid; ``n_empty_repaired`` then counts the empty clusters met over the iterations.

Spherical k-means (``spherical=True``) L2-normalises the points and centroids,
assigns by maximal cosine similarity and re-normalises the centroids after each
update; distances and inertia are then ``1 - cos``.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jclust.cluster.norms import l2_normalize
from jclust.precision import RANDOM_DTYPE, float_dtype

# Inputs may be device or host arrays (converted with jnp.asarray); outputs are device arrays.
Array = jax.Array | np.ndarray

DEFAULT_MEMORY_BUDGET_BYTES = 256 * 2**20

# On CPU the [chunk, k] distance block is kept cache-sized: the nearest-centroid search then
# reads it from cache (k = 1000 on 70,000 x 256: 0.17 s an iteration instead of 0.43 s; see
# BENCHMARKS.md). GPUs and TPUs want large blocks, so this applies to the CPU backend only.
CPU_BLOCK_BYTES = 4 * 2**20
CPU_MIN_ROWS = 256

# Full float32 matmuls also on GPU/TPU, where the default may drop to bf16/tf32
# and change nearest-centroid decisions.
_PRECISION = jax.lax.Precision.HIGHEST


class KMeansOutput(NamedTuple):
    """Result of :func:`kmeans`.

    Attributes:
      centroids: [k, d] float32 (unit rows when spherical).
      labels: [n] int32, index of the nearest final centroid.
      inertia: [] float32, sum of squared distances to the assigned centroid
        (sum of ``1 - cos`` when spherical).
      n_iter: [] int32, number of Lloyd iterations run.
      converged: [] bool, whether a stopping criterion was met before
        ``max_iter``.
      n_empty_repaired: [] int32, total number of empty-cluster re-seedings.
    """

    centroids: jax.Array
    labels: jax.Array
    inertia: jax.Array
    n_iter: jax.Array
    converged: jax.Array
    n_empty_repaired: jax.Array


# ----------------------------------------------------------------------------
# Validation (eager, outside jit).


def _as_data(x, name="x"):
    """Returns x as a float32 [n, d] jax array, raising ValueError if invalid."""
    x = jnp.asarray(x, dtype=float_dtype())
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [n, d], got shape {x.shape}.")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {x.shape}.")
    # Skipped when traced by an outer jit: the check needs concrete values.
    if not isinstance(x, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError(f"{name} contains NaN or infinite values.")
    return x


def _check_k(k, n):
    """Raises ValueError unless 1 <= k <= n."""
    if not isinstance(k, int) or isinstance(k, bool):
        raise ValueError(f"k must be a python int, got {k!r}.")
    if k < 1:
        raise ValueError(f"k={k} must be at least 1.")
    if k > n:
        raise ValueError(f"k={k} is larger than the number of examples n={n}.")


def _check_loop(max_iter, tol):
    """Raises ValueError unless max_iter >= 1 and tol >= 0."""
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}.")
    if tol < 0:
        raise ValueError(f"tol must be non-negative, got {tol}.")


def _chunk_rows(n, k, chunk_size, memory_budget_bytes):
    """Rows per assignment chunk: an int in [1, n]."""
    if chunk_size is not None:
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}.")
        return min(chunk_size, n)
    if memory_budget_bytes <= 0:
        raise ValueError(
            f"memory_budget_bytes must be positive, got {memory_budget_bytes}."
        )
    # The [rows, k] float32 distance block plus one temporary of the same size.
    rows = memory_budget_bytes // (2 * 4 * k)
    if jax.default_backend() == "cpu":
        rows = min(rows, max(CPU_MIN_ROWS, CPU_BLOCK_BYTES // (4 * k)))
    return int(max(1, min(n, rows)))


# ----------------------------------------------------------------------------
# Pure building blocks (traced inside jit).


def _normalize(x):
    """Rows of x: [m, d] scaled to unit L2 norm (zero rows stay zero)."""
    return l2_normalize(x, jnp.finfo(x.dtype).tiny)


def _to_chunks(x, chunk):
    """Pads x: [n, d] with zero rows to [n_chunks, chunk, d]."""
    n, d = x.shape
    n_chunks = -(-n // chunk)
    x = jnp.pad(x, ((0, n_chunks * chunk - n), (0, 0)))
    return x.reshape(n_chunks, chunk, d)


def _first_argmin(values):
    """Index of the first minimum of each row of ``values`` [m, k] (``jnp.argmin``'s result).

    Two plain reductions (min, then the smallest index attaining it) instead of argmin's
    variadic one, which XLA:CPU does not vectorise (2x slower at k = 1000).
    """
    k = values.shape[1]
    smallest = jnp.min(values, axis=1, keepdims=True)
    index = jnp.arange(k, dtype=jnp.int32)[None, :]
    return jnp.min(jnp.where(values == smallest, index, k), axis=1).astype(jnp.int32)


def _assign_and_sum(xs, valid, centroids, spherical):
    """One Lloyd assignment with the centroid sums accumulated chunk by chunk (each chunk of
    points is read once, while it is in cache).

    Args:
      xs: [n_chunks, chunk, d] float32 points (unit rows when spherical).
      valid: [n_chunks, chunk] bool, False for padding rows.
      centroids: [k, d] float32.

    Returns:
      labels [n_chunks * chunk] int32 (k for padding), sums [k, d], counts [k] float32.
    """
    k, d = centroids.shape
    c2 = jnp.sum(centroids * centroids, axis=1)

    def one_chunk(carry, chunk):
        sums, counts = carry
        xb, vb = chunk
        xc = jnp.dot(xb, centroids.T, precision=_PRECISION)
        labels = _first_argmin(-xc if spherical else c2[None, :] - 2.0 * xc)
        labels = jnp.where(vb, labels, k)  # padding goes to an extra, dropped segment
        sums = sums + jax.ops.segment_sum(xb, labels, num_segments=k + 1)[:k]
        counts = counts + jax.ops.segment_sum(vb.astype(float_dtype()), labels,
                                              num_segments=k + 1)[:k]
        return (sums, counts), labels

    zeros = (jnp.zeros((k, d), float_dtype()), jnp.zeros((k,), float_dtype()))
    if xs.shape[0] == 1:  # XLA:CPU runs a one-trip loop body ~1.5x slower than the plain ops
        (sums, counts), labels = one_chunk(zeros, (xs[0], valid[0]))
        return labels, sums, counts
    (sums, counts), labels = jax.lax.scan(one_chunk, zeros, (xs, valid))
    return labels.reshape(-1), sums, counts


def _assign_chunks(xs, centroids, spherical, with_distances=True):
    """Nearest centroid per point.

    Args:
      xs: [n_chunks, chunk, d] float32 points (unit rows when spherical).
      centroids: [k, d] float32 (unit rows when spherical).
      spherical: use ``1 - x·c`` instead of the squared Euclidean distance.
      with_distances: if False, skip the distances (returns labels only).

    Returns:
      labels: [n_chunks * chunk] int32.
      distances: [n_chunks * chunk] float32, exact distance to the chosen
        centroid (not the cancellation-prone expansion); only if
        ``with_distances``.
    """
    c2 = jnp.sum(centroids * centroids, axis=1)

    def one_chunk(xb):
        xc = jnp.dot(xb, centroids.T, precision=_PRECISION)  # [chunk, k]
        # argmin over the x-independent part, as scikit-learn does: adding
        # ||x||² first would round away small differences between centroids.
        labels = _first_argmin(-xc if spherical else c2[None, :] - 2.0 * xc)
        if not with_distances:
            return labels
        return labels, _own_distances(xb, centroids, labels, spherical)

    if not with_distances:
        return jax.lax.map(one_chunk, xs).reshape(-1)
    labels, distances = jax.lax.map(one_chunk, xs)
    return labels.reshape(-1), distances.reshape(-1)


def _own_distances(x, centroids, labels, spherical):
    """Exact distance of each point to its assigned centroid.

    Args:
      x: [n, d] float32; centroids: [k, d]; labels: [n] int in [0, k).

    Returns:
      [n] float32: squared Euclidean distance, or ``1 - cos`` (clamped at 0)
      when spherical.
    """
    c = centroids[labels]
    if spherical:
        return jnp.maximum(1.0 - jnp.sum(x * c, axis=1), 0.0)
    diff = x - c
    return jnp.sum(diff * diff, axis=1)


def _repair_empty(x, valid, centroids, labels, sums, counts, spherical):
    """Re-seeds empty clusters at the points farthest from their centroid.

    Args:
      x: [n_pad, d] float32 points; valid: [n_pad] bool (False for padding).
      centroids: [k, d] centroids used for the assignment ``labels``.
      labels: [n_pad] int32 in [0, k] (k marks padding).
      sums: [k, d] per-cluster sums; counts: [k] float32 per-cluster sizes.
      spherical: distance used to rank the points.

    Returns:
      (sums [k, d], counts [k], n_repaired [] int32) after relocation.
    """
    k = centroids.shape[0]
    empty = counts == 0
    dist = _own_distances(x, centroids, jnp.minimum(labels, k - 1), spherical)
    dist = jnp.where(valid, dist, -1.0)
    far_dist, far_idx = jax.lax.top_k(dist, k)  # farthest first, distinct
    rank = jnp.clip(jnp.cumsum(empty) - 1, 0, k - 1)  # rank among empties
    point = far_idx[rank]  # [k]
    ok = empty & (far_dist[rank] > 0)
    pts = x[point] * ok[:, None]
    # Take each chosen point out of the cluster it was assigned to.
    old = jnp.where(ok, labels[point], k)  # k is dropped by segment_sum
    sums = sums - jax.ops.segment_sum(pts, old, num_segments=k)
    counts = counts - jax.ops.segment_sum(ok.astype(counts.dtype), old, num_segments=k)
    sums = jnp.where(ok[:, None], pts, sums)
    counts = jnp.where(ok, 1.0, counts)
    return sums, counts, jnp.sum(ok, dtype=jnp.int32)


def split_empty(centroids: jax.Array, counts: jax.Array, key: jax.Array,
                eps: float | jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Fills empty clusters by splitting non-empty ones (DeepCluster / faiss policy).

    Args:
      centroids: [k, d] float32 centroids (an empty cluster's row is ignored).
      counts: [k] float32 cluster sizes.
      key: PRNG key choosing the donor clusters.
      eps: relative size of the symmetric perturbation (a python float, or a [] float32 when
        traced inside :func:`kmeans`).

    Returns:
      (centroids [k, d], counts [k], n_split [] int32). Empty clusters are visited in index
      order; each takes a perturbed copy of a donor j drawn with probability proportional to
      ``counts[j] - 1`` and half of its count. An empty cluster stays empty (its row unchanged)
      when every cluster has at most one point.
    """
    k, d = centroids.shape
    sign = jnp.where(jnp.arange(d) % 2 == 0, 1.0, -1.0).astype(centroids.dtype)

    def body(e, carry):
        c, counts, n_split = carry
        weights = jnp.maximum(counts - 1.0, 0.0)
        possible = (counts[e] == 0) & (jnp.sum(weights) > 0)
        logits = jnp.where(weights > 0, jnp.log(jnp.where(weights > 0, weights, 1.0)), -jnp.inf)
        j = jax.random.categorical(jax.random.fold_in(key, e), logits)
        donor = c[j]
        half = jnp.floor(counts[j] / 2.0)
        split_c = c.at[e].set(donor * (1.0 + eps * sign)).at[j].set(donor * (1.0 - eps * sign))
        split_counts = counts.at[e].set(half).at[j].set(counts[j] - half)
        c = jnp.where(possible, split_c, c)
        counts = jnp.where(possible, split_counts, counts)
        return c, counts, n_split + possible.astype(jnp.int32)

    return jax.lax.fori_loop(0, k, body, (centroids, counts, jnp.int32(0)))


def _update_centroids(x, valid, centroids, labels, spherical, empty_policy="farthest", key=None,
                      split_eps=1.0 / 1024, sums=None, counts=None):
    """One M-step with empty-cluster repair.

    Args:
      x: [n_pad, d] float32; valid: [n_pad] bool; centroids: [k, d];
      labels: [n_pad] int32 in [0, k] (k marks padding).
      empty_policy: "farthest" (re-seed at far points), "split" (split big clusters) or
        "keep" (leave an empty cluster's centroid where it was).
      key: PRNG key for "split".
      sums, counts: [k, d] and [k] per-cluster sums and counts of ``labels`` if already known
        (:func:`_assign_and_sum`); computed here otherwise.

    Returns:
      (new centroids [k, d], n_repaired [] int32).
    """
    k = centroids.shape[0]
    if sums is None:
        sums = jax.ops.segment_sum(x, labels, num_segments=k)
        counts = jax.ops.segment_sum(valid.astype(float_dtype()), labels, num_segments=k)
    if empty_policy == "keep":
        means = sums * (1.0 / jnp.maximum(counts, 1.0))[:, None]
        new = jnp.where((counts > 0)[:, None], means, centroids)
        return (_normalize(new) if spherical else new), jnp.sum(counts == 0).astype(jnp.int32)
    if empty_policy == "split":
        means = sums * (1.0 / jnp.maximum(counts, 1.0))[:, None]
        new = jnp.where((counts > 0)[:, None], means, centroids)
        new, _, n_split = jax.lax.cond(
            jnp.any(counts == 0),
            lambda c: split_empty(c, counts, key, split_eps),
            lambda c: (c, counts, jnp.int32(0)), new)
        return (_normalize(new) if spherical else new), n_split

    # Only the taken branch runs, so the O(n d) distances cost nothing in
    # iterations without empty clusters.
    def repair(args):
        return _repair_empty(x, valid, centroids, labels, *args, spherical)

    def no_repair(args):
        return (*args, jnp.int32(0))

    sums, counts, n_repaired = jax.lax.cond(
        jnp.any(counts == 0), repair, no_repair, (sums, counts)
    )
    # Multiply by the reciprocal like scikit-learn, for identical rounding.
    means = sums * (1.0 / jnp.maximum(counts, 1.0))[:, None]
    new = jnp.where((counts > 0)[:, None], means, centroids)
    if spherical:
        new = _normalize(new)
    return new, n_repaired


@functools.partial(jax.jit, static_argnames=("max_iter", "spherical", "chunk", "empty_policy"))
def _fit(x, init, tol, key, split_eps, *, max_iter, spherical, chunk, empty_policy="farthest"):
    """Lloyd iterations from given initial centroids.

    Args:
      x: [n, d] float32 data; init: [k, d] float32 initial centroids.
      tol: [] float32 relative tolerance (scaled by the mean feature variance).
      key: PRNG key for the "split" empty-cluster policy; split_eps: its perturbation.
      max_iter, spherical, chunk, empty_policy: static, see :func:`kmeans`.

    Returns:
      KMeansOutput.
    """
    n, d = x.shape
    if spherical:
        x, centroids, shift = _normalize(x), _normalize(init), jnp.zeros((d,), x.dtype)
    else:
        shift = jnp.mean(x, axis=0)
        x, centroids = x - shift, init - shift
    tol_abs = jnp.mean(jnp.var(x, axis=0)) * tol

    xs = _to_chunks(x, chunk)
    x_pad = xs.reshape(-1, d)
    valid = jnp.arange(x_pad.shape[0]) < n
    valid_chunks = valid.reshape(xs.shape[:2])

    def cond(state):
        it, _, _, done, _ = state
        return (it < max_iter) & ~done

    def body(state):
        it, c, labels_old, _, n_rep = state
        labels, sums, counts = _assign_and_sum(xs, valid_chunks, c, spherical)
        new_c, n_new = _update_centroids(x_pad, valid, c, labels, spherical, empty_policy,
                                         jax.random.fold_in(key, it), split_eps, sums, counts)
        strict = jnp.all(labels == labels_old)
        shift_tot = jnp.sum((new_c - c) ** 2)
        done = strict | (shift_tot <= tol_abs)
        return it + 1, new_c, labels, done, n_rep + n_new

    state = (
        jnp.int32(0),
        centroids,
        jnp.full((x_pad.shape[0],), -1, jnp.int32),
        jnp.bool_(False),
        jnp.int32(0),
    )
    n_iter, centroids, _, converged, n_rep = jax.lax.while_loop(cond, body, state)

    labels, dist = _assign_chunks(xs, centroids, spherical)
    return KMeansOutput(
        centroids=centroids + shift,
        labels=labels[:n],
        inertia=jnp.sum(jnp.where(valid, dist, 0.0)),
        n_iter=n_iter,
        converged=converged,
        n_empty_repaired=n_rep,
    )


@functools.partial(jax.jit, static_argnames=("k", "n_local_trials"))
def _plusplus_indices(x, key, *, k, n_local_trials):
    """Greedy k-means++ seeding: returns [k] int32 row indices into x: [n, d]."""
    n = x.shape[0]
    x = x - jnp.mean(x, axis=0)
    x2 = jnp.sum(x * x, axis=1)

    def sq_dist(c):  # [m, d] -> [m, n]
        xc = jnp.dot(c, x.T, precision=_PRECISION)
        d2 = jnp.sum(c * c, axis=1)[:, None] - 2.0 * xc + x2[None, :]
        return jnp.maximum(d2, 0.0)

    key_first, key_loop = jax.random.split(key)
    first = jax.random.randint(key_first, (), 0, n, dtype=jnp.int32)
    closest = sq_dist(x[first][None])[0]
    indices = jnp.zeros((k,), jnp.int32).at[0].set(first)

    def body(c, state):
        indices, closest = state
        cum = jnp.cumsum(closest)
        u = jax.random.uniform(jax.random.fold_in(key_loop, c), (n_local_trials,), RANDOM_DTYPE)
        # side="right" and the clip keep candidates at points with positive
        # distance (never an already chosen centroid) while any exist.
        cand = jnp.searchsorted(cum, u * cum[-1], side="right").astype(jnp.int32)
        last_positive = (n - 1 - jnp.argmax(closest[::-1] > 0)).astype(jnp.int32)
        cand = jnp.minimum(cand, last_positive)
        trial = jnp.minimum(closest[None, :], sq_dist(x[cand]))  # [trials, n]
        best = jnp.argmin(jnp.sum(trial, axis=1))
        return indices.at[c].set(cand[best]), trial[best]

    indices, _ = jax.lax.fori_loop(1, k, body, (indices, closest))
    return indices


@functools.partial(jax.jit, static_argnames=("n", "k"))
def _random_indices(key, *, n, k):
    """k distinct uniformly random row indices in [0, n): [k] int32."""
    return jax.random.choice(key, n, (k,), replace=False).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("spherical", "chunk"))
def _assign(x, centroids, *, spherical, chunk):
    """Jitted body of :func:`assign`."""
    if spherical:
        x, centroids = _normalize(x), _normalize(centroids)
    labels, distances = _assign_chunks(_to_chunks(x, chunk), centroids, spherical)
    n = x.shape[0]
    return labels[:n], distances[:n]


# ----------------------------------------------------------------------------
# Public API.


def kmeans_plusplus(x: Array, k: int, *, key: jax.Array,
                    n_local_trials: int | None = None) -> jax.Array:
    """Greedy k-means++ seeding, as scikit-learn's ``kmeans_plusplus``.

    The first centroid is a uniformly random point; each next one is the best
    (lowest resulting inertia) of ``n_local_trials`` candidates drawn with
    probability proportional to the squared distance to the nearest chosen
    centroid. The result has k distinct rows whenever x has k distinct rows.
    Memory: O(n_local_trials * n) for the candidate distances.

    Args:
      x: [n, d] float32 (numpy or jax).
      k: number of centroids, 1 <= k <= n.
      key: jax PRNG key.
      n_local_trials: candidates per step; default ``2 + int(log(k))``.

    Returns:
      [k, d] float32, rows of x.
    """
    x = _as_data(x)
    _check_k(k, x.shape[0])
    if n_local_trials is None:
        n_local_trials = 2 + int(math.log(k))
    if n_local_trials < 1:
        raise ValueError(f"n_local_trials must be at least 1, got {n_local_trials}.")
    return x[_plusplus_indices(x, key, k=k, n_local_trials=n_local_trials)]


def random_init(x: Array, k: int, *, key: jax.Array) -> jax.Array:
    """k distinct data points chosen uniformly at random.

    Args:
      x: [n, d] float32 (numpy or jax).
      k: number of centroids, 1 <= k <= n.
      key: jax PRNG key.

    Returns:
      [k, d] float32, rows of x.
    """
    x = _as_data(x)
    _check_k(k, x.shape[0])
    return x[_random_indices(key, n=x.shape[0], k=k)]


def assign(x: Array, centroids: Array, *, spherical: bool = False,
           chunk_size: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Nearest centroid of every point, computed in chunks.

    The nearest centroid is found with the ``||c||² - 2 x·c`` expansion (one
    matmul per chunk); the returned distance is then computed directly as
    ``||x - c||²`` to the chosen centroid, so it does not suffer from the
    expansion's cancellation error.

    Args:
      x: [n, d] float32 (numpy or jax).
      centroids: [k, d] float32 (numpy or jax).
      spherical: assign by maximal cosine similarity (rows are normalised).
      chunk_size: rows per chunk; default derived from a 256 MiB budget for
        the [chunk, k] distance block.

    Returns:
      labels: [n] int32.
      distances: [n] float32, squared Euclidean distance to the nearest
        centroid, or ``1 - cos`` when spherical.
    """
    x = _as_data(x)
    centroids = _as_data(centroids, "centroids")
    if centroids.shape[1] != x.shape[1]:
        raise ValueError(
            f"centroids have d={centroids.shape[1]} features but x has "
            f"d={x.shape[1]}."
        )
    chunk = _chunk_rows(
        x.shape[0], centroids.shape[0], chunk_size, DEFAULT_MEMORY_BUDGET_BYTES
    )
    return _assign(x, centroids, spherical=spherical, chunk=chunk)


def _check_kmeans_args(k: int, n: int, n_init: int, max_iter: int, tol: float,
                       empty_policy: str) -> None:
    """Raises ValueError for a k, restart count, loop setting or empty-cluster policy kmeans
    cannot use."""
    _check_k(k, n)
    if n_init < 1:
        raise ValueError(f"n_init must be at least 1, got {n_init}.")
    _check_loop(max_iter, tol)
    if empty_policy not in ("farthest", "split", "keep"):
        raise ValueError(
            f"empty_policy must be 'farthest', 'split' or 'keep', got {empty_policy!r}.")


def _init_function(init: str | Array, x_init: jax.Array, k: int,
                   n_init: int) -> Callable[[jax.Array], jax.Array]:
    """key -> [k, d] initial centroids, as :func:`kmeans`'s ``init`` says.

    Args:
      init: "k-means++", "random", or a [k, d] array (then ``n_init`` must be 1).
      x_init: [n, d] the points the loop clusters (normalised when spherical), which the seeding
        picks from.
      k: number of clusters.
      n_init: number of restarts.
    """
    n, d = x_init.shape
    if isinstance(init, str):
        if init == "k-means++":
            n_local_trials = 2 + int(math.log(k))

            def init_fn(key_i):
                return x_init[
                    _plusplus_indices(x_init, key_i, k=k, n_local_trials=n_local_trials)
                ]
        elif init == "random":

            def init_fn(key_i):
                return x_init[_random_indices(key_i, n=n, k=k)]
        else:
            raise ValueError(
                f"init must be 'k-means++', 'random' or a [k, d] array, got {init!r}."
            )
    else:
        c0 = _as_data(init, "init")
        if c0.shape != (k, d):
            raise ValueError(
                f"init array must have shape (k, d)=({k}, {d}), got {c0.shape}."
            )
        if n_init != 1:
            raise ValueError(f"n_init must be 1 when init is an array, got {n_init}.")

        def init_fn(key_i):
            del key_i
            return c0
    return init_fn


def _lower_inertia(out: KMeansOutput, best: KMeansOutput) -> KMeansOutput:
    """The run with the lower inertia (``best`` on a tie); a traced comparison, so that this also
    works under an outer jit."""
    better = out.inertia < best.inertia
    return jax.tree.map(lambda a, b: jnp.where(better, a, b), out, best)


def kmeans(
    x: Array,
    k: int,
    *,
    key: jax.Array,
    init: str | Array = "k-means++",
    n_init: int = 1,
    max_iter: int = 300,
    tol: float = 1e-4,
    spherical: bool = False,
    chunk_size: int | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    empty_policy: str = "farthest",
    split_eps: float = 1.0 / 1024,
) -> KMeansOutput:
    """k-means clustering with Lloyd iterations (scikit-learn semantics).

    Each iteration assigns labels with the current centroids and recomputes
    the centroids; the loop stops on strict convergence (labels unchanged) or
    when the total squared centroid shift is at most
    ``tol * mean(var(x, axis=0))``. Labels and inertia are then recomputed from
    the final centroids.

    Empty clusters are re-seeded after each assignment at the points farthest
    from their own centroid (distinct points, farthest first; the point leaves
    its old cluster). A point lying exactly on its centroid is never used; a
    cluster that cannot be repaired keeps its previous centroid. Repairs are
    counted in ``n_empty_repaired``. ``empty_policy="split"`` instead splits a
    non-empty cluster (DeepCluster's policy; see the module docstring).

    The compiled loop depends only on the shapes, ``max_iter``, ``spherical``
    and the chunk size, so repeated calls do not recompile. Callable under an
    outer ``jax.jit`` with all arguments but ``x`` and ``key`` static (the
    finite-value check is then skipped).

    Args:
      x: [n, d] float32 data (numpy or jax).
      k: number of clusters, 1 <= k <= n.
      key: jax PRNG key for the initialisation.
      init: "k-means++", "random", or a [k, d] array of initial centroids
        (then ``n_init`` must be 1).
      n_init: independent restarts (keys split from ``key``); the run with the
        lowest inertia is returned.
      max_iter: maximum number of Lloyd iterations.
      tol: relative tolerance on the centroid shift (0 disables it); scaled
        by the mean feature variance of x (of the normalised x if spherical).
      spherical: cosine k-means on L2-normalised points and centroids.
      chunk_size: rows per assignment chunk; default derived from
        ``memory_budget_bytes``.
      memory_budget_bytes: bound on the [chunk, k] float32 distance block
        (counted twice for a temporary).
      empty_policy: "farthest" (scikit-learn-like relocation), "split"
        (DeepCluster/faiss: copy and perturb a cluster drawn by size) or "keep"
        (DeepCluster-v2: an empty cluster keeps its previous centroid; the
        empty clusters met are then what ``n_empty_repaired`` counts).
      split_eps: relative perturbation of a split (faiss: 1/1024).

    Returns:
      KMeansOutput(centroids [k, d], labels [n] int32, inertia [] float32,
      n_iter [] int32, converged [] bool, n_empty_repaired [] int32).
    """
    x = _as_data(x)
    n = x.shape[0]
    _check_kmeans_args(k, n, n_init, max_iter, tol, empty_policy)
    chunk = _chunk_rows(n, k, chunk_size, memory_budget_bytes)
    # k-means++ / random seeding on the points the loop actually clusters.
    init_fn = _init_function(init, _normalize(x) if spherical else x, k, n_init)
    tol = jnp.asarray(tol, float_dtype())
    keys = jax.random.split(key, n_init)
    best = None
    for i in range(n_init):
        out = _fit(x, init_fn(keys[i]), tol, jax.random.fold_in(keys[i], 1),
                   jnp.asarray(split_eps, float_dtype()), max_iter=max_iter, spherical=spherical,
                   chunk=chunk, empty_policy=empty_policy)
        best = out if best is None else _lower_inertia(out, best)
    return best


# ----------------------------------------------------------------------------
# Host-streamed k-means: the data never has to fit on the device.


@functools.partial(jax.jit, static_argnames=("block",))
def _streamed_chunk(xb, n_valid, centroids, *, block):
    """One host chunk's share of a Lloyd step.

    Args:
      xb: [rows, d] float32 mean-centred points (rows a multiple of ``block``), rows >= n_valid
        are padding.
      n_valid: [] int32; centroids: [k, d] float32.
      block: rows of each [block, k] distance block.

    Returns:
      sums [k, d], counts [k], labels [rows] int32 and the chunk's inertia [].
    """
    rows, d = xb.shape
    valid = jnp.arange(rows) < n_valid
    labels, sums, counts = _assign_and_sum(xb.reshape(rows // block, block, d),
                                           valid.reshape(rows // block, block), centroids, False)
    labels = jnp.minimum(labels, centroids.shape[0] - 1)  # padding rows: any valid index
    distances = _own_distances(xb, centroids, labels, False)
    return sums, counts, labels, jnp.sum(jnp.where(valid, distances, 0.0))


def _host_chunk(x: Array, start: int, chunk: int, dtype: np.dtype) -> np.ndarray:
    """Rows ``start:start + chunk`` of the host array x as ``dtype``, checked finite."""
    block = np.asarray(x[start:start + chunk], dtype=dtype)
    if not np.all(np.isfinite(block)):
        raise ValueError(f"x contains NaN or infinite values (rows {start}..{start + chunk}).")
    return block


def _streamed_mean_and_tol(x: Array, chunk: int, dtype: np.dtype,
                           tol: float) -> tuple[np.ndarray, jax.Array]:
    """One streamed pass over x [n, d]: its mean [d] as ``dtype`` and the absolute tolerance
    ``tol * mean(var(x, axis=0))`` [] (both accumulated in float64)."""
    n, d = x.shape
    total, total_sq = np.zeros(d), np.zeros(d)
    for start in range(0, n, chunk):
        points = _host_chunk(x, start, chunk, dtype).astype(np.float64)
        total += points.sum(0)
        total_sq += (points * points).sum(0)
    mean = total / n
    tol_abs = jnp.asarray(tol * float(np.mean(np.maximum(total_sq / n - mean * mean, 0.0))), dtype)
    return mean.astype(dtype), tol_abs


def _streamed_init(x: Array, init: str | Array, key: jax.Array, k: int,
                   mean_f: np.ndarray) -> jax.Array:
    """The mean-centred [k, d] initial centroids of :func:`kmeans_streamed`: k distinct rows of x
    drawn with ``key`` for "random", else the given [k, d] array."""
    n, d = x.shape
    dtype = mean_f.dtype
    if isinstance(init, str):
        if init != "random":
            raise ValueError(f"init must be 'random' or a [k, d] array, got {init!r}.")
        # Drawn on the host in O(k) (jax.random.choice without replacement permutes all n).
        seed = np.asarray(jax.random.key_data(key)).ravel().tolist()
        rows = np.random.default_rng(seed).choice(n, k, replace=False)
        order = np.argsort(rows)  # gather in increasing row order (memmap-friendly)
        picked = np.empty((k, d), dtype)
        picked[order] = np.asarray(x[np.sort(rows)], dtype=dtype)
        return jnp.asarray(picked - mean_f)
    c0 = np.asarray(init, dtype)
    if c0.shape != (k, d):
        raise ValueError(f"init array must have shape (k, d)=({k}, {d}), got {c0.shape}.")
    return jnp.asarray(c0 - mean_f)


def _streamed_pass(x: Array, centroids: jax.Array, *, mean_f: np.ndarray, chunk: int,
                   block: int) -> tuple[jax.Array, jax.Array, np.ndarray, float]:
    """One assignment of every row of x to ``centroids`` (mean-centred), chunk by chunk.

    Returns:
      (sums [k, d], counts [k], labels [n] int32 on the host, inertia as a python float).
    """
    n, d = x.shape
    k, dtype = centroids.shape[0], mean_f.dtype
    sums, counts = jnp.zeros((k, d), dtype), jnp.zeros((k,), dtype)
    labels, inertia = np.empty(n, np.int32), 0.0
    for start in range(0, n, chunk):
        points = _host_chunk(x, start, chunk, dtype) - mean_f
        m = points.shape[0]
        if m < chunk:
            points = np.concatenate([points, np.zeros((chunk - m, d), dtype)])
        s, c, lab, sse = _streamed_chunk(points, jnp.int32(m), centroids, block=block)
        sums, counts = sums + s, counts + c
        labels[start:start + m] = np.asarray(lab)[:m]
        inertia += float(sse)
    return sums, counts, labels, inertia


def kmeans_streamed(x: Array, k: int, *, key: jax.Array, init: str | Array = "random",
                    max_iter: int = 20, tol: float = 1e-4, chunk_size: int | None = None,
                    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES) -> KMeansOutput:
    """k-means on points that stay in host memory (or on disk), one chunk on the device at a time.

    The memory-bounded path for data sets larger than the device (or than a second copy of them
    would allow): working memory beyond ``x`` itself is the [k, d] centroids and sums, the [n]
    int32 labels on the host, and one [chunk, d] block of points with its [chunk, k] distance
    block. The iteration and stopping rule are :func:`kmeans`'s (mean-centred Lloyd steps; stop on
    unchanged labels or a total squared centroid shift <= ``tol * mean(var(x, axis=0))``; labels
    and inertia recomputed from the final centroids), except that an empty cluster keeps its
    previous centroid (``empty_policy="keep"``: the farthest-point repair would need another pass
    over the data) and k-means++ seeding is not offered (k passes over the data).

    Args:
      x: [n, d] array-like of floats, indexable by row slices (numpy array or ``np.memmap``).
      k: number of clusters, 1 <= k <= n.
      key: PRNG key of the random initialisation (k distinct data points).
      init: "random", or [k, d] initial centroids (numpy or jax).
      max_iter: maximum number of Lloyd iterations.
      tol: relative tolerance on the centroid shift (0: only strict convergence stops early).
      chunk_size: rows per [chunk, k] distance block; default derived from
        ``memory_budget_bytes`` (cache-sized on CPU). Points cross to the device about 64 MiB at a
        time.
      memory_budget_bytes: bound on the [chunk, k] float32 distance block (counted twice).

    Returns:
      KMeansOutput(centroids [k, d] jax, labels [n] int32 numpy (host), inertia [], n_iter [],
      converged [], n_empty_repaired []: the empty clusters met over the iterations).
    """
    if getattr(x, "ndim", None) != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"x must be a non-empty 2-D array [n, d], got shape "
                         f"{getattr(x, 'shape', None)}.")
    n, d = x.shape
    _check_k(k, n)
    _check_loop(max_iter, tol)
    block = _chunk_rows(n, k, chunk_size, memory_budget_bytes)
    # Points cross to the device ~64 MiB at a time, a whole number of distance blocks.
    chunk = block * max(1, min(-(-n // block), (64 * 2**20) // (4 * d * block)))
    dtype = float_dtype()
    mean_f, tol_abs = _streamed_mean_and_tol(x, chunk, dtype, tol)
    centroids = _streamed_init(x, init, key, k, mean_f)
    one_pass = functools.partial(_streamed_pass, x, mean_f=mean_f, chunk=chunk, block=block)

    previous, n_iter, converged, n_empty = None, 0, False, 0
    for n_iter in range(1, max_iter + 1):
        sums, counts, labels, _ = one_pass(centroids)
        n_empty += int(jnp.sum(counts == 0))
        if previous is not None and np.array_equal(labels, previous):
            converged = True  # strict convergence: this step would not move the centroids
            break
        # The reciprocal, as in :func:`kmeans` and scikit-learn, for the same rounding.
        means = sums * (1.0 / jnp.maximum(counts, 1.0))[:, None]
        new = jnp.where(counts[:, None] > 0, means, centroids)
        shift = jnp.sum((new - centroids) ** 2)
        centroids, previous = new, labels
        if float(shift) <= float(tol_abs):
            converged = True
            break
    _, _, labels, inertia = one_pass(centroids)
    return KMeansOutput(centroids=centroids + jnp.asarray(mean_f), labels=labels,
                        inertia=jnp.asarray(inertia, dtype), n_iter=jnp.int32(n_iter),
                        converged=jnp.bool_(converged), n_empty_repaired=jnp.int32(n_empty))
