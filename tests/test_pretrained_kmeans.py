"""pretrained_kmeans: the vote by hand, the whitened features against a float64 NumPy reference,
one vote round against scikit-learn's neighbours, the method end to end with predict, and its
config errors.

Tolerance: the whitened features are compared through their cosine matrix (invariant to the
signs of the PCA components). Measured on scikit-learn's digits as two layers of 32 (AMD EPYC
Zen 4, 2026-12-06): the float32 fit against the float64 reference differs by at most 1.6e-6 in
any cosine; ATOL = 1e-4 is 60 times that and far below what a wrong step gives (the reference
without the per-layer normalisation differs by 0.79).
"""

import numpy as np
import pytest
import jax
from sklearn.neighbors import NearestNeighbors

from jclust.methods import pretrained_kmeans

ATOL = 1e-4
WIDTHS = (32, 32)


def test_neighbour_vote_by_hand():
    labels, share = pretrained_kmeans.neighbour_vote(
        np.array([[0, 1, 1], [2, 2, 0], [0, 1, 2], [2, 1, 1]]), 3)
    np.testing.assert_array_equal(labels, [1, 2, 0, 1])  # a three-way tie: the nearest voter's
    np.testing.assert_allclose(share, [2 / 3, 2 / 3, 1 / 3, 2 / 3])
    # Two against two: the nearer pair wins, whichever id it has.
    labels, share = pretrained_kmeans.neighbour_vote(np.array([[1, 1, 0, 0], [0, 0, 1, 1]]), 2)
    np.testing.assert_array_equal(labels, [1, 0])
    np.testing.assert_allclose(share, [0.5, 0.5])


def numpy_vote(labels, neighbours, num_clusters=10):
    """The vote in NumPy: counts, ties to the cluster of nearer voters (rank weights)."""
    k = neighbours.shape[1]
    scores = np.zeros((len(neighbours), num_clusters))
    for rank in range(k):
        np.add.at(scores, (np.arange(len(neighbours)), labels[neighbours[:, rank]]),
                  1 + (k - rank) / (k * (k + 1)))
    return scores.argmax(1)


def numpy_whitened(x, widths, dim):
    """Standardised, each layer's block unit L2, PCA-whitened to dim, unit L2; float64."""
    x = np.asarray(x, np.float64)
    std = x.std(0)
    z = (x - x.mean(0)) / np.where(std > 0, std, 1.0)
    ends = np.cumsum(widths)
    z = np.concatenate([b / np.linalg.norm(b, axis=1, keepdims=True)
                        for b in np.split(z, ends[:-1], axis=1)], 1)
    z = z - z.mean(0)
    values, vectors = np.linalg.eigh(np.cov(z, rowvar=False, bias=True))
    top = np.argsort(values)[::-1][:dim]
    w = z @ vectors[:, top] / np.sqrt(values[top])
    return w / np.linalg.norm(w, axis=1, keepdims=True)


def _fit(x, *, vote_rounds, dim=16, k=10):
    evaluation = pretrained_kmeans.pretrained_kmeans_evaluation(
        WIDTHS, len(x), 10, pca_dim=dim, n_init=3, num_neighbours=k, vote_rounds=vote_rounds)
    return jax.device_get(evaluation.fit(x, None, jax.random.PRNGKey(0))), evaluation


def _agreement(a, b):
    return float(np.mean(np.asarray(a) == np.asarray(b)))


def test_whitened_features_and_the_vote_rounds_match_the_references(digits_features):
    _, x, _ = digits_features
    kmeans_only, _ = _fit(x, vote_rounds=1)  # no vote in the fit: spherical k-means's clusters
    ref = numpy_whitened(x, WIDTHS, 16)
    got = np.asarray(kmeans_only.references, np.float64)
    assert np.abs(got @ got.T - ref @ ref.T).max() <= ATOL
    # The same key: the same k-means start; each round = scikit-learn's 10 nearest (itself first).
    neighbours = NearestNeighbors(n_neighbors=10, metric="cosine").fit(got).kneighbors(
        got, return_distance=False)
    once = numpy_vote(kmeans_only.labels, neighbours)
    twice = numpy_vote(once, neighbours)
    # digits has near-duplicate rows: a few distance ties may order otherwise than scikit-learn's
    assert _agreement(_fit(x, vote_rounds=2)[0].labels, once) > 0.995
    assert _agreement(_fit(x, vote_rounds=3)[0].labels, twice) > 0.995
    assert _agreement(once, kmeans_only.labels) < 0.999  # the vote moves some examples
    assert _agreement(twice, once) < 0.9999


def test_assign_is_the_vote_of_the_nearest_references(digits_features):
    _, x, _ = digits_features
    fitted, evaluation = _fit(x, vote_rounds=2)
    assign = jax.jit(evaluation.assign)
    queries = x[:300] + np.random.default_rng(0).normal(0, 0.5, x[:300].shape).astype(np.float32)
    q = np.asarray(pretrained_kmeans.whitened(fitted, queries, WIDTHS))
    nn = NearestNeighbors(n_neighbors=10, metric="cosine").fit(np.asarray(fitted.references))
    neighbours = nn.kneighbors(q, return_distance=False)
    want = numpy_vote(fitted.labels, neighbours)
    labels, share = jax.device_get(assign(fitted, queries))
    assert _agreement(labels, want) >= 0.99
    counts = np.stack([np.bincount(row, minlength=10) for row in fitted.labels[neighbours]])
    same = labels == want
    np.testing.assert_allclose(share[same], counts[same, want[same]] / 10)
    # On the fitted examples the assignment is the fit's next round: vote_rounds=3's clusters.
    assert _agreement(assign(fitted, x)[0], _fit(x, vote_rounds=3)[0].labels) > 0.995
    # One neighbour: k-means alone, each fitted example its own nearest reference.
    evaluation = pretrained_kmeans.pretrained_kmeans_evaluation(
        WIDTHS, len(x), 10, pca_dim=16, n_init=3, num_neighbours=1, vote_rounds=1)
    fitted = evaluation.fit(x, None, jax.random.PRNGKey(0))
    assert _agreement(evaluation.assign(fitted, x)[0], fitted.labels) > 0.995


def _config(source, **overrides):
    import os

    from jclust import config_lib
    from tests.conftest import ROOT
    config = config_lib.load_config(os.path.join(ROOT, "configs",
                                                 f"pretrained_kmeans.py:npz:{source}"))
    return config_lib.apply_overrides(config, {"pretrained_kmeans.layer_widths": WIDTHS,
                                               "pretrained_kmeans.pca_dim": 16, **overrides})


def test_method_end_to_end_and_predict(digits_features, tmp_path):
    from jclust import inference, predict, train
    path, x, y = digits_features
    workdir = str(tmp_path / "run")
    final = train.train_and_evaluate(_config(path), workdir)
    assert final["step"] == 0 and final["acc"] > 0.6  # 10 digit classes, chance 0.1
    _, _, state, _ = inference.load_run(workdir)
    fitted = jax.device_get(state.eval)
    assert fitted.references.shape == (len(x), 16) and fitted.labels.shape == (len(x),)
    prediction = predict.predict(workdir, f"npz:{path}")
    assert prediction.summary["acc"] == pytest.approx(final["acc"])
    predictor = predict.Predictor.from_workdir(workdir)
    data, _ = predict.load_data(predictor, f"npz:{path}")
    np.testing.assert_allclose(predictor.similarity_data(data), fitted.references, atol=1e-5)


@pytest.mark.parametrize("overrides,match", [
    ({"pretrained_kmeans.layer_widths": (30, 30)}, "sum to 60"),
    ({"pretrained_kmeans.layer_widths": (64, 0)}, "every width must be >= 1"),
    ({"pretrained_kmeans.pca_dim": 65}, "pca_dim=65"),
    ({"pretrained_kmeans.num_neighbours": 1798}, "at most N = 1797"),
    ({"pretrained_kmeans.n_init": 0}, "n_init=0"),
    ({"pretrained_kmeans.vote_rounds": 0}, "vote_rounds=0"),
])
def test_bad_configs_are_config_errors(digits_features, tmp_path, overrides, match):
    from jclust import config_lib, train
    with pytest.raises(config_lib.ConfigError, match=match):
        train.train_and_evaluate(_config(digits_features[0], **overrides), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_images_are_refused_with_the_fix(tmp_path):
    from jclust import config_lib, train
    config = _config("unused", **{"data.source": "digits", "data.image_shape": (8, 8, 1)})
    with pytest.raises(config_lib.ConfigError, match="data.backbone"):
        train.train_and_evaluate(config, str(tmp_path / "run"))
