"""Average-linkage (UPGMA) agglomeration of a few points in jax.numpy, with cosine distances.

JULE uses it on the mean embeddings of its clusters once few remain (``jule.coarse_linkage``):
there, graph-degree linkage lets one cluster absorb its neighbours. The points are few (a hundred
or so), so the whole [P, P] distance matrix is kept and updated with the Lance-Williams rule.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jclust.cluster.norms import l2_normalize
from jclust.precision import float_dtype


class LinkageOutput(NamedTuple):
    """An agglomeration of P points.

    Attributes:
      labels: [P] int32 group of every point, 0..G-1 numbered by the lowest point of each group.
      merges: [P - G, 2] int32 (survivor, absorbed) point slots in merge order; a group is held in
        the slot of its lowest point.
      heights: [P - G] float32 linkage distance at every merge (non-decreasing for average
        linkage).
    """
    labels: jax.Array
    merges: jax.Array
    heights: jax.Array


@functools.partial(jax.jit, static_argnames=("num_groups",))
def average_linkage(points: jax.Array, num_groups: int) -> LinkageOutput:
    """Merges ``points`` into ``num_groups`` groups by average linkage on cosine distances.

    The distance between two groups is the mean cosine distance 1 - cos(p, q) over all pairs of
    their points (scipy's ``linkage(..., method="average", metric="cosine")``); each step merges
    the closest pair (ties: the lowest pair of slots in row-major order).

    Args:
      points: [P, D] float points (a zero row is at distance 1 from every point).
      num_groups: G, 1 <= G <= P.

    Returns:
      LinkageOutput.
    """
    p = points.shape[0]
    if not 1 <= num_groups <= p:
        raise ValueError(f"num_groups must be in [1, {p}], got {num_groups}")
    unit = l2_normalize(points)
    distance = jnp.clip(1.0 - unit @ unit.T, 0.0, 2.0).astype(float_dtype())
    slots = jnp.arange(p)

    def one_merge(carry, _):
        distance, counts, parent = carry
        alive = counts > 0
        masked = jnp.where(alive[:, None] & alive[None, :] & (slots[:, None] < slots[None, :]),
                           distance, jnp.inf)
        flat = jnp.argmin(masked)
        keep, gone = flat // p, flat % p
        height = masked[keep, gone]
        # Lance-Williams for average linkage: d(k, a+b) = (n_a d(k, a) + n_b d(k, b)) / (n_a + n_b).
        merged = (counts[keep] * distance[keep] + counts[gone] * distance[gone]) / (
            counts[keep] + counts[gone])
        distance = distance.at[keep, :].set(merged).at[:, keep].set(merged)
        counts = counts.at[keep].add(counts[gone]).at[gone].set(0.0)
        parent = jnp.where(parent == gone, keep, parent)
        return (distance, counts, parent), (jnp.stack([keep, gone]).astype(jnp.int32), height)

    carry = (distance, jnp.ones(p, float_dtype()), slots)
    (_, counts, parent), (merges, heights) = jax.lax.scan(one_merge, carry, None,
                                                          length=p - num_groups)
    rank = jnp.cumsum(counts > 0) - 1
    return LinkageOutput(labels=rank[parent].astype(jnp.int32), merges=merges, heights=heights)
