"""Nearest-neighbour graphs in jax.numpy: k-NN search, JULE's sample affinity graph and its initial
over-clustering (connected components of the 1-NN graph).

Everything stays O(N k): the graph is a dense [N, k] pair of neighbour indices and weights, never an
N x N matrix; the search runs over row chunks so that the [chunk, N] distance block bounds memory.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jclust.cluster.norms import l2_normalize
from jclust.precision import float_dtype

# Inputs may be device or host arrays (converted with jnp.asarray); outputs are device arrays.
Array = jax.Array | np.ndarray


class KNNOutput(NamedTuple):
    """k nearest neighbours of every row, nearest first.

    Attributes:
      indices: [N, k] int32 neighbour indices (the point itself excluded).
      sq_distances: [N, k] float32 squared Euclidean distances, ascending along each row.
    """
    indices: jax.Array
    sq_distances: jax.Array


class AffinityGraph(NamedTuple):
    """JULE's directed sample affinity graph (Yang et al. 2016, eq. 2).

    Attributes:
      indices: [N, k] int32, N_i: the k nearest neighbours of sample i.
      weights: [N, k] float32, W_ij = exp(-d_ij / sigma2) for j in N_i (0 elsewhere, implicitly).
      sigma2: [] float32, the mean of d_ij over all (i, j in N_i).
    """
    indices: jax.Array
    weights: jax.Array
    sigma2: jax.Array


@functools.partial(jax.jit, static_argnames=("k", "chunk"))
def _knn(x, *, k, chunk):
    n = x.shape[0]
    sq_norms = jnp.sum(x * x, axis=1)
    pad = -n % chunk
    rows = jnp.pad(jnp.arange(n), (0, pad)).reshape(-1, chunk)

    def one_chunk(row_ids):
        block = x[row_ids]
        d = sq_norms[row_ids, None] - 2.0 * block @ x.T + sq_norms[None, :]
        d = jnp.where(row_ids[:, None] == jnp.arange(n)[None, :], jnp.inf, d)  # not yourself
        neg, idx = jax.lax.top_k(-d, k)
        return idx.astype(jnp.int32), jnp.maximum(-neg, 0.0)

    indices, dists = jax.lax.map(one_chunk, rows)
    return indices.reshape(-1, k)[:n], dists.reshape(-1, k)[:n]


def knn(x: Array, k: int, *, chunk_size: int = 1024) -> KNNOutput:
    """Exact k nearest neighbours (squared Euclidean), the point itself excluded.

    Args:
      x: [N, D] float (cast to float32).
      k: neighbours per point, 1 <= k < N.
      chunk_size: rows whose [chunk, N] distances are held at once.

    Returns:
      KNNOutput with indices [N, k] int32 and squared distances [N, k] float32, nearest first.
      Ties go to the lower index (``lax.top_k``).
    """
    x = jnp.asarray(x, float_dtype())
    if x.ndim != 2:
        raise ValueError(f"x must be [N, D], got shape {x.shape}")
    n = x.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k={k} nearest neighbours need 1 <= k < N = {n}")
    indices, dists = _knn(x, k=k, chunk=min(chunk_size, n))
    return KNNOutput(indices=indices, sq_distances=dists)


def affinity_graph(features: Array, k: int, *, chunk_size: int = 1024) -> AffinityGraph:
    """JULE's sample affinity graph on L2-normalised features.

    Args:
      features: [N, D] float (cast to float32); rows are L2-normalised first (the reference's
        ``-normalize 1``).
      k: K_s, neighbours per sample (reference 20).
      chunk_size: see :func:`knn`.

    Returns:
      AffinityGraph: neighbours [N, k] int32, weights [N, k] float32
      W_ij = exp(-||x_i - x_j||^2 / sigma2), sigma2 [] = mean ||x_i - x_j||^2 over the graph's
      edges.
    """
    x = jnp.asarray(features, float_dtype())
    x = l2_normalize(x)
    out = knn(x, k, chunk_size=chunk_size)
    sigma2 = jnp.maximum(jnp.mean(out.sq_distances), 1e-12)
    return AffinityGraph(indices=out.indices, weights=jnp.exp(-out.sq_distances / sigma2),
                         sigma2=sigma2)


@jax.jit
def _components(nearest):
    n = nearest.shape[0]

    def spread(labels):
        # Each edge i - nearest[i] carries the smaller label both ways.
        labels = jnp.minimum(labels, labels[nearest])
        return labels.at[nearest].min(labels)

    def cond(carry):
        return carry[1]

    def body(carry):
        labels, _ = carry
        new = spread(labels)
        return new, jnp.any(new != labels)

    labels, _ = jax.lax.while_loop(cond, body, (jnp.arange(n, dtype=jnp.int32), jnp.array(True)))
    return labels


def nearest_neighbour_clusters(nearest: Array) -> jax.Array:
    """JULE's initial over-clustering: connected components of the 1-NN graph.

    Every sample is joined to its nearest neighbour; each connected component is a cluster. (The
    reference follows 1-NN chains of at most 50 steps, which gives the same components unless a
    chain is longer; here components are exact.)

    Args:
      nearest: [N] int, the nearest neighbour of every sample (e.g. ``knn(x, 1).indices[:, 0]``).

    Returns:
      [N] int32 cluster labels 0..C-1, numbered in order of each cluster's smallest sample index.
    """
    nearest = jnp.asarray(nearest, jnp.int32)
    if nearest.ndim != 1:
        raise ValueError(f"nearest must be [N], got shape {nearest.shape}")
    roots = _components(nearest)  # smallest index of each component
    # Renumber roots to 0..C-1 in increasing order (a cumulative count of the roots).
    is_root = roots == jnp.arange(nearest.shape[0])
    return (jnp.cumsum(is_root) - 1)[roots].astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("num_clusters",))
def _gdl(indices, weights, labels, *, num_clusters):
    n, k = indices.shape
    src = jnp.repeat(jnp.arange(n, dtype=jnp.int32), k)  # edge m -> j carries W_mj
    dst = indices.reshape(-1)
    w = weights.reshape(-1)
    # out_b(m) = sum_{j in N_m, label j = b} W_mj: one entry per (m, b) after merging duplicates.
    out_cluster = labels[dst]
    order = jnp.lexsort((out_cluster, src))
    m_sorted, b_sorted, w_sorted = src[order], out_cluster[order], w[order]
    first = jnp.concatenate([jnp.array([True]),
                             (m_sorted[1:] != m_sorted[:-1]) | (b_sorted[1:] != b_sorted[:-1])])
    slot = jnp.cumsum(first) - 1  # unique (m, b) pair of every sorted out-edge
    out_value = jax.ops.segment_sum(w_sorted, slot, num_segments=n * k)
    pair_m = jax.ops.segment_max(m_sorted, slot, num_segments=n * k)
    pair_b = jax.ops.segment_max(b_sorted, slot, num_segments=n * k)
    num_pairs = slot[-1] + 1
    valid = jnp.arange(n * k) < num_pairs
    # in_b(m) = sum_{n: m in N_n, label n = b} W_nm, needed only where out_b(m) > 0: look every
    # in-edge (n -> m) up among the (m, b) pairs; in-edges of other pairs contribute nothing.
    big = jnp.iinfo(jnp.int32).max
    pair_m = jnp.where(valid, pair_m, big)
    pair_b = jnp.where(valid, pair_b, big)
    in_m, in_b = dst, labels[src]
    pos = _search_pairs(pair_m, pair_b, in_m, in_b)
    hit = (pos < n * k) & (pair_m[jnp.minimum(pos, n * k - 1)] == in_m) & \
          (pair_b[jnp.minimum(pos, n * k - 1)] == in_b)
    in_value = jax.ops.segment_sum(jnp.where(hit, w, 0.0), jnp.where(hit, pos, 0),
                                   num_segments=n * k)
    products = jnp.where(valid, out_value * in_value, 0.0)
    rows = labels[jnp.where(valid, pair_m, 0)]
    cols = jnp.where(valid, pair_b, 0)
    return jnp.zeros((num_clusters, num_clusters), float_dtype()).at[rows, cols].add(products)


def _search_pairs(keys_major, keys_minor, query_major, query_minor):
    """Index of the first (major, minor) pair >= each query in lexicographically sorted pairs."""
    lo = jnp.zeros(query_major.shape, jnp.int32)
    hi = jnp.full(query_major.shape, keys_major.shape[0], jnp.int32)

    def step(_, bounds):
        lo, hi = bounds
        mid = (lo + hi) // 2
        mid_c = jnp.minimum(mid, keys_major.shape[0] - 1)
        less = (keys_major[mid_c] < query_major) | (
            (keys_major[mid_c] == query_major) & (keys_minor[mid_c] < query_minor))
        go_right = (mid < hi) & less
        return jnp.where(go_right, mid + 1, lo), jnp.where(go_right, hi, mid)

    steps = int(np.ceil(np.log2(keys_major.shape[0] + 1))) + 1
    lo, _ = jax.lax.fori_loop(0, steps, step, (lo, hi))
    return lo


def gdl_affinity(graph: AffinityGraph, labels: Array, num_clusters: int, *,
                 symmetric: bool = True) -> tuple[jax.Array, jax.Array | None]:
    """Graph-degree-linkage affinities between clusters (JULE, after Zhang et al. 2012).

    With in_b(m) = sum_{n in C_b} W_nm and out_b(m) = sum_{n in C_b} W_mn:
    A_us(a -> b) = sum_{m in C_a} in_b(m) out_b(m), and the symmetric affinity
    A(a, b) = A_us(a -> b) / |C_b|^2 + A_us(b -> a) / |C_a|^2.

    Args:
      graph: the sample affinity graph ([N, k] neighbours and weights).
      labels: [N] int cluster of every sample, in 0..num_clusters-1.
      num_clusters: C.
      symmetric: also return A (False saves a second C x C matrix; the merge scan needs A_us only).

    Returns:
      (unnormalised [C, C] float32 A_us, where [a, b] = A_us(a -> b); symmetric [C, C] float32 A
      with a zero diagonal, or None). Dense: C x C floats (C = 20,000 is 1.6 GB).
    """
    labels = jnp.asarray(labels, jnp.int32)
    if labels.shape != graph.indices.shape[:1]:
        raise ValueError(f"labels must be [N] = {graph.indices.shape[:1]}, got {labels.shape}")
    a_us = _gdl(graph.indices, graph.weights, labels, num_clusters=num_clusters)
    if not symmetric:
        return a_us, None
    sizes = jnp.zeros(num_clusters, float_dtype()).at[labels].add(1.0)
    directed = a_us / jnp.maximum(sizes, 1.0)[None, :] ** 2
    symmetric = directed + directed.T
    return a_us, symmetric * (1.0 - jnp.eye(num_clusters, dtype=symmetric.dtype))


class MergeState(NamedTuple):
    """Clusters during an agglomerative merge scan (all [C]-indexed; merged-away slots inactive).

    Attributes:
      affinity_us: [C, C] float32 unnormalised directed GDL affinities A_us(a -> b).
      sizes: [C] float32 cluster sizes.
      active: [C] bool, whether the slot still holds a cluster.
      parent: [C] int32, the slot each slot was merged into (itself while active).
    """
    affinity_us: jax.Array
    sizes: jax.Array
    active: jax.Array
    parent: jax.Array


def merge_state(affinity_us: Array, sizes: Array) -> MergeState:
    """A merge scan's start: every slot an active cluster.

    Args:
      affinity_us: [C, C] unnormalised directed GDL affinities (``gdl_affinity``'s first result),
        cast to float32.
      sizes: [C] cluster sizes (any number dtype), cast to float32.

    Returns:
      MergeState with every slot active and its own parent.
    """
    affinity_us = jnp.asarray(affinity_us, float_dtype())
    sizes = jnp.asarray(sizes, float_dtype())
    if affinity_us.ndim != 2 or affinity_us.shape[0] != affinity_us.shape[1]:
        raise ValueError(f"affinity_us must be [C, C], got shape {affinity_us.shape}")
    c = affinity_us.shape[0]
    if sizes.shape != (c,):
        raise ValueError(f"sizes must be [C] = ({c},), got shape {sizes.shape}")
    return MergeState(affinity_us=affinity_us, sizes=sizes, active=jnp.ones(c, bool),
                      parent=jnp.arange(c, dtype=jnp.int32))


def symmetric_affinity(state: MergeState) -> jax.Array:
    """A(a, b) = A_us(a->b)/|b|^2 + A_us(b->a)/|a|^2 between active clusters, -inf elsewhere and on
    the diagonal.

    Args:
      state: the merge scan's clusters (C slots).

    Returns:
      [C, C] float32 symmetric affinities.
    """
    directed = state.affinity_us / jnp.maximum(state.sizes, 1.0)[None, :] ** 2
    a = directed + directed.T
    valid = state.active[:, None] & state.active[None, :] & ~jnp.eye(a.shape[0], dtype=bool)
    return jnp.where(valid, a, -jnp.inf)


def merge_scores(affinity: jax.Array, *, num_neighbours: int,
                 local_weight: float | jax.Array) -> tuple[jax.Array, jax.Array]:
    """JULE's merge criterion for every cluster.

    score(i) = A_1 + lambda / (K_c - 1) * sum_{k=2..K_c} (A_1 - A_k), with A_1 >= A_2 >= ... the
    affinities of cluster i to the others (K_c = ``num_neighbours``, lambda = ``local_weight``);
    inactive clusters score -inf.

    Args:
      affinity: [C, C] float32 symmetric affinities, -inf for inactive pairs and the diagonal
        (:func:`symmetric_affinity`).
      num_neighbours: K_c.
      local_weight: lambda (a python float, or a [] float32 when traced by the merge scan).

    Returns:
      (scores [C] float32, best neighbour [C] int32).
    """
    k = min(num_neighbours, affinity.shape[0] - 1)
    top, idx = jax.lax.top_k(affinity, max(k, 1))
    first = top[:, :1]
    finite = jnp.isfinite(top)
    gaps = jnp.where(finite[:, 1:], first - top[:, 1:], 0.0)
    local = jnp.sum(gaps, axis=1) / max(k - 1, 1) if k > 1 else 0.0
    scores = jnp.where(jnp.isfinite(first[:, 0]), first[:, 0] + local_weight * local, -jnp.inf)
    return scores, idx[:, 0].astype(jnp.int32)


def _apply_merge(state: MergeState, keep, gone) -> MergeState:
    """Slot ``gone`` merged into ``keep`` with the fast update (JULE's appendix): the rows and
    columns of the unnormalised affinities add; ``gone`` becomes inactive."""
    # The result of: column keep += column gone; row keep += row gone; row and column gone = 0,
    # written as ONE scatter of the 4 changed lines. As a chain of updates XLA:CPU copied the
    # whole [C, C] matrix at every merge (0.29 s a merge at C = 14,336); one scatter stays in place.
    # Where two lines cross they carry the same value, so the scatter order does not matter.
    a_us = state.affinity_us
    c = a_us.shape[0]
    every = jnp.arange(c)
    corner = (a_us[keep, keep] + a_us[keep, gone]) + (a_us[gone, keep] + a_us[gone, gone])
    row = (a_us[keep, :] + a_us[gone, :]).at[keep].set(corner).at[gone].set(0.0)
    column = (a_us[:, keep] + a_us[:, gone]).at[keep].set(corner).at[gone].set(0.0)
    rows = jnp.concatenate([jnp.full(c, keep), every, jnp.full(c, gone), every])
    cols = jnp.concatenate([every, jnp.full(c, keep), every, jnp.full(c, gone)])
    a_us = a_us.at[rows, cols].set(jnp.concatenate([row, column, jnp.zeros(2 * c, a_us.dtype)]))
    sizes = state.sizes.at[keep].add(state.sizes[gone]).at[gone].set(0.0)
    return MergeState(a_us, sizes, state.active.at[gone].set(False),
                      state.parent.at[gone].set(keep))


@functools.partial(jax.jit, static_argnames=("num_merges", "num_neighbours"))
def _merge_scan(state, local_weight, *, num_merges, num_neighbours):
    def one_merge(state, _):
        affinity = symmetric_affinity(state)
        scores, best = merge_scores(affinity, num_neighbours=num_neighbours,
                                    local_weight=local_weight)
        i = jnp.argmax(scores).astype(jnp.int32)
        j = best[i]
        keep, gone = jnp.minimum(i, j), jnp.maximum(i, j)
        return _apply_merge(state, keep, gone), jnp.stack([keep, gone])

    return jax.lax.scan(one_merge, state, None, length=num_merges)


def _affinity_rows(state: MergeState, rows) -> jax.Array:
    """Rows [R, C] of :func:`symmetric_affinity` without forming the whole matrix."""
    sizes = jnp.maximum(state.sizes, 1.0)
    a = state.affinity_us[rows, :] / sizes[None, :] ** 2 + \
        state.affinity_us[:, rows].T / sizes[rows][:, None] ** 2
    c = state.active.shape[0]
    valid = state.active[rows][:, None] & state.active[None, :] & \
        (rows[:, None] != jnp.arange(c)[None, :])
    return jnp.where(valid, a, -jnp.inf)


def _scan_rows(state, rows, depth):
    # The barriers keep top_k apart from its producer and its consumers (the slices below): fused
    # with them, XLA:CPU rewrites top_k into a full sort of every row (123 ms instead of 8 ms for
    # 256 x 6,000).
    rows_affinity = jax.lax.optimization_barrier(_affinity_rows(state, rows))
    top, idx = jax.lax.optimization_barrier(jax.lax.top_k(rows_affinity, depth + 1))
    return top[:, :depth], idx[:, :depth].astype(jnp.int32), top[:, depth]


_scan_rows_jit = jax.jit(_scan_rows, static_argnames=("depth",))


def _cache_rows(state, *, depth):
    """Per row: the ``depth`` largest affinities (exact) and a bound on every affinity outside
    them. Returns (vals [C, depth], idx [C, depth] int32, bound [C]).

    A python loop over blocks of rows, each a jitted call: as a ``lax.map`` XLA:CPU spent ~16 ms
    a block on copies of the [C, C] affinities (3 s at C = 6,000).
    """
    c = state.active.shape[0]
    block = 256
    parts = [_scan_rows_jit(state, jnp.arange(start, start + block) % c, depth=depth)
             for start in range(0, c, block)]
    vals, idx, bound = (jnp.concatenate(p)[:c] for p in zip(*parts))
    return vals, idx, bound


def _first_index(x, value):
    """Per row of x [M, D]: the first column holding ``value`` [M] (argmin/argmax's index), by
    two plain reductions (XLA:CPU does not vectorise argmin's variadic one)."""
    columns = jnp.arange(x.shape[1])
    return jnp.min(jnp.where(x == value[:, None], columns[None, :], x.shape[1]), axis=1)


def _largest_values(x, k):
    """``lax.top_k(x, k)[0]`` for a small k: [M, D] -> [M, k] descending, ties kept, by k rounds
    of max-and-remove-first (XLA:CPU's top_k sorts every row: 1.3 ms for 6,000 x 16)."""
    columns = jnp.arange(x.shape[1])
    out = []
    for _ in range(k):
        largest = jnp.max(x, axis=1)
        out.append(largest)
        x = jnp.where(columns[None, :] == _first_index(x, largest)[:, None], -jnp.inf, x)
    return jnp.stack(out, axis=1)


# One merge per call, its carry donated: inside a lax.scan over merges, XLA:CPU copied the
# [C, C] affinities at every merge (the body both reads them in loops and writes them), ~15 ms
# a merge at C = 6,000; as a donated call it updates them in place (~1 ms a merge).
@functools.partial(jax.jit, static_argnames=("num_neighbours", "depth", "rescan"),
                   donate_argnums=0)
def _cached_merge(carry, local_weight, *, num_neighbours, depth, rescan):
    """One merge of the cached scan: (state, vals, idx, bound) -> (the same, [keep, gone])."""
    state, vals, idx, bound = carry
    c = state.active.shape[0]
    k = min(num_neighbours, c - 1)

    def refresh(state, carry):
        vals, idx, bound, need = carry
        rows = jnp.nonzero(need, size=rescan, fill_value=c)[0]
        safe = jnp.minimum(rows, c - 1)
        v, i, b = _scan_rows(state, safe, depth)
        ok = rows < c
        vals = vals.at[rows].set(v, mode="drop")
        idx = idx.at[rows].set(i, mode="drop")
        bound = bound.at[rows].set(b, mode="drop")
        need = need.at[jnp.where(ok, rows, c)].set(False, mode="drop")
        return vals, idx, bound, need

    def exact_enough(vals, bound):
        kth = _largest_values(vals, k)[:, -1]
        return kth >= bound

    top = _largest_values(vals, k)
    first = top[:, :1]
    gaps = jnp.where(jnp.isfinite(top[:, 1:]), first - top[:, 1:], 0.0)
    local = jnp.sum(gaps, axis=1) / max(k - 1, 1) if k > 1 else 0.0
    scores = jnp.where(state.active & jnp.isfinite(first[:, 0]),
                       first[:, 0] + local_weight * local, -jnp.inf)
    # Best neighbour: the largest cached value, the lowest index among equal ones.
    best_val = first[:, 0]
    tied = (vals == best_val[:, None]) & jnp.isfinite(vals)
    best = jnp.min(jnp.where(tied, idx, c), axis=1)
    i = jnp.argmax(scores).astype(jnp.int32)
    j = best[i]
    keep, gone = jnp.minimum(i, j), jnp.maximum(i, j)
    state = _apply_merge(state, keep, gone)
    # Every other row: drop keep and gone from its cache, then offer keep's new affinity.
    column = _affinity_rows(state, keep[None])[0]  # A(keep, i) = A(i, keep)
    stale = (idx == keep) | (idx == gone)
    vals = jnp.where(stale, -jnp.inf, vals)
    idx = jnp.where(stale, -1, idx)
    slot = _first_index(vals, jnp.min(vals, axis=1))
    evicted = jnp.take_along_axis(vals, slot[:, None], 1)[:, 0]
    offer = column > bound
    rows = jnp.arange(c)
    vals = vals.at[rows, slot].set(jnp.where(offer, column, evicted))
    idx = idx.at[rows, slot].set(jnp.where(offer, keep, jnp.take_along_axis(
        idx, slot[:, None], 1)[:, 0]))
    bound = jnp.where(offer, jnp.maximum(bound, evicted), bound)
    v, ix, b = _scan_rows(state, keep[None], depth)  # keep's own row changed everywhere
    vals, idx, bound = vals.at[keep].set(v[0]), idx.at[keep].set(ix[0]), bound.at[keep].set(b[0])
    vals = vals.at[gone].set(-jnp.inf)
    bound = bound.at[gone].set(-jnp.inf)
    need = state.active & ~exact_enough(vals, bound)
    vals, idx, bound, _ = jax.lax.while_loop(
        lambda carry: jnp.any(carry[3]), functools.partial(refresh, state),
        (vals, idx, bound, need))
    return (state, vals, idx, bound), jnp.stack([keep, gone])


def _merge_scan_cached(state, local_weight, *, num_merges, num_neighbours, depth, rescan):
    """``num_merges`` cached merges, one donated call each (see :func:`_cached_merge`)."""
    state = jax.tree.map(jnp.copy, state)  # the caller's state is not donated
    carry = (state, *_cache_rows(state, depth=depth))
    merges = []
    for _ in range(num_merges):
        carry, merge = _cached_merge(carry, local_weight, num_neighbours=num_neighbours,
                                     depth=depth, rescan=rescan)
        merges.append(merge)
    return carry[0], jnp.stack(merges)


def merge_clusters(state: MergeState, num_merges: int, *, num_neighbours: int = 5,
                   local_weight: float = 1.0, cache_size: int | None = 16,
                   rescan_rows: int = 32) -> tuple[MergeState, jax.Array]:
    """``num_merges`` steps of JULE's agglomerative merge scan, in a ``lax.scan``.

    Each step merges the cluster of highest :func:`merge_scores` with its nearest cluster (the
    lower slot survives); the affinities of the merged cluster follow the fast update (JULE's
    appendix): the unnormalised affinity rows and columns of the two clusters add.

    Args:
      state: from :func:`merge_state` or a previous call.
      num_merges: how many merges (at most active clusters - 1).
      num_neighbours: K_c of the merge criterion (reference 5).
      local_weight: lambda of the merge criterion (reference 1; 0 merges by affinity alone).
      cache_size: None recomputes every affinity and score at every merge (O(C^2) a merge: the
        plain path, for checking). An int D >= K_c keeps each cluster's D largest affinities and
        a bound on the rest, updated at each merge in O(C D); rows whose K_c-th cached value
        falls below their bound are re-scanned (O(C) each, ``rescan_rows`` at a time). Same
        merges as the plain path (up to ties between exactly equal affinities).
      rescan_rows: rows re-scanned together.

    Returns:
      (new state, merges [num_merges, 2] int32 (survivor, absorbed) slots in order).
    """
    active = int(jnp.sum(state.active))
    if not 0 <= num_merges < active:
        raise ValueError(f"{num_merges} merges need fewer than the {active} active clusters")
    if num_merges == 0:
        return state, jnp.zeros((0, 2), jnp.int32)
    if cache_size is None:
        return _merge_scan(state, jnp.asarray(local_weight, float_dtype()), num_merges=num_merges,
                           num_neighbours=num_neighbours)
    c = state.active.shape[0]
    depth = min(max(cache_size, num_neighbours), c - 1)
    return _merge_scan_cached(state, jnp.asarray(local_weight, float_dtype()),
                              num_merges=num_merges, num_neighbours=num_neighbours, depth=depth,
                              rescan=min(rescan_rows, c))


def resolve_labels(parent: Array, labels: Array) -> jax.Array:
    """Sample labels after merges: follow every slot's parent chain to its surviving slot, then
    renumber the survivors 0..C'-1 in slot order.

    Args:
      parent: [C] int, ``MergeState.parent`` after the merges.
      labels: [N] int slot of every sample before the merges, in 0..C-1.

    Returns:
      [N] int32 labels in 0..C'-1 (C' surviving clusters).
    """
    parent = jnp.asarray(parent, jnp.int32)
    if parent.ndim != 1:
        raise ValueError(f"parent must be [C], got shape {parent.shape}")
    root = parent
    for _ in range(max(1, int(np.ceil(np.log2(parent.shape[0] + 1))))):
        root = root[root]  # pointer jumping: chains halve each round
    alive = root == jnp.arange(parent.shape[0])
    rank = jnp.cumsum(alive) - 1
    return rank[root[jnp.asarray(labels, jnp.int32)]].astype(jnp.int32)
