"""Similarity benchmark: how well an embedding's cosine similarity finds examples of the same class.

Database features [N, D] and query features [M, D] are L2-normalised; the similarity of two
examples is the cosine. Labels are used only to score (METHODS-2 §1.6):

* retrieval precision@k, k = 1, 10, 100: the mean over queries of the share of the k most similar
  database items that have the query's label;
* mAP@100: the mean over queries of AP@k = (1 / min(k, R)) * sum_{i <= k} P@i * rel_i, with rel_i
  whether the i-th retrieved item has the query's label, P@i the precision of the first i, and R
  the number of database items with the query's label (0 when R = 0). A perfect ranking scores 1;
  when k >= N it is scikit-learn's ``average_precision_score`` of the cosines (untied scores);
* weighted k-NN accuracy (NPID/InstDisc, Wu et al. 2018): each of the k = 20 most similar database
  items votes for its label with weight exp(s / tau), tau = 0.07; the prediction is the label with
  the largest total (a tie goes to the smallest class index);
* pair ROC-AUC: n random same-label and n different-label (query, database) pairs, drawn uniformly
  from all such ordered pairs, scored by their cosine; tied scores count half (Mann-Whitney U, as
  ``roc_auc_score``);
* per-anchor ROC-AUC, CliqueCNN's Olympic Sports protocol: A random query anchors; candidates =
  each anchor's 100 nearest database items plus 100 random ones (deduplicated); positives = same
  label. Each anchor's ROC curve is interpolated at fpr = g / 100, g = 0..100 (:mod:`roc`), the
  curves are averaged over anchors, and the AUC is the trapezoid area of the mean curve; also the
  mean of the per-anchor AUCs. Anchors without a positive or a negative candidate are skipped.

Neighbours come from an exact search over query chunks (a [chunk, N] cosine block at a time, never
[M, N]); equal similarities go to the lower database index (``lax.top_k``). With ``same_set`` the
queries are the database itself (query i is database item i): no example is its own neighbour,
pair or candidate. Sums are taken on the host, over integer counts where there are ones.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jclust.metrics.roc import anchor_candidates, anchor_roc, roc_auc
from jclust.metrics.similarities import pair_similarities, similarities

Array = jax.Array | np.ndarray
PRECISION_KS = (1, 10, 100)
MAP_K = 100
PAIR_CHUNK = 8192  # pairs whose [chunk, D] rows are gathered at once


class Neighbours(NamedTuple):
    """The k most similar database items of every query, most similar first.

    Attributes:
      indices: [M, k] int32 database rows.
      similarities: [M, k] float32 cosines, descending along each row.
    """
    indices: jax.Array
    similarities: jax.Array


class SimilarityReport(NamedTuple):
    """The similarity benchmark of one embedding (see the module docstring for each definition).

    Attributes:
      precision_at_1, precision_at_10, precision_at_100: retrieval precision@k.
      map_at_100: mean average precision over the first 100 retrieved.
      knn_accuracy: weighted k-NN classification accuracy of the queries.
      pair_auc: ROC-AUC of the cosine over random same- and different-label pairs (nan if either
        kind of pair does not exist).
      anchor_auc: AUC of the per-anchor ROC curves' mean (CliqueCNN's number).
      anchor_auc_mean: mean of the per-anchor AUCs.
      anchors_used: anchors with a positive and a negative candidate, of ``num_anchors`` drawn.
      num_anchors, num_queries, num_database: A, M and N.
    """
    precision_at_1: float
    precision_at_10: float
    precision_at_100: float
    map_at_100: float
    knn_accuracy: float
    pair_auc: float
    anchor_auc: float
    anchor_auc_mean: float
    anchors_used: int
    num_anchors: int
    num_queries: int
    num_database: int


def l2_normalise(x: Array) -> jax.Array:
    """Rows of x [..., D] (as float32) scaled to unit L2 norm; zero rows stay zero."""
    x = jnp.asarray(x, jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=("k", "chunk"))
def _search(queries, database, same_set, *, k, chunk):
    m = queries.shape[0]
    rows = jnp.pad(jnp.arange(m), (0, -m % chunk)).reshape(-1, chunk)
    columns = jnp.arange(database.shape[0])

    def one_chunk(row_ids):
        block = similarities(queries[row_ids], database)
        block = jnp.where(same_set & (row_ids[:, None] == columns[None, :]), -jnp.inf, block)
        # Kept apart from the matmul, XLA:CPU's top_k stays a partial sort (see cluster/graph.py).
        values, indices = jax.lax.top_k(jax.lax.optimization_barrier(block), k)
        return indices.astype(jnp.int32), values

    indices, values = jax.lax.map(one_chunk, rows)
    return indices.reshape(-1, k)[:m], values.reshape(-1, k)[:m]


def nearest_neighbours(database: Array, queries: Array, k: int, *, same_set: bool = False,
                       chunk_size: int = 512) -> Neighbours:
    """Exact k most similar database items (cosine) of every query.

    Args:
      database: [N, D] features; queries: [M, D] (both L2-normalised here).
      k: neighbours per query, 1 <= k <= N (N - 1 with ``same_set``).
      same_set: the queries are the database (query i is item i); an item is not its own neighbour.
      chunk_size: queries whose [chunk, N] similarities are held at once.

    Returns:
      :class:`Neighbours`; equal similarities go to the lower database index.
    """
    return _neighbours(l2_normalise(database), l2_normalise(queries), k, same_set, chunk_size)


def _neighbours(database, queries, k, same_set, chunk_size):
    """:func:`nearest_neighbours` of features already normalised."""
    if database.ndim not in (2, 3) or queries.ndim != database.ndim or (
            database.shape[1:] != queries.shape[1:]):
        raise ValueError(f"need database [N, D] and queries [M, D] (or views [N, V, D] and "
                         f"[M, V, D]), got {database.shape} and {queries.shape}")
    if same_set and database.shape != queries.shape:
        raise ValueError("same_set needs the queries to be the database (equal shapes)")
    if not 1 <= k <= database.shape[0] - same_set:
        raise ValueError(f"k={k} neighbours need 1 <= k <= {database.shape[0] - same_set} "
                         f"database items")
    indices, values = _search(queries, database, jnp.asarray(same_set), k=k,
                              chunk=min(chunk_size, queries.shape[0]))
    return Neighbours(indices=indices, similarities=values)


def relevance(indices: Array, database_labels: Array, query_labels: Array) -> jax.Array:
    """[M, k] bool: whether each retrieved database item (indices [M, k]) has its query's label."""
    labels = jnp.asarray(database_labels)[jnp.asarray(indices)]
    return labels == jnp.asarray(query_labels)[:, None]


def precision_at_k(relevant: Array, k: int) -> float:
    """Retrieval precision@k: the mean share of relevant items among each query's first k."""
    hits = np.asarray(jnp.sum(jnp.asarray(relevant)[:, :k], axis=1), np.int64)
    return float(hits.sum() / (k * hits.size))


@functools.partial(jax.jit, static_argnames=("k",))
def _average_precision(relevant, num_relevant, *, k):
    rel = relevant[:, :k].astype(jnp.float32)
    precision = jnp.cumsum(rel, axis=1) / jnp.arange(1, k + 1, dtype=jnp.float32)
    denominator = jnp.minimum(num_relevant, k).astype(jnp.float32)
    return jnp.where(denominator > 0, jnp.sum(precision * rel, axis=1) /
                     jnp.maximum(denominator, 1.0), 0.0)


def average_precision_at_k(relevant: Array, num_relevant: Array, k: int) -> jax.Array:
    """AP@k of every query: (1 / min(k, R)) * sum_{i <= k} P@i * rel_i, 0 where R = 0.

    Args:
      relevant: [M, K] bool in retrieval order (:func:`relevance`), K >= k.
      num_relevant: [M] int R, the database items with each query's label (itself not counted).
      k: the cut-off.

    Returns:
      [M] float32.
    """
    relevant = jnp.asarray(relevant)
    if not 1 <= k <= relevant.shape[1]:
        raise ValueError(f"k={k} needs 1 <= k <= {relevant.shape[1]} retrieved items")
    return _average_precision(relevant, jnp.asarray(num_relevant), k=k)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _knn_vote(neighbour_labels, similarities, tau, *, num_classes):
    # exp((s - s_max) / tau): the votes exp(s / tau) times one factor per query, without overflow.
    weights = jnp.exp((similarities - similarities[:, :1]) / tau)
    rows = jnp.broadcast_to(jnp.arange(weights.shape[0])[:, None], weights.shape)
    votes = jnp.zeros((weights.shape[0], num_classes), jnp.float32)
    return jnp.argmax(votes.at[rows, neighbour_labels].add(weights), axis=1).astype(jnp.int32)


def knn_predict(neighbours: Neighbours, database_labels: Array, num_classes: int, *,
                k: int = 20, tau: float = 0.07) -> jax.Array:
    """Weighted k-NN classification (NPID): the label of largest sum of exp(s / tau) over the
    first k neighbours; a tie goes to the smallest class.

    Args:
      neighbours: at least k per query (:func:`nearest_neighbours`).
      database_labels: [N] int in [0, num_classes).
      num_classes: C.
      k: voters per query; tau: the temperature.

    Returns:
      [M] int32 predicted classes.
    """
    if not 1 <= k <= neighbours.indices.shape[1]:
        raise ValueError(f"k={k} voters need 1 <= k <= {neighbours.indices.shape[1]} neighbours")
    labels = jnp.asarray(database_labels, jnp.int32)[neighbours.indices[:, :k]]
    return _knn_vote(labels, neighbours.similarities[:, :k], jnp.float32(tau),
                     num_classes=num_classes)


def _draw(u, weights):
    """Row i with probability proportional to weights[i] >= 0 for each uniform u in [0, 1) (as
    ``jax.random.choice`` draws: a search of the cumulative weights)."""
    total = jnp.cumsum(weights.astype(jnp.float32))
    return jnp.searchsorted(total, total[-1] * (1.0 - u), side="left").astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("num_pairs", "num_classes"))
def _sample_pairs(key, query_labels, database_labels, same_set, *, num_pairs, num_classes):
    n = database_labels.shape[0]
    order = jnp.argsort(database_labels, stable=True).astype(jnp.int32)  # rows grouped by label
    rank = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    counts = jnp.bincount(database_labels, length=num_classes)
    starts = jnp.cumsum(counts) - counts
    same, different = counts[query_labels] - same_set, n - counts[query_labels]
    keys = jax.random.split(key, 3)
    u = jax.random.uniform(keys[0], (2, num_pairs))
    # A query drawn in proportion to its partners, then a partner uniformly: uniform pairs.
    q_same = _draw(u[0], same)
    position = starts[query_labels[q_same]] + jax.random.randint(
        keys[1], (num_pairs,), 0, same[q_same])
    position = position + (same_set & (position >= rank[q_same]))  # skip the query itself
    q_diff = _draw(u[1], different)
    c = query_labels[q_diff]
    v = jax.random.randint(keys[2], (num_pairs,), 0, different[q_diff])
    d_diff = order[v + jnp.where(v >= starts[c], counts[c], 0)]  # skip the query's label
    return q_same, order[position], q_diff, d_diff


@functools.partial(jax.jit, static_argnames=("chunk",))
def _pair_cosines(queries, database, query_ids, database_ids, *, chunk):
    p = query_ids.shape[0]
    ids = jnp.pad(jnp.stack([query_ids, database_ids]), ((0, 0), (0, -p % chunk)))
    ids = ids.reshape(2, -1, chunk).transpose(1, 0, 2)
    cosines = jax.lax.map(lambda i: pair_similarities(queries[i[0]], database[i[1]]), ids)
    return cosines.reshape(-1)[:p]


def pair_cosines(database: Array, queries: Array, query_ids: Array, database_ids: Array, *,
                 chunk_size: int = PAIR_CHUNK) -> jax.Array:
    """[P] float32 cosines of the pairs (queries[query_ids[p]], database[database_ids[p]]),
    P pairs gathered ``chunk_size`` at a time."""
    query_ids = jnp.asarray(query_ids, jnp.int32)
    return _pair_cosines(l2_normalise(queries), l2_normalise(database), query_ids,
                         jnp.asarray(database_ids, jnp.int32),
                         chunk=max(1, min(chunk_size, query_ids.shape[0])))


def _class_ids(database_labels, query_labels):
    classes, ids = np.unique(np.concatenate([np.asarray(database_labels).reshape(-1),
                                             np.asarray(query_labels).reshape(-1)]),
                             return_inverse=True)
    n = np.asarray(database_labels).size
    return jnp.asarray(ids[:n], jnp.int32), jnp.asarray(ids[n:], jnp.int32), len(classes)


def sample_pairs(key: jax.Array, query_labels: Array, database_labels: Array, num_pairs: int, *,
                 same_set: bool = False) -> tuple[jax.Array, jax.Array]:
    """Random ordered (query, database) pairs, uniform over all pairs of their kind.

    Args:
      key: PRNG key.
      query_labels: [M] int class ids; database_labels: [N] int class ids, both in [0, C).
      num_pairs: P, pairs of each kind.
      same_set: the queries are the database; no query is paired with itself.

    Returns:
      (query rows [2P] int32, database rows [2P] int32): the first P pairs share a label, the
      last P do not.

    Raises:
      ValueError: a kind of pair that does not exist.
    """
    query_labels = jnp.asarray(query_labels, jnp.int32)
    database_labels = jnp.asarray(database_labels, jnp.int32)
    num_classes = int(max(jnp.max(query_labels), jnp.max(database_labels))) + 1
    if not _pairs_exist(query_labels, database_labels, same_set):
        raise ValueError("no same-label or no different-label pair to draw")
    q_same, d_same, q_diff, d_diff = _sample_pairs(
        key, query_labels, database_labels, jnp.asarray(same_set, jnp.int32), num_pairs=num_pairs,
        num_classes=num_classes)
    return jnp.concatenate([q_same, q_diff]), jnp.concatenate([d_same, d_diff])


def _pairs_exist(query_labels, database_labels, same_set) -> bool:
    """Whether same-label and different-label (query, database) pairs both exist."""
    query_labels, database_labels = np.asarray(query_labels), np.asarray(database_labels)
    counts = np.bincount(database_labels, minlength=query_labels.max() + 1)[query_labels]
    return bool(np.any(counts > same_set) and np.any(counts < database_labels.size))


def _pair_auc(key, database, queries, db_ids, q_ids, num_pairs, same_set):
    if not _pairs_exist(q_ids, db_ids, same_set):
        return float("nan")
    query_rows, database_rows = sample_pairs(key, q_ids, db_ids, num_pairs, same_set=same_set)
    cosines = _pair_cosines(queries, database, query_rows, database_rows,
                            chunk=min(PAIR_CHUNK, 2 * num_pairs))
    return roc_auc(cosines[:num_pairs], cosines[num_pairs:])


@functools.partial(jax.jit, static_argnames=("num_anchors", "num_nearest", "num_random",
                                             "grid_points"))
def _anchor_curves(key, database, queries, neighbours, db_ids, q_ids, *, num_anchors, num_nearest,
                   num_random, same_set, grid_points):
    anchor_key, candidate_key = jax.random.split(key)
    anchors = jax.random.permutation(anchor_key, queries.shape[0])[:num_anchors].astype(jnp.int32)
    candidates, valid = anchor_candidates(candidate_key, anchors,
                                          neighbours.indices[anchors, :num_nearest],
                                          database.shape[0], num_random=num_random,
                                          same_set=same_set)
    drawn = candidates[:, num_nearest:]
    random_scores = _pair_cosines(queries, database, jnp.repeat(anchors, num_random),
                                  drawn.reshape(-1), chunk=min(PAIR_CHUNK, drawn.size))
    scores = jnp.concatenate([neighbours.similarities[anchors, :num_nearest],
                              random_scores.reshape(drawn.shape)], axis=1)
    return anchor_roc(scores, db_ids[candidates] == q_ids[anchors][:, None], valid,
                      grid_points=grid_points)


def _per_anchor(roc, grid_points):
    """(AUC of the mean curve, mean AUC, anchors used) of the used anchors' curves."""
    used = np.asarray(roc.used)
    if not used.any():
        return float("nan"), float("nan"), 0
    mean_tpr = np.asarray(roc.tpr, np.float64)[used].mean(axis=0)
    grid = np.arange(grid_points) / (grid_points - 1)
    area = float(np.sum(np.diff(grid) * (mean_tpr[1:] + mean_tpr[:-1]) / 2))
    return area, float(np.asarray(roc.auc, np.float64)[used].mean()), int(used.sum())


def similarity_report(database_features: Array, database_labels: Array, query_features: Array,
                      query_labels: Array, *, key: jax.Array, same_set: bool = False,
                      knn_k: int = 20, tau: float = 0.07, num_pairs: int = 100_000,
                      num_anchors: int = 1000, anchor_nearest: int = 100,
                      anchor_random: int = 100, grid_points: int = 101,
                      chunk_size: int = 512) -> SimilarityReport:
    """Scores an embedding's cosine similarity against labels (the module docstring's metrics).

    Args:
      database_features: [N, D]; database_labels: [N] (any values; used only to score).
      query_features: [M, D]; query_labels: [M]. With ``same_set`` the database itself.
        Views [N, V, D] and [M, V, D] (an image and its mirror image, each view normalised)
        are scored by the largest cosine over pairs of views, CliqueCNN's mirrored match.
      key: PRNG key of the random pairs, anchors and random candidates.
      same_set: the queries are the database (query i = item i), excluded from its own results.
      knn_k, tau: the weighted k-NN vote. num_pairs: pairs of each kind for the pair AUC.
      num_anchors, anchor_nearest, anchor_random, grid_points: the per-anchor protocol (at most
        M anchors).
      chunk_size: queries whose [chunk, N] similarities are held at once.

    Returns:
      :class:`SimilarityReport`.
    """
    database, queries = l2_normalise(database_features), l2_normalise(query_features)
    if (np.shape(database_labels) != database.shape[:1]
            or np.shape(query_labels) != queries.shape[:1]):
        raise ValueError("need labels [N] and [M] beside the features [N, ...] and [M, ...]")
    neighbours = _neighbours(database, queries, max(*PRECISION_KS, MAP_K, knn_k, anchor_nearest),
                             same_set, chunk_size)
    db_ids, q_ids, num_classes = _class_ids(database_labels, query_labels)
    relevant = relevance(neighbours.indices, db_ids, q_ids)
    counts = np.bincount(np.asarray(db_ids), minlength=num_classes)
    num_relevant = counts[np.asarray(q_ids)] - int(same_set)
    mean_ap = float(np.mean(np.asarray(average_precision_at_k(relevant, num_relevant, MAP_K),
                                       np.float64)))
    predicted = knn_predict(neighbours, db_ids, num_classes, k=knn_k, tau=tau)
    pair_key, anchor_key = jax.random.split(key)
    pair = _pair_auc(pair_key, database, queries, db_ids, q_ids, num_pairs, same_set)
    num_anchors = min(num_anchors, queries.shape[0])
    roc = _anchor_curves(anchor_key, database, queries, neighbours, db_ids, q_ids,
                         num_anchors=num_anchors, num_nearest=anchor_nearest,
                         num_random=anchor_random, same_set=jnp.asarray(same_set),
                         grid_points=grid_points)
    anchor = _per_anchor(roc, grid_points)
    return SimilarityReport(
        *(precision_at_k(relevant, k) for k in PRECISION_KS), map_at_100=mean_ap,
        knn_accuracy=float(np.mean(np.asarray(predicted) == np.asarray(q_ids))), pair_auc=pair,
        anchor_auc=anchor[0], anchor_auc_mean=anchor[1], anchors_used=anchor[2],
        num_anchors=num_anchors, num_queries=int(queries.shape[0]),
        num_database=int(database.shape[0]))
