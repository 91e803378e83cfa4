"""The similarity benchmark (jclust.metrics.retrieval, jclust.metrics.roc) against scikit-learn and
float64 NumPy references, on small random data with few labels, and on hand-computed cases.

Two kinds of data. Sign vectors (every coordinate +1 or -1, D = 16) have cosines k / 16 that
float32 computes exactly in any summation order: rankings, ties (many: 17 possible values) and
every metric built on them must equal the float64 reference exactly, equal similarities going to
the lower database index. Gaussian vectors have untied cosines, for the references that need
them (scikit-learn's AP and k-NN), and measure the float error.

Float tolerances, from rounding-error bounds, so that no CPU model (summation order, vector width,
FMA) can exceed them, and checked against a measurement of float32 runs against float64 NumPy
controls (AMD EPYC, 2026-12-05):
* COS_TOL = 5e-6: a float32 cosine of unit vectors is within (2 D + 4) * 2^-24 = 2.1e-6 of the
  exact value at D = 16 (a dot product's D u, plus each normalisation's D / 2 + 2 u); measured
  1.7e-7 (neighbours' similarities) and 1.2e-7 (pair cosines).
* RATIO_TOL = 2e-5: AP@k sums k float32 ratios <= 1, within (k + 2) * 2^-24 = 1.8e-5 at k = 300;
  interpolated TPRs and per-anchor AUCs are a few roundings of small-integer ratios; measured
  6.4e-8 (AP@300), 1.2e-7 (TPR), 2.9e-8 (AUC).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from sklearn.neighbors import KNeighborsClassifier

from jclust import metrics

COS_TOL = 5e-6
RATIO_TOL = 2e-5
D = 16
M = 300  # queries: as many as database items, so that every report has one shape (one compile)


def _gaussian(n, seed, shift=1.5):
    """n Gaussian points in D dimensions, labels 0..2; the first coordinates lean to the label."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    x = rng.normal(size=(n, D))
    x[:, :3] += shift * np.eye(3)[labels]
    return x.astype(np.float32), labels


def _signs(n, seed):
    """n sign vectors in D dimensions, labels 0..2; coordinates 4c..4c+3 are +1 with probability
    0.85 for label c (else 1/2)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    p = np.full((n, D), 0.5)
    for c in range(3):
        p[labels == c, 4 * c:4 * c + 4] = 0.85
    return np.where(rng.random((n, D)) < p, 1.0, -1.0).astype(np.float32), labels


def _cosines(queries, database):
    q = queries.astype(np.float64)
    d = database.astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return q @ d.T


def _order(sims, k):
    """Reference top-k: descending, equal similarities to the lower index (a stable sort)."""
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


@pytest.fixture(scope="module")
def signs():
    db, db_labels = _signs(300, seed=0)
    queries, query_labels = _signs(M, seed=1)
    return db, db_labels, queries, query_labels


@pytest.fixture(scope="module")
def gaussian():
    db, db_labels = _gaussian(300, seed=0)
    queries, query_labels = _gaussian(M, seed=1)
    return db, db_labels, queries, query_labels


def test_neighbours_equal_the_exact_ranking_with_ties_and_exclude_self(signs):
    db, _, queries, _ = signs
    sims = _cosines(queries, db)
    assert len(np.unique(sims)) <= 17  # ties everywhere
    out = metrics.nearest_neighbours(db, queries, 100, chunk_size=16)
    chex.assert_shape([out.indices, out.similarities], (M, 100))
    chex.assert_type([out.indices, out.similarities], [jnp.int32, jnp.float32])
    np.testing.assert_array_equal(out.indices, _order(sims, 100))
    np.testing.assert_array_equal(out.similarities, np.take_along_axis(sims, _order(sims, 100), 1))
    same = metrics.nearest_neighbours(db, db, 100, same_set=True, chunk_size=64)
    self_sims = _cosines(db, db)
    np.fill_diagonal(self_sims, -np.inf)
    np.testing.assert_array_equal(same.indices, _order(self_sims, 100))
    assert not np.any(np.asarray(same.indices) == np.arange(300)[:, None])
    with pytest.raises(ValueError, match="k=300"):
        metrics.nearest_neighbours(db, db, 300, same_set=True)


def test_neighbours_of_untied_data_within_the_float_tolerance(gaussian):
    db, _, queries, _ = gaussian
    sims = _cosines(queries, db)
    out = metrics.nearest_neighbours(db, queries, 50, chunk_size=7)
    # The similarities in order, and the float64 cosines of the neighbours found; near-ties may be
    # ordered either way, within the tolerance.
    expected = np.take_along_axis(sims, _order(sims, 50), 1)
    np.testing.assert_allclose(out.similarities, expected, atol=COS_TOL, rtol=0)
    np.testing.assert_allclose(np.take_along_axis(sims, np.asarray(out.indices), 1), expected,
                               atol=2 * COS_TOL, rtol=0)


@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_chunk_size_does_not_change_results(gaussian, chunk_size):
    db, db_labels, queries, query_labels = gaussian
    key = jax.random.PRNGKey(5)
    reference = metrics.similarity_report(db, db_labels, queries, query_labels, key=key,
                                          num_pairs=500, num_anchors=40, chunk_size=512)
    report = metrics.similarity_report(db, db_labels, queries, query_labels, key=key,
                                       num_pairs=500, num_anchors=40, chunk_size=chunk_size)
    ranked = ("precision_at_1", "precision_at_10", "precision_at_100", "map_at_100",
              "knn_accuracy", "anchors_used", "num_anchors", "num_queries", "num_database")
    assert {f: getattr(report, f) for f in ranked} == {f: getattr(reference, f) for f in ranked}
    np.testing.assert_allclose(report, reference, atol=RATIO_TOL, rtol=0)
    full = metrics.nearest_neighbours(db, queries, 100, chunk_size=512)
    chunked = metrics.nearest_neighbours(db, queries, 100, chunk_size=chunk_size)
    np.testing.assert_array_equal(chunked.indices, full.indices)


def test_four_points_on_a_circle_by_hand():
    # angles 0, 60, 180 and 270 degrees; labels 0, 0, 1, 1. From point 3, points 0 and 2 tie at
    # cosine 0 (exactly): the lower index comes first, and their equal votes go to class 0.
    x = np.array([[1, 0], [0.5, np.sqrt(3) / 2], [-1, 0], [0, -1]], np.float32)
    labels = np.array([0, 0, 1, 1])
    out = metrics.nearest_neighbours(x, x, 3, same_set=True, chunk_size=3)
    np.testing.assert_array_equal(out.indices, [[1, 3, 2], [0, 2, 3], [3, 1, 0], [0, 2, 1]])
    np.testing.assert_allclose(out.similarities, [[0.5, 0, -1], [0.5, -0.5, -np.sqrt(3) / 2],
                                                  [0, -0.5, -1], [0, 0, -np.sqrt(3) / 2]],
                               atol=COS_TOL)
    relevant = metrics.relevance(out.indices, labels, labels)
    assert metrics.precision_at_k(relevant, 1) == 0.75
    assert metrics.precision_at_k(relevant, 2) == 0.5
    # Each point has R = 1 relevant other; point 3 finds it second: AP = 1/2.
    np.testing.assert_allclose(metrics.average_precision_at_k(relevant, [1, 1, 1, 1], 3),
                               [1, 1, 1, 0.5])
    np.testing.assert_array_equal(metrics.knn_predict(out, labels, 2, k=2), [0, 0, 1, 0])


def _average_precision_reference(relevant, num_relevant, k):
    rel = relevant[:, :k].astype(np.float64)
    precision = np.cumsum(rel, 1) / np.arange(1, k + 1)
    denominator = np.minimum(num_relevant, k)
    return np.where(denominator > 0, (precision * rel).sum(1) / np.maximum(denominator, 1), 0.0)


def test_average_precision_against_numpy_with_ties(signs):
    db, db_labels, queries, query_labels = signs
    num_relevant = (db_labels[None, :] == query_labels[:, None]).sum(1)
    out = metrics.nearest_neighbours(db, queries, 300)
    relevant = np.asarray(metrics.relevance(out.indices, db_labels, query_labels))
    order = _order(_cosines(queries, db), 300)
    np.testing.assert_array_equal(relevant, db_labels[order] == query_labels[:, None])
    for k in (1, 10, 100, 300):
        np.testing.assert_allclose(metrics.average_precision_at_k(relevant, num_relevant, k),
                                   _average_precision_reference(relevant, num_relevant, k),
                                   atol=RATIO_TOL, rtol=0)
        assert metrics.precision_at_k(relevant, k) == relevant[:, :k].mean()
    # A query whose label is nowhere in the database scores 0.
    assert float(metrics.average_precision_at_k(relevant[:1] * 0, [0], 10)[0]) == 0.0


def test_average_precision_at_n_is_scikit_learns(gaussian):
    # At k = N both normalisations (min(k, R) and the relevant items retrieved) are R, and AP@N
    # is scikit-learn's on untied scores: the float32 cosines themselves, so both rank alike.
    db, db_labels, queries, query_labels = gaussian
    out = metrics.nearest_neighbours(db, queries, 300)
    scores = np.zeros((M, 300), np.float32)
    np.put_along_axis(scores, np.asarray(out.indices), np.asarray(out.similarities), 1)
    assert all(len(np.unique(row)) == 300 for row in scores)
    num_relevant = (db_labels[None, :] == query_labels[:, None]).sum(1)
    relevant = metrics.relevance(out.indices, db_labels, query_labels)
    theirs = [average_precision_score(db_labels == c, row) for c, row in zip(query_labels, scores)]
    np.testing.assert_allclose(metrics.average_precision_at_k(relevant, num_relevant, 300),
                               theirs, atol=RATIO_TOL, rtol=0)


def test_weighted_knn_against_scikit_learn(gaussian):
    db, db_labels, queries, query_labels = gaussian
    tau = 0.07
    sims = _cosines(queries, db)
    # Guards: no near-tie (under 2 COS_TOL) decides who votes, nor which class wins.
    top = np.take_along_axis(sims, _order(sims, 21), 1)
    assert np.all(top[:, 19] - top[:, 20] > 2 * COS_TOL)
    votes = np.zeros((M, 3))
    np.add.at(votes, (np.arange(M)[:, None], db_labels[_order(sims, 20)]),
              np.exp((top[:, :20] - top[:, :1]) / tau))
    votes.sort(1)
    assert np.all(votes[:, -1] - votes[:, -2] > 1e-3 * votes[:, -1])
    # scikit-learn's cosine distance is 1 - s: weights exp(-d / tau) are exp(s / tau) / e^(1/tau).
    reference = KNeighborsClassifier(n_neighbors=20, metric="cosine", algorithm="brute",
                                     weights=lambda d: np.exp(-d / tau)).fit(db, db_labels)
    out = metrics.nearest_neighbours(db, queries, 20)
    np.testing.assert_array_equal(metrics.knn_predict(out, db_labels, 3, k=20, tau=tau),
                                  reference.predict(queries))
    with pytest.raises(ValueError, match="k=21"):
        metrics.knn_predict(out, db_labels, 3, k=21)


def test_roc_auc_counts_ties_half_as_scikit_learn():
    rng = np.random.default_rng(2)
    positive = np.round(rng.normal(0.5, 1, 700), 1)  # one decimal: many ties
    negative = np.round(rng.normal(0, 1, 500), 1)
    expected = roc_auc_score(np.r_[np.ones(700), np.zeros(500)], np.r_[positive, negative])
    assert metrics.roc_auc(positive.astype(np.float32), negative.astype(np.float32)) == \
        pytest.approx(expected, abs=1e-12)
    assert metrics.roc_auc([1.0, 1.0], [1.0]) == 0.5
    assert np.isnan(metrics.roc_auc([], [0.0]))


def test_sampled_pairs_are_uniform_and_never_self():
    labels = np.array([0, 0, 0, 1, 1, 2])
    q, d = (np.asarray(a) for a in metrics.sample_pairs(jax.random.PRNGKey(0), labels, labels,
                                                         30_000, same_set=True))
    assert np.all(q != d)
    np.testing.assert_array_equal(labels[q[:30_000]] == labels[d[:30_000]], True)
    np.testing.assert_array_equal(labels[q[30_000:]] != labels[d[30_000:]], True)
    # 8 ordered same-label pairs and 22 different-label ones, each as likely as the others: with
    # 30,000 draws a frequency is within 5 standard deviations (< 0.009) of its expectation.
    for part, kinds in ((slice(0, 30_000), 8), (slice(30_000, None), 22)):
        counts = np.unique(q[part] * 6 + d[part], return_counts=True)[1]
        assert len(counts) == kinds
        assert np.max(np.abs(counts / 30_000 - 1 / kinds)) < 0.009
    with pytest.raises(ValueError, match="no same-label"):
        metrics.sample_pairs(jax.random.PRNGKey(0), [0, 1], [0, 1], 10, same_set=True)


def test_anchor_roc_against_scikit_learn_roc_curve_with_ties():
    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(size=(40, 30)), 1).astype(np.float32)
    positive = rng.random((40, 30)) < 0.3
    valid = rng.random((40, 30)) < 0.9
    positive[0], positive[1] = True, False  # anchors without negatives / positives
    out = metrics.anchor_roc(scores, positive, valid)
    chex.assert_shape([out.tpr, out.auc, out.used], [(40, 101), (40,), (40,)])
    chex.assert_type([out.tpr, out.auc, out.used], [jnp.float32, jnp.float32, bool])
    grid = np.linspace(0, 1, 101)
    for a in range(40):
        s, p = scores[a][valid[a]].astype(np.float64), positive[a][valid[a]]
        assert bool(out.used[a]) == (p.any() and not p.all())
        if out.used[a]:
            assert float(out.auc[a]) == pytest.approx(roc_auc_score(p, s), abs=RATIO_TOL)
            fpr, tpr, _ = roc_curve(p, s)
            np.testing.assert_allclose(out.tpr[a], np.interp(grid, fpr, tpr), atol=RATIO_TOL)
    assert int(out.used.sum()) == 38


def test_anchor_roc_on_a_hand_computed_curve():
    # Scores 3 (+), 2 (-), 2 (+), 1 (-): vertices (0, 0), (0, 1/2), (1/2, 1), (1, 1); the tie makes
    # the diagonal from (0, 1/2) to (1/2, 1). AUC = 1/2 * 1/2 + 1/2 * 3/4 = 7/8.
    out = metrics.anchor_roc([[3.0, 2.0, 2.0, 1.0]], [[True, False, True, False]], grid_points=5)
    np.testing.assert_allclose(out.tpr[0], [0.5, 0.75, 1, 1, 1], atol=RATIO_TOL)
    assert float(out.auc[0]) == pytest.approx(7 / 8)


def test_anchor_candidates_are_deduplicated_and_never_the_anchor():
    anchors = np.arange(50)
    nearest = (anchors[:, None] + np.arange(1, 6)[None, :]) % 12
    candidates, valid = (np.asarray(a) for a in metrics.anchor_candidates(
        jax.random.PRNGKey(1), anchors % 12, nearest, 12, num_random=8, same_set=True))
    assert candidates.shape == valid.shape == (50, 13)
    assert np.all(candidates != (anchors % 12)[:, None]) and np.all(valid[:, :5])
    for row, ok in zip(candidates, valid):
        assert len(set(row[ok])) == ok.sum() == len(set(row))  # valid: every distinct one once


def _report_reference(db, db_labels, queries, query_labels, key, same_set, sims=None):
    """The report's metrics from float64 cosines (or the given similarities [M, N]), with the
    report's own random draws."""
    sims = _cosines(queries, db) if sims is None else sims
    if same_set:
        np.fill_diagonal(sims, -np.inf)
    order = _order(sims, 100)
    relevant = db_labels[order] == query_labels[:, None]
    num_relevant = (db_labels[None, :] == query_labels[:, None]).sum(1) - same_set
    top = np.take_along_axis(sims, order[:, :20], 1)
    votes = np.zeros((len(queries), 3))
    np.add.at(votes, (np.arange(len(queries))[:, None], db_labels[order[:, :20]]),
              np.exp((top - top[:, :1]) / 0.07))
    pair_key, anchor_key = jax.random.split(key)
    q, d = (np.asarray(a) for a in metrics.sample_pairs(pair_key, query_labels, db_labels, 500,
                                                         same_set=same_set))
    pair_auc = roc_auc_score(np.arange(1000) < 500, sims[q, d])
    anchor_key, candidate_key = jax.random.split(anchor_key)
    anchors = np.asarray(jax.random.permutation(anchor_key, len(queries))[:40])
    candidates, valid = (np.asarray(a) for a in metrics.anchor_candidates(
        candidate_key, anchors, order[anchors], len(db), num_random=100, same_set=same_set))
    curves, aucs = [], []
    for a, c, ok in zip(anchors, candidates, valid):
        positive = db_labels[c[ok]] == query_labels[a]
        fpr, tpr, _ = roc_curve(positive, sims[a, c[ok]])
        curves.append(np.interp(np.linspace(0, 1, 101), fpr, tpr))
        aucs.append(roc_auc_score(positive, sims[a, c[ok]]))
    return [relevant[:, :k].mean() for k in (1, 10, 100)] + [
        _average_precision_reference(relevant, num_relevant, 100).mean(),
        np.mean(votes.argmax(1) == query_labels), pair_auc,
        np.trapezoid(np.mean(curves, 0), np.linspace(0, 1, 101)), np.mean(aucs), 40, 40,
        len(queries), len(db)]


@pytest.mark.parametrize("same_set", [False, True])
def test_report_against_a_float64_reference(signs, same_set):
    db, db_labels, queries, query_labels = signs
    if same_set:
        queries, query_labels = db, db_labels
    key = jax.random.PRNGKey(4)
    report = metrics.similarity_report(db, db_labels, queries, query_labels, key=key,
                                       same_set=same_set, num_pairs=500, num_anchors=40)
    expected = _report_reference(db, db_labels, queries, query_labels, key, same_set)
    assert isinstance(report, metrics.SimilarityReport)
    np.testing.assert_allclose(report, expected, atol=RATIO_TOL, rtol=0)
    assert 0.5 < report.pair_auc < 1 and 0.5 < report.anchor_auc < 1  # labels lean features apart


def test_report_over_views_against_a_float64_reference(signs):
    """Views (an image and its mirror image): the largest cosine over pairs of views, from
    float64 cosines; sign vectors keep every cosine a multiple of 1/16, exact in float32."""
    db, db_labels, queries, query_labels = signs
    rng = np.random.default_rng(9)
    db_views = np.stack([db, db[:, rng.permutation(D)]], axis=1)
    query_views = np.stack([queries, queries[:, rng.permutation(D)]], axis=1)
    sims = np.max([_cosines(query_views[:, a], db_views[:, b]) for a in (0, 1) for b in (0, 1)],
                  axis=0)
    key = jax.random.PRNGKey(5)
    report = metrics.similarity_report(db_views, db_labels, query_views, query_labels, key=key,
                                       num_pairs=500, num_anchors=40)
    expected = _report_reference(db, db_labels, queries, query_labels, key, False, sims=sims)
    np.testing.assert_allclose(report, expected, atol=RATIO_TOL, rtol=0)
    plain = metrics.similarity_report(db, db_labels, queries, query_labels, key=key,
                                      num_pairs=500, num_anchors=40)
    assert report.knn_accuracy != plain.knn_accuracy or report.pair_auc != plain.pair_auc


def test_one_label_and_bad_input(signs):
    db, _, queries, _ = signs
    one = np.zeros(300, int)  # no different-label pair, no anchor with a negative candidate
    report = metrics.similarity_report(db, one, queries, one, key=jax.random.PRNGKey(0),
                                       num_pairs=500, num_anchors=40)
    assert report.precision_at_100 == report.map_at_100 == report.knn_accuracy == 1.0
    assert np.isnan(report.pair_auc) and np.isnan(report.anchor_auc)
    assert report.anchors_used == 0 and report.num_anchors == 40
    with pytest.raises(ValueError, match="labels"):
        metrics.similarity_report(db, one[:-1], queries, one, key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="same_set"):
        metrics.similarity_report(db, one, queries[:200], one[:200], key=jax.random.PRNGKey(0),
                                  same_set=True)
