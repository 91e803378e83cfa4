"""ROC curves and areas in jax.numpy, ties counted as scikit-learn counts them, and the candidates
of CliqueCNN's per-anchor protocol.

* :func:`roc_auc`: the area under the ROC curve of positive and negative scores, P(positive >
  negative) + P(positive = negative) / 2 (the Mann-Whitney U statistic, ``roc_auc_score``), from
  integer counts summed in int64: exact for any number of scores.
* :func:`anchor_roc`: CliqueCNN's per-anchor curves (Bautista et al. 2016, Olympic Sports'
  ``calculate_roc_auc.py``): for each anchor, the ROC curve of its candidates' scores (the points
  of ``sklearn.metrics.roc_curve``: (0, 0), then the end of every group of tied scores),
  interpolated at G false-positive rates g / (G - 1) as ``np.interp`` interpolates those points (at
  a vertical step, its top; whether fpr <= g / (G - 1) is decided exactly, in integers), and its
  exact area. (CliqueCNN's script interpolates with ``scipy.interpolate.interp1d``, which gives
  nan on a vertical step that falls on a grid point; ``np.interp`` takes the step's top.)
* :func:`anchor_candidates`: each anchor's nearest items plus random ones, deduplicated.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array | np.ndarray


class AnchorROC(NamedTuple):
    """Per-anchor ROC curves over candidate lists.

    Attributes:
      tpr: [A, G] float32 true-positive rate at false-positive rate g / (G - 1) (0 where unused).
      auc: [A] float32 exact area under each anchor's ROC curve (0 where unused).
      used: [A] bool, whether the anchor has at least one positive and one negative candidate.
    """
    tpr: jax.Array
    auc: jax.Array
    used: jax.Array


@jax.jit
def _twice_wins(positive, negative):
    negative = jnp.sort(negative)
    below = jnp.searchsorted(negative, positive, side="left")
    return below + jnp.searchsorted(negative, positive, side="right")


def roc_auc(positive_scores: Array, negative_scores: Array) -> float:
    """ROC-AUC of scores: P(positive > negative) + P(positive = negative) / 2, exact (integer
    counts, summed in int64), as ``sklearn.metrics.roc_auc_score``; nan if either is empty."""
    positive, negative = jnp.asarray(positive_scores), jnp.asarray(negative_scores)
    if positive.size == 0 or negative.size == 0:
        return float("nan")
    twice = np.asarray(_twice_wins(positive, negative), np.int64).sum()
    return float(twice / (2.0 * positive.size * negative.size))


@functools.partial(jax.jit, static_argnames=("grid_points",))
def _anchor_roc(scores, positive, valid, *, grid_points):
    scores = jnp.where(valid, scores, -jnp.inf)  # invalid candidates sort last and count nowhere
    order = jnp.argsort(-scores, axis=1, stable=True)
    key = -jnp.take_along_axis(scores, order, 1)  # ascending
    valid = jnp.take_along_axis(valid, order, 1)
    pos = jnp.take_along_axis(positive, order, 1) & valid
    zero = jnp.zeros((key.shape[0], 1), jnp.int32)
    tp = jnp.concatenate([zero, jnp.cumsum(pos, 1, dtype=jnp.int32)], 1)  # after the first r
    fp = jnp.concatenate([zero, jnp.cumsum(valid & ~pos, 1, dtype=jnp.int32)], 1)
    num_pos, num_neg = tp[:, -1:], fp[:, -1:]
    # Each candidate's tie group is [start, end) in the sorted order.
    c = jnp.arange(key.shape[1])
    differs = key[:, 1:] != key[:, :-1]
    true = jnp.ones_like(zero, bool)
    group_end = jnp.concatenate([differs, true], 1)  # the candidate ends its group
    start = jax.lax.cummax(jnp.where(jnp.concatenate([true, differs], 1), c, 0), axis=1)
    end = jax.lax.cummin(jnp.where(group_end, c + 1, key.shape[1]), axis=1, reverse=True)
    wins = jnp.take_along_axis(tp, start, 1) + jnp.take_along_axis(tp, end, 1)  # twice, per neg
    used = (num_pos[:, 0] > 0) & (num_neg[:, 0] > 0)
    auc = jnp.sum(jnp.where(valid & ~pos, wins, 0), 1) / jnp.maximum(2 * num_pos * num_neg, 1)[:, 0]
    # ROC vertices: (0, 0) and the end of every tie group; fpr = fp / num_neg, tpr = tp / num_pos.
    r = jnp.arange(key.shape[1] + 1)
    vertex = jnp.concatenate([true, valid & group_end], 1)
    previous = jax.lax.cummax(jnp.where(vertex, r, 0), axis=1)
    big = key.shape[1] + 1
    following = jnp.concatenate([jax.lax.cummin(jnp.where(vertex, r, big), axis=1, reverse=True)
                                 [:, 1:], jnp.full_like(zero, big)], 1)  # first vertex after r
    g = jnp.arange(grid_points)
    # The last vertex with fpr <= g / (G - 1), compared exactly in integers; its successor.
    below = fp[:, None, :] * (grid_points - 1) <= (g[None, :] * num_neg)[:, :, None]
    last = jnp.sum(below, axis=2, dtype=jnp.int32) - 1  # fp is non-decreasing
    j = jnp.take_along_axis(previous, last, 1)
    nxt = jnp.take_along_axis(following, j, 1)
    has_next = nxt < big
    nxt = jnp.minimum(nxt, key.shape[1])
    tp_j, fp_j = jnp.take_along_axis(tp, j, 1), jnp.take_along_axis(fp, j, 1)
    rise = jnp.take_along_axis(tp, nxt, 1) - tp_j
    run = (jnp.take_along_axis(fp, nxt, 1) - fp_j) * (grid_points - 1)
    step = (g[None, :] * num_neg - fp_j * (grid_points - 1)) * rise / jnp.maximum(run, 1)
    tpr = (tp_j + jnp.where(has_next, step, 0.0)) / jnp.maximum(num_pos, 1)
    return AnchorROC(tpr=jnp.where(used[:, None], tpr, 0.0).astype(jnp.float32),
                     auc=jnp.where(used, auc, 0.0).astype(jnp.float32), used=used)


def anchor_roc(scores: Array, positive: Array, valid: Array | None = None, *,
               grid_points: int = 101) -> AnchorROC:
    """ROC curve and AUC of each anchor's candidates.

    Args:
      scores: [A, C] candidate similarities; positive: [A, C] bool, same label as the anchor.
      valid: [A, C] bool, the candidates that count (default all).
      grid_points: G, false-positive rates g / (G - 1) at which each curve is interpolated
        (``np.interp`` over ``roc_curve``'s points; fpr <= g / (G - 1) is decided exactly).

    Returns:
      :class:`AnchorROC`.
    """
    scores = jnp.asarray(scores, jnp.float32)
    valid = jnp.ones(scores.shape, bool) if valid is None else jnp.asarray(valid, bool)
    return _anchor_roc(scores, jnp.asarray(positive, bool), valid, grid_points=grid_points)


@functools.partial(jax.jit, static_argnames=("num_database", "num_random"))
def _anchor_candidates(key, anchors, nearest, same_set, *, num_database, num_random):
    draws = jax.random.randint(key, (anchors.shape[0], num_random), 0, num_database - same_set)
    draws = draws + (same_set & (draws >= anchors[:, None]))  # skip the anchor itself
    in_nearest = jnp.any(draws[:, :, None] == nearest[:, None, :], axis=2)
    earlier = jnp.tril(jnp.ones((num_random, num_random), bool), -1)
    repeated = jnp.any((draws[:, :, None] == draws[:, None, :]) & earlier, axis=2)
    valid = jnp.concatenate([jnp.ones(nearest.shape, bool), ~(in_nearest | repeated)], axis=1)
    return jnp.concatenate([nearest, draws.astype(jnp.int32)], axis=1), valid


def anchor_candidates(key: jax.Array, anchors: Array, nearest: Array, num_database: int, *,
                      num_random: int = 100, same_set: bool = False) -> tuple[jax.Array, jax.Array]:
    """The candidates of CliqueCNN's per-anchor protocol: each anchor's nearest database items, then
    ``num_random`` uniform random ones (never the anchor itself with ``same_set``); a random one
    that repeats a nearest item or an earlier draw is marked invalid.

    Args:
      key: PRNG key.
      anchors: [A] int query rows; nearest: [A, K] int their nearest database rows.
      num_database: N.
      num_random: random candidates per anchor.
      same_set: the queries are the database.

    Returns:
      (candidates [A, K + num_random] int32, valid [A, K + num_random] bool).
    """
    return _anchor_candidates(key, jnp.asarray(anchors, jnp.int32), jnp.asarray(nearest, jnp.int32),
                              jnp.asarray(same_set, jnp.int32), num_database=num_database,
                              num_random=num_random)
