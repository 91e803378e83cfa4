"""Cluster repair by 2-means splits (ODC's, Zhan et al. 2020): dissolve the clusters that are too
small and refill each from a split of the then-largest cluster, with fixed shapes so that it runs
inside a jitted train step.

The split (:func:`bisect`) is a Euclidean 2-means started from the members' principal direction
(power iterations), not scikit-learn's k-means++ restarts; it falls back to a random half when a
side comes out empty, as ODC's reference does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jclust.precision import RANDOM_DTYPE

_PRECISION = jax.lax.Precision.HIGHEST  # full float32 dot products also on GPU/TPU
_POWER_ITERS = 10  # power iterations for the principal direction that starts a 2-means split


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of the rows of x [n, D] where mask [n] is True ([D]; zeros if none)."""
    w = mask.astype(x.dtype)
    return jnp.dot(w, x, precision=_PRECISION) / jnp.maximum(jnp.sum(w), 1.0)


def centroids_from_memory(memory: jax.Array, labels: jax.Array,
                          previous: jax.Array) -> jax.Array:
    """Cluster means of the memory; an empty cluster keeps its previous centroid.

    memory: [N, D], labels: [N] in [0, K), previous: [K, D]. Returns [K, D].
    """
    k = previous.shape[0]
    sums = jax.ops.segment_sum(memory, labels, num_segments=k)
    counts = jax.ops.segment_sum(jnp.ones_like(labels, memory.dtype), labels, num_segments=k)
    return jnp.where((counts > 0)[:, None], sums / jnp.maximum(counts, 1.0)[:, None], previous)


def random_half(member: jax.Array, key: jax.Array) -> jax.Array:
    """A uniformly random ``n - n // 2`` of the n members. member: [N] bool -> [N] bool."""
    scores = jnp.where(member, jax.random.uniform(key, member.shape, RANDOM_DTYPE), jnp.inf)
    rank = jnp.argsort(jnp.argsort(scores))
    return member & (rank >= jnp.sum(member) // 2)


def bisect(x: jax.Array, member: jax.Array, key: jax.Array, iters: int) -> jax.Array:
    """Splits the member rows of x in two by 2-means (Euclidean).

    Start: the sign of the projection on the members' principal direction (power iteration from
    the member farthest from their mean); then Lloyd iterations until the partition stops
    changing, at most ``iters``. If a side comes out empty (e.g. identical rows), a random half
    is taken instead, as the reference does.

    Args:
      x: [N, D] float32.
      member: [N] bool, the rows to split (at least two for a useful result).
      key: PRNG key, used only by the random fallback.
      iters: the most Lloyd iterations.

    Returns:
      [N] bool, the part that does *not* contain the lowest-index member (a subset of member).
    """
    w = member.astype(x.dtype)[:, None]
    centred = (x - masked_mean(x, member)) * w
    start = centred[jnp.argmax(jnp.sum(centred * centred, axis=1))]
    scatter = jnp.dot(centred.T, centred, precision=_PRECISION)  # [D, D]

    def power(_, v):
        v = jnp.dot(scatter, v, precision=_PRECISION)
        return v / jnp.maximum(jnp.linalg.norm(v), jnp.finfo(x.dtype).tiny)

    direction = jax.lax.fori_loop(0, _POWER_ITERS, power, start)
    part = member & (jnp.dot(centred, direction, precision=_PRECISION) > 0)

    def lloyd(carry):
        i, part, _ = carry
        sides = jnp.stack([member & ~part, member & part]).astype(x.dtype)  # [2, N]
        sums = jnp.dot(sides, x, precision=_PRECISION)
        a, b = sums / jnp.maximum(jnp.sum(sides, axis=1), 1.0)[:, None]
        # |x - b|² < |x - a|²  <=>  2 x·(b - a) > |b|² - |a|²
        gap = 2.0 * jnp.dot(x, b - a, precision=_PRECISION) - (jnp.sum(b * b) - jnp.sum(a * a))
        new = member & (gap > 0)
        return i + 1, new, jnp.any(new != part)

    _, part, _ = jax.lax.while_loop(lambda c: (c[0] < iters) & c[2], lloyd,
                                    (jnp.int32(0), part, jnp.bool_(True)))
    size = jnp.sum(part)
    part = jax.lax.cond((size > 0) & (size < jnp.sum(member)), lambda: part,
                        lambda: random_half(member, key))
    return jnp.where(part[jnp.argmax(member)], member & ~part, part)


def split_largest(memory: jax.Array, labels: jax.Array, centroids: jax.Array, empty: jax.Array,
                  key: jax.Array, iters: int) -> tuple[jax.Array, jax.Array]:
    """Refills the empty cluster ``empty`` with part of the currently largest cluster.

    The largest cluster j (lowest index on ties) is split by :func:`bisect` on its memory rows;
    the part without j's lowest-index member takes label ``empty``; the centroids of j and
    ``empty`` become the means of their parts. Nothing changes if j has fewer than two members.

    Args:
      memory: [N, D]; labels: [N] int32; centroids: [K, D]; empty: [] int, an empty cluster.
      key: PRNG key for :func:`bisect`'s fallback; iters: its Lloyd iterations.

    Returns:
      (labels [N], centroids [K, D]).
    """
    sizes = jnp.bincount(labels, length=centroids.shape[0])
    largest = jnp.argmax(sizes)
    member = labels == largest
    moved = bisect(memory, member, key, iters) & (sizes[largest] >= 2)
    new_centroids = (centroids.at[largest].set(masked_mean(memory, member & ~moved))
                     .at[empty].set(masked_mean(memory, moved)))
    return (jnp.where(moved, empty, labels),
            jnp.where(sizes[largest] >= 2, new_centroids, centroids))


def fix_small_clusters(memory: jax.Array, labels: jax.Array, centroids: jax.Array,
                       key: jax.Array, *, min_size: int,
                       iters: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Dissolves clusters with fewer than ``min_size`` members and refills them by splitting.

    Members of small clusters move to the nearest centroid (dot product) among the clusters that
    are not small; then every small (now empty) cluster, in index order, takes part of the
    then-largest cluster (:func:`split_largest`). Requires K * min_size <= N, so that some
    cluster is not small.

    Args:
      memory: [N, D] unit rows; labels: [N] int32; centroids: [K, D].
      key: PRNG key (random halving fallback of the splits).
      min_size: the smallest allowed cluster size.
      iters: Lloyd iterations of each 2-means split.

    Returns:
      (labels [N], centroids [K, D], number of small clusters [] int32).
    """
    k = centroids.shape[0]
    small = jnp.bincount(labels, length=k) < min_size

    def fix(operands):
        labels, centroids = operands
        sims = jnp.dot(memory, centroids.T, precision=_PRECISION)
        target = jnp.argmax(jnp.where(small[None, :], -jnp.inf, sims), axis=1).astype(jnp.int32)
        labels = jnp.where(small[labels], target, labels)

        def refill(e, carry):
            return jax.lax.cond(
                small[e], lambda c: split_largest(memory, *c, e, jax.random.fold_in(key, e), iters),
                lambda c: c, carry)

        return jax.lax.fori_loop(0, k, refill, (labels, centroids))

    labels, centroids = jax.lax.cond(jnp.any(small), fix, lambda operands: operands,
                                     (labels, centroids))
    return labels, centroids, jnp.sum(small, dtype=jnp.int32)
