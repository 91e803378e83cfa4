"""JULE end to end: periods of triplet training and merges down to the target, and exact resume."""

import json
import math
import os
import shutil

import jax
import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from jclust import cluster as jcluster
from jclust import config_lib, methods, metrics, train
from jclust import inference
from jclust import loader
from jclust.config_lib import ConfigError
from jclust.methods import jule
from jclust.methods import ReclusterContext
from tests.conftest import ROOT, assert_eight_devices_match_one, assert_resume_matches, final_params

CONFIG = os.path.join(ROOT, "configs", "jule.py:digits")
TINY = {
    "data.limit": 256, "batch_size": 32, "eval_batch_size": 128,
    "model.widths": (8, 16), "model.dense": 32, "jule.embed_dim": 16, "jule.neighbours": 5,
    "jule.eta": 0.6, "jule.epochs_per_period": 1, "optim.epochs": 6,
    "log_every_steps": 8, "checkpoint_every_steps": 4, "keep_checkpoints": 50,
    "pictures.every_evals": 0, "tensorboard": False,
}


def tiny_config(**overrides):
    return config_lib.apply_overrides(config_lib.load_config(CONFIG), {**TINY, **overrides})


def test_agglomerate_reaches_exactly_the_target_or_does_one_pass():
    x = np.random.default_rng(0).normal(size=(300, 6)).astype(np.float32)
    kwargs = dict(neighbours=6, eta=0.5, cluster_neighbours=5, local_weight=1.0, cache_size=8)
    initial, info = jule.agglomerate(x, None, 300, **kwargs)
    c = int(initial.max()) + 1
    assert info["merges"] == 0 and c == info["clusters_before"] > 20
    one_pass, info = jule.agglomerate(x, initial, 7, max_merges=300, **kwargs)
    assert info["merges"] == int(np.ceil(0.5 * c))
    assert int(one_pass.max()) + 1 == c - info["merges"]
    # A pass only merges: every new cluster is a union of old ones.
    for old in range(c):
        assert len(np.unique(one_pass[initial == old])) == 1
    final, _ = jule.agglomerate(x, None, 7, **kwargs)
    assert sorted(np.unique(final).tolist()) == list(range(7))


def test_coarse_linkage_takes_over_below_coarse_clusters():
    x = np.random.default_rng(1).normal(size=(300, 6)).astype(np.float32)
    kwargs = dict(neighbours=6, eta=0.5, cluster_neighbours=5, local_weight=1.0, cache_size=8,
                  coarse_linkage="average", coarse_clusters=15)
    initial, _ = jule.agglomerate(x, None, 300, **kwargs)
    c = int(initial.max()) + 1
    assert c > 30
    final, info = jule.agglomerate(x, initial, 7, **kwargs)
    assert int(final.max()) + 1 == 7 and info["coarse_merges"] == 15 - 7
    for old in range(c):  # still only merges of whole clusters
        assert len(np.unique(final[initial == old])) == 1
    # One pass that crosses coarse_clusters: graph merges down to 15, average linkage after.
    twenty, _ = jule.agglomerate(x, initial, 7, max_merges=c - 20, **{**kwargs, "eta": 1.0})
    assert int(twenty.max()) + 1 == 20
    one_pass, info = jule.agglomerate(x, twenty, 7, max_merges=10, **kwargs)
    assert int(one_pass.max()) + 1 == 10 and info["coarse_merges"] == 5
    # The coarse merges are average linkage of the cluster means (cosine).
    _, gdl_info = jule.agglomerate(x, twenty, 15, max_merges=5, **kwargs)
    assert gdl_info["coarse_merges"] == 0
    fifteen, _ = jule.agglomerate(x, twenty, 15, max_merges=5, **kwargs)
    np.testing.assert_array_equal(one_pass, jule.coarse_merge(x, fifteen, 10))


def test_cluster_centroids_are_unit_means_of_the_largest_clusters():
    feats = np.array([[1, 0], [3, 0], [0, 5], [1, 1], [1, 3], [2, 2]], np.float32)
    labels = np.array([0, 0, 1, 2, 2, 2])
    got = np.asarray(jule.cluster_centroids(feats, labels, 2))
    expected = np.array([[4, 6], [4, 0]], np.float64)  # cluster 2 (3 members), then cluster 0
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("jule_ref"))
    final = train.train_and_evaluate(tiny_config(), workdir)
    return workdir, final


def test_periods_merge_down_to_the_target_and_stop(reference_run):
    workdir, final = reference_run
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    counts = [r["clusters"] for r in records if "clusters" in r]
    assert counts[0] > 10 and counts[-1] == 10
    assert all(a > b for a, b in zip(counts, counts[1:]))  # every period merges
    assert [r["period"] for r in records if "period" in r] == list(range(len(counts)))
    _, state = final_params(workdir)
    assert int(state.cluster.num_clusters) == 10
    assert int(state.step) < 6 * 8  # stopped once the target was reached
    assert 0.0 <= final["acc"] <= 1.0 and final["clusters_used"] <= 10


def test_resume_restores_memberships_and_period(reference_run, tmp_path):
    ref_dir, _ = reference_run
    # Step 12: inside period 2 (steps 8..15), after the first merges.
    assert_resume_matches(ref_dir, str(tmp_path / "resumed"), 12, tiny_config())


def test_run_saved_without_a_newer_key_gives_a_clear_error(reference_run, tmp_path):
    ref_dir, _ = reference_run
    old = str(tmp_path / "old")
    shutil.copytree(ref_dir, old)
    with open(os.path.join(old, "run.json")) as f:
        info = json.load(f)
    del info["config"]["jule"]["coarse_linkage"]
    with open(os.path.join(old, "run.json"), "w") as f:
        json.dump(info, f)
    with pytest.raises(ConfigError, match="older jclust.*coarse_linkage"):
        inference.load_run(old)


def test_bad_configs_are_config_errors():
    spec = methods.DataSpec(64, (8, 8, 1), True)
    with pytest.raises(ConfigError, match="eta"):
        methods.from_config(tiny_config(**{"jule.eta": 0.0}), spec)
    with pytest.raises(ConfigError, match="merge_cache"):
        methods.from_config(tiny_config(**{"jule.merge_cache": 2}), spec)
    with pytest.raises(ConfigError, match="evaluation"):
        methods.from_config(tiny_config(**{"jule.evaluation": "kmeans"}), spec)
    with pytest.raises(ConfigError, match="spectral_neighbours"):
        methods.from_config(tiny_config(**{"jule.spectral_neighbours": 64}), spec)
    with pytest.raises(ConfigError, match="num_clusters"):
        methods.from_config(tiny_config(num_clusters=100), spec)
    reference_net = config_lib.load_config(os.path.join(ROOT, "configs", "jule.py"))
    with pytest.raises(ConfigError, match="8x8 input is too small"):
        methods.from_config(reference_net, methods.DataSpec(1000, (8, 8, 1), True))


def test_grouped_batches_hold_same_cluster_pairs_and_cover_every_epoch():
    n, batch = 256, 32
    config = tiny_config(**{"jule.batch_groups": 4, "jule.epochs_per_period": 2})
    method = methods.from_config(config, methods.DataSpec(n, (8, 8, 1), True))
    feats = np.random.default_rng(0).normal(size=(n, 16)).astype(np.float32)
    params, _, cluster = method.init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 1), np.uint8))
    context = ReclusterContext(feats, jax.random.PRNGKey(1))
    _, cluster, info = method.recluster(params, cluster, context)
    labels = np.asarray(cluster.labels)
    assert info["clusters"] > n // 8  # many small clusters: where random batches hold no pairs
    order = np.asarray(method.sampler(cluster).order)
    assert order.shape == (2 * n,)  # the period's two epochs
    pairs = lambda idx: sum(np.sum(np.triu(np.equal.outer(labels[b], labels[b]), 1))
                            for b in idx.reshape(-1, batch))
    random_order = np.random.default_rng(0).permutation(n)
    for epoch in order.reshape(2, n):
        np.testing.assert_array_equal(np.sort(epoch), np.arange(n))
        assert pairs(epoch) > 3 * pairs(random_order)
    assert not np.array_equal(order[:n], order[n:])
    np.testing.assert_array_equal(method.sampler(cluster).order, order)  # a function of the state
    context = ReclusterContext(feats, jax.random.PRNGKey(1), first=False)
    _, later, _ = method.recluster(params, cluster, context)
    assert not np.array_equal(method.sampler(later).order[:n], order[:n])
    assert methods.from_config(tiny_config(), methods.DataSpec(n, (8, 8, 1), True)).sampler is None
    with pytest.raises(ConfigError, match="batch_groups"):
        methods.from_config(tiny_config(**{"jule.batch_groups": 1}), methods.DataSpec(n, (8, 8, 1), True))


GROUPED = {"jule.batch_groups": 4, "jule.epochs_per_period": 2}


@pytest.fixture(scope="module")
def grouped_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("jule_grouped"))
    train.train_and_evaluate(tiny_config(**GROUPED), workdir)
    return workdir


def test_resume_with_grouped_batches_in_a_period_s_second_epoch(grouped_run, tmp_path):
    # Periods are 16 steps (2 epochs of 8): step 28 is in the second epoch of period 2, whose
    # batches come from the order's second slice, re-created from the restored state.
    assert_resume_matches(grouped_run, str(tmp_path / "resumed"), 28, tiny_config(**GROUPED))


@pytest.mark.slow
def test_eight_devices_give_the_same_numbers_as_one(tmp_path):
    """The same batches, merges (memberships exactly) and weights on 8 devices as on 1 (float64)."""
    eight, _ = assert_eight_devices_match_one({**TINY, **GROUPED}, "configs/jule.py:digits",
                                              tmp_path, sharded=("labels",))
    assert int(eight.cluster.period) > 0


def test_period_eta_sets_the_merges_of_the_first_passes():
    n = 256
    config = tiny_config(**{"jule.period_eta": (0.25,), "jule.coarse_clusters": 0})
    method = methods.from_config(config, methods.DataSpec(n, (8, 8, 1), True))
    feats = np.random.default_rng(0).normal(size=(n, 16)).astype(np.float32)
    params, _, cluster = method.init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 1), np.uint8))
    key = jax.random.PRNGKey(1)
    counts = []
    for first in (True, False, False):
        context = ReclusterContext(feats, key, first=first)
        params, cluster, info = method.recluster(params, cluster, context)
        counts.append(info["clusters"])
        assert info.get("eta", None) == {0: None, 1: 0.25, 2: 0.6}[len(counts) - 1]
    c0, c1, c2 = counts
    assert c1 == c0 - math.ceil(0.25 * c0) and c2 == max(c1 - math.ceil(0.6 * c1), 10)
    with pytest.raises(ConfigError, match="period_eta"):
        methods.from_config(tiny_config(**{"jule.period_eta": (0.5, 0.0)}),
                     methods.DataSpec(n, (8, 8, 1), True))


def test_initial_over_clustering_of_the_pixels_is_the_1nn_chains_of_the_inputs():
    n = 64
    config = tiny_config(**{"jule.initial_space": "pixels"})
    method = methods.from_config(config, methods.DataSpec(n, (8, 8, 1), True))
    rng = np.random.default_rng(0)
    inputs = rng.integers(0, 256, size=(n, 8, 8, 1)).astype(np.uint8)
    feats = rng.normal(size=(n, 16)).astype(np.float32)
    params, _, cluster = method.init(jax.random.PRNGKey(0), inputs[:1])
    context = ReclusterContext(feats, jax.random.PRNGKey(1), first=True, inputs=inputs)
    _, cluster, info = method.recluster(params, cluster, context)
    # 1-NN of the L2-normalised pixels by scikit-learn, chained into connected components.
    x = inputs.reshape(n, -1).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    nearest = NearestNeighbors(n_neighbors=2).fit(x).kneighbors(x)[1][:, 1]
    _, expected = connected_components(coo_matrix((np.ones(n), (np.arange(n), nearest)),
                                                  shape=(n, n)), directed=False)
    got = np.asarray(cluster.labels)
    assert info["period"] == 0 and info["clusters"] == expected.max() + 1
    # Same partition (numbering may differ).
    assert len(set(zip(got.tolist(), expected.tolist()))) == expected.max() + 1
    # The untrained network's embeddings give another partition (not a renumbering of it).
    embedding = methods.from_config(tiny_config(), methods.DataSpec(n, (8, 8, 1), True))
    unlabelled = cluster._replace(labels=cluster.labels * 0 - 1)
    _, other, _ = embedding.recluster(params, unlabelled,
                                      ReclusterContext(feats, jax.random.PRNGKey(1)))
    assert metrics.ari(got, np.asarray(other.labels)) < 1.0
    with pytest.raises(ConfigError, match="initial_space"):
        methods.from_config(tiny_config(**{"jule.initial_space": "raw"}),
                     methods.DataSpec(n, (8, 8, 1), True))


def test_spectral_evaluation_clusters_the_whitened_embeddings():
    rng = np.random.default_rng(3)
    # Four blobs, stretched along one axis so that whitening matters to the k-NN graph.
    centres = rng.normal(size=(4, 8)) * 3.0
    truth = np.repeat(np.arange(4), 60)
    feats = (centres[truth] + rng.normal(size=(240, 8))) * np.r_[20.0, np.ones(7)]
    feats = feats.astype(np.float32)
    key = jax.random.PRNGKey(0)
    got = jule.spectral_labels(feats, 4, key=key, num_neighbours=8)
    whitened = PCA(whiten=True).fit_transform(feats.astype(np.float64))
    whitened /= np.linalg.norm(whitened, axis=1, keepdims=True)
    expected = jcluster.spectral_clustering(whitened.astype(np.float32), 4, key=key,
                                            num_neighbours=8).labels
    assert metrics.evaluate(np.asarray(expected), got)["ari"] == pytest.approx(1.0)
    assert metrics.evaluate(truth, got)["ari"] > 0.95


@pytest.fixture(scope="module")
def spectral_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("jule_spectral"))
    config = tiny_config(**{"jule.evaluation": "spectral", "jule.spectral_neighbours": 6})
    return workdir, train.train_and_evaluate(config, workdir), config


def test_spectral_evaluation_centroids_are_means_of_spectral_clusters(spectral_run):
    workdir, final, config = spectral_run
    _, state = final_params(workdir)
    assert int(state.cluster.num_clusters) == 10 and 0.0 <= final["acc"] <= 1.0
    spec = methods.DataSpec(256, (8, 8, 1), True)
    method = methods.from_config(config, spec)
    feats = np.asarray(method.embed(state.params, state.model_state,
                                    loader.load_dataset(config).inputs))
    key = jax.random.PRNGKey(5)
    got = method.evaluation.fit(feats, state.cluster, key)
    labels = jule.spectral_labels(feats, 10, key=key, num_neighbours=6)
    expected = jule.cluster_centroids(feats, labels, 10)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-6)
    final_pass = methods.from_config(tiny_config(), spec).evaluation.fit(feats, state.cluster, key)
    assert not np.allclose(np.asarray(got), np.asarray(final_pass), atol=1e-3)


def test_resume_with_spectral_evaluation(spectral_run, tmp_path):
    ref_dir, _, config = spectral_run
    assert_resume_matches(ref_dir, str(tmp_path / "resumed"), 12, config)
