"""Tests for jclust.viz: the pure helpers against brute force, and every picture writes a PNG."""

import itertools
import os

import numpy as np
import pytest
from PIL import Image

from jclust import viz

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png(path, min_size=(150, 100)):
    """Asserts ``path`` is a PNG PIL can read, of a plausible size, with no temp file left."""
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    with Image.open(path) as image:
        image.load()
        width, height = image.size
    assert width >= min_size[0] and height >= min_size[1]
    assert width <= 5000 and height <= 5000
    assert not os.path.exists(str(path) + ".tmp.png")
    return width, height


def _clusters(rng, n, num_clusters, empty=()):
    """Random cluster ids in 0..num_clusters-1 that avoid the ids in ``empty``."""
    allowed = np.setdiff1d(np.arange(num_clusters), empty)
    return rng.choice(allowed, size=n)


# --------------------------------------------------------------------------------------------
# top_per_cluster


@pytest.mark.parametrize("seed", range(6))
def test_top_per_cluster_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(0, 50)), int(rng.integers(1, 7))
    labels = _clusters(rng, n, k, empty=[k - 1] if k > 1 else [])
    # Few distinct values, so ties are common.
    confidence = rng.integers(0, 4, n).astype(np.float32) / 4
    for per_cluster in (0, 1, 3, 100):
        got = viz.top_per_cluster(labels, confidence, k, per_cluster)
        assert len(got) == k
        for j in range(k):
            members = [i for i in range(n) if labels[i] == j]
            want = sorted(members, key=lambda i: (-confidence[i], i))[:per_cluster]
            assert got[j].tolist() == want
            assert np.issubdtype(got[j].dtype, np.integer)
    if k > 1:
        assert viz.top_per_cluster(labels, confidence, k, 5)[k - 1].size == 0


def test_top_per_cluster_nan_ranks_last_and_checks_input():
    got = viz.top_per_cluster(np.array([0, 0, 0]), np.array([np.nan, 0.1, 0.5]), 1, 3)
    assert got[0].tolist() == [2, 1, 0]
    with pytest.raises(ValueError):
        viz.top_per_cluster(np.array([0, 3]), np.array([0.1, 0.2]), 3, 1)
    with pytest.raises(ValueError):
        viz.top_per_cluster(np.array([0, 1]), np.array([0.1]), 2, 1)


# --------------------------------------------------------------------------------------------
# matched_order


def _table(true, pred, num_classes, num_clusters):
    table = np.zeros((num_classes, num_clusters), np.int64)
    for t, p in zip(true, pred):
        table[t, p] += 1
    return table


@pytest.mark.parametrize("seed", range(5))
def test_matched_order_square_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    k = 4
    true = rng.integers(0, k, 80)
    # A noisy relabelling by a hidden permutation, so the optimum is clear but not trivial.
    hidden = rng.permutation(k)
    pred = np.where(rng.random(80) < 0.7, hidden[true], rng.integers(0, k, 80))
    table = _table(true, pred, k, k)
    def total(p):
        return sum(table[i, p[i]] for i in range(k))

    best = max(itertools.permutations(range(k)), key=total)
    best_total = total(best)

    order = viz.matched_order(true, pred, k, k)
    assert sorted(order.tolist()) == list(range(k))
    assert total(order) == best_total
    optima = [p for p in itertools.permutations(range(k)) if total(p) == best_total]
    if len(optima) == 1:
        assert tuple(order.tolist()) == best


def test_matched_order_exact_on_a_clear_case():
    true = np.repeat(np.arange(4), 10)
    hidden = np.array([2, 0, 3, 1])  # class i -> cluster hidden[i]
    assert viz.matched_order(true, hidden[true], 4, 4).tolist() == hidden.tolist()


@pytest.mark.parametrize("seed", range(4))
def test_matched_order_more_clusters_than_classes(seed):
    rng = np.random.default_rng(seed)
    num_classes, k = 3, 6
    true = rng.integers(0, num_classes, 60)
    pred = np.where(rng.random(60) < 0.6, true * 2, rng.integers(0, k - 1, 60))  # k-1 stays empty
    table = _table(true, pred, num_classes, k)
    best_total = max(sum(table[i, p[i]] for i in range(num_classes))
                     for p in itertools.permutations(range(k), num_classes))

    order = viz.matched_order(true, pred, k, num_classes)
    assert sorted(order.tolist()) == list(range(k))
    assert sum(table[i, order[i]] for i in range(num_classes)) == best_total
    sizes = np.bincount(pred, minlength=k)
    rest = order[num_classes:].tolist()
    assert rest == sorted(rest, key=lambda j: (-sizes[j], j))
    assert rest[-1] == k - 1


def test_matched_order_more_classes_than_clusters():
    true = np.array([0, 0, 1, 1, 1, 2, 3])
    pred = np.array([1, 1, 0, 0, 0, 0, 1])
    order = viz.matched_order(true, pred, 2, 4)
    # The optimum matches class 0 -> cluster 1 and class 1 -> cluster 0, so 1 comes first.
    assert order.tolist() == [1, 0]


# --------------------------------------------------------------------------------------------
# cluster_grid


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("with_classes", [False, True])
def test_cluster_grid_writes_png(tmp_path, channels, with_classes):
    rng = np.random.default_rng(channels)
    n, k, size = 60, 5, 8 if channels == 1 else 12
    images = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    labels = _clusters(rng, n, k, empty=[3])
    confidence = rng.random(n)
    classes = rng.integers(0, 3, n) if with_classes else None  # K > classes
    names = ["zero", "one", "two"] if with_classes and channels == 3 else None
    path = tmp_path / "nested" / "dir" / "grid.png"
    tops = viz.cluster_grid(images, labels, confidence, str(path), num_clusters=k, per_cluster=4,
                            class_labels=classes, class_names=names, title="test grid")
    _check_png(path)
    want = viz.top_per_cluster(labels, confidence, k, 4)
    assert [t.tolist() for t in tops] == [t.tolist() for t in want]
    assert tops[3].size == 0


def test_cluster_grid_height_scales_with_k_and_accepts_3d(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (90, 8, 8), dtype=np.uint8)  # [N, H, W]: grayscale
    heights = []
    for k in (3, 30):
        path = tmp_path / f"grid{k}.png"
        viz.cluster_grid(images, rng.integers(0, k, 90), rng.random(90), path, num_clusters=k)
        heights.append(_check_png(path)[1])
    assert heights[1] > 5 * heights[0]


def test_cluster_grid_rejects_bad_images(tmp_path):
    with pytest.raises(ValueError):
        viz.cluster_grid(np.zeros((4, 8, 8, 2), np.uint8), np.zeros(4, int), np.zeros(4),
                         tmp_path / "x.png", num_clusters=1)


def test_row_labels_majority_class():
    labels = np.array([0, 0, 0, 2])
    classes = np.array([1, 1, 0, 0])
    texts, majors = viz.grid._row_labels(labels, 3, classes, ["cat", "dog"])
    assert majors == [1, None, 0]
    assert texts[0] == "cluster 0 · n=3\nmostly dog 67%"
    assert texts[1] == "cluster 1 · n=0"
    assert texts[2].endswith("mostly cat 100%")
    assert viz.grid._row_labels(labels, 3, classes, None)[0][0].endswith("mostly class 1 67%")


# --------------------------------------------------------------------------------------------
# confusion_matrix


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("named", [False, True])
def test_confusion_matrix_writes_png_and_returns_table(tmp_path, k, named):
    rng = np.random.default_rng(k)
    true = rng.integers(0, 3, 70)
    pred = _clusters(rng, 70, k, empty=[k - 1])
    path = tmp_path / "sub" / "cm.png"
    table = viz.confusion_matrix(true, pred, path, num_clusters=k,
                                 class_names=["a", "bb", "ccc"] if named else None, title="t")
    _check_png(path)
    assert table.shape == (3, k)
    np.testing.assert_array_equal(table, _table(true, pred, 3, k))


def test_confusion_matrix_big_counts(tmp_path):
    rng = np.random.default_rng(0)
    true = rng.integers(0, 10, 40000)
    pred = np.where(rng.random(40000) < 0.8, true, rng.integers(0, 30, 40000))
    table = viz.confusion_matrix(true, pred, tmp_path / "cm.png", num_clusters=30)
    _check_png(tmp_path / "cm.png")
    assert table.sum() == 40000


def test_compact_count():
    assert [viz.confusion._compact_count(c) for c in (7, 999, 1234, 18327, 999499, 1234567)] == [
        "7", "999", "1.2k", "18k", "999k", "1.2M"]


# --------------------------------------------------------------------------------------------
# embedding_projection


def test_embedding_projection_pca(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(300, 6)) * np.array([5.0, 3.0, 1, 1, 1, 1])
    labels = rng.integers(0, 4, 300)
    coords, idx = viz.embedding_projection(emb, labels, tmp_path / "p.png", max_points=120,
                                           seed=3, title="pca")
    _check_png(tmp_path / "p.png")
    assert coords.shape == (120, 2) and idx.shape == (120,)
    assert np.all(np.diff(idx) > 0) and idx.max() < 300
    # Same as numpy's SVD up to the sign of each axis.
    sub = emb[idx] - emb[idx].mean(axis=0)
    _, _, vt = np.linalg.svd(sub, full_matrices=False)
    np.testing.assert_allclose(np.abs(coords), np.abs(sub @ vt[:2].T), atol=1e-8)
    again, idx2 = viz.embedding_projection(emb, labels, tmp_path / "p2.png", max_points=120, seed=3)
    np.testing.assert_array_equal(idx, idx2)
    np.testing.assert_allclose(coords, again)


def test_embedding_projection_two_dims_plotted_directly(tmp_path):
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(50, 2)).astype(np.float32)
    coords, idx = viz.embedding_projection(emb, rng.integers(0, 25, 50), tmp_path / "d.png")
    _check_png(tmp_path / "d.png")
    np.testing.assert_array_equal(idx, np.arange(50))
    np.testing.assert_allclose(coords, emb)


def test_embedding_projection_tsne(tmp_path):
    rng = np.random.default_rng(2)
    emb = np.concatenate([rng.normal(size=(30, 5)), rng.normal(size=(30, 5)) + 8])
    labels = np.repeat([0, 1], 30)
    coords, idx = viz.embedding_projection(emb, labels, tmp_path / "t.png", method="tsne",
                                           max_points=40)
    _check_png(tmp_path / "t.png")
    assert coords.shape == (40, 2) and idx.shape == (40,)
    assert np.all(np.isfinite(coords))


def test_embedding_projection_rejects_unknown_method(tmp_path):
    with pytest.raises(ValueError, match="method"):
        viz.embedding_projection(np.zeros((5, 3)), np.zeros(5, int), tmp_path / "u.png",
                                 method="umap")
    assert not (tmp_path / "u.png").exists()


def test_cluster_colors_distinct():
    for k in (3, 10, 20, 30):
        colors = viz.projection._cluster_colors(k)
        assert colors.shape == (k, 4)
        assert len({tuple(np.round(c, 3)) for c in colors}) == k


# --------------------------------------------------------------------------------------------
# training_curves


def _records():
    train = [{"step": s, "phase": "pretrain", "rec": 1.0 / s, "grad_norm": 3.0, "time": 1e9}
             for s in (10, 20, 30)]
    train += [{"step": s, "phase": "cluster", "rec": 0.05, "kl": 0.01 / s, "loss": 0.06}
              for s in (40, 50)]
    evals = [{"step": 30, "phase": "pretrain", "acc": 0.5, "nmi": 0.4, "ari": 0.3,
              "size_entropy": 0.9, "purity": 0.6},
             {"step": 50, "phase": "cluster", "acc": 0.6, "nmi": 0.5, "ari": 0.4,
              "size_entropy": 0.95, "nmi_previous": 0.8}]
    return evals, train


def test_training_curves_full_and_phase_changes(tmp_path):
    evals, train = _records()
    assert viz.curves._phase_changes(train + evals) == [(30, "cluster")]
    assert viz.curves._first_phase(train + evals) == (10, "pretrain")
    viz.training_curves(evals, train, tmp_path / "a" / "curves.png", title="run")
    _check_png(tmp_path / "a" / "curves.png")


def test_training_curves_empty_single_and_unlabelled(tmp_path):
    evals, train = _records()
    viz.training_curves([], [], tmp_path / "empty.png")
    _check_png(tmp_path / "empty.png")
    viz.training_curves(evals[:1], train[:1], tmp_path / "one.png")
    _check_png(tmp_path / "one.png")
    unlabelled = [{k: v for k, v in r.items() if k not in ("acc", "nmi", "ari")} for r in evals]
    viz.training_curves(unlabelled, [], tmp_path / "unlabelled.png")
    _check_png(tmp_path / "unlabelled.png")
    # A loss that goes negative: linear y axis, still fine.
    negative = [{"step": 1, "phase": "p", "loss": -1.0}, {"step": 2, "phase": "p", "loss": 0.5}]
    viz.training_curves([], negative, tmp_path / "neg.png")
    _check_png(tmp_path / "neg.png")


def test_series_skips_missing_and_non_numeric():
    records = [{"step": 3, "a": 1.0}, {"step": 1, "a": 2}, {"step": 2}, {"step": 4, "a": "x"},
               {"step": 5, "a": float("nan")}, {"step": 6, "a": True}]
    steps, values = viz.curves._series(records, "a")
    assert steps.tolist() == [1, 3] and values.tolist() == [2.0, 1.0]
