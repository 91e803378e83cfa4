"""DeepCluster v1: PCA-whitening, pseudo-labels, loss, collapse warning, resume and devices."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sklearn.decomposition

from jclust import cluster as jcluster
from jclust import config_lib, methods, train
from jclust import loader
from jclust.config_lib import ConfigError
from jclust.methods import ReclusterContext
from tests.conftest import (ROOT, assert_eight_devices_match_one, assert_resume_matches, cli_args,
                            final_params, run)

CONFIG = os.path.join(ROOT, "configs", "deepcluster.py:digits")
TINY = {
    "data.limit": 256, "batch_size": 32, "eval_batch_size": 128,
    "model.widths": (8, 16), "model.dense": 32, "deepcluster.pca_dim": 8,
    "deepcluster.train_clusters": 12, "deepcluster.eval_n_init": 2, "optim.epochs": 3,
    "deepcluster.recluster_epochs": 1,
    "log_every_steps": 8, "checkpoint_every_steps": 4, "keep_checkpoints": 50,
    "pictures.every_evals": 0, "tensorboard": False,
}


def tiny_config(**overrides):
    return config_lib.apply_overrides(config_lib.load_config(CONFIG), {**TINY, **overrides})


def _method(n=40, **overrides):
    config = tiny_config(**overrides)
    return config, methods.from_config(config, methods.DataSpec(n, (8, 8, 1), True))


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8)


def test_whitening_matches_sklearn_pca():
    config, method = _method(n=60)
    params, model_state, cluster = method.init(jax.random.PRNGKey(0), jnp.asarray(_images(2)))
    feats = np.random.default_rng(1).normal(size=(60, 32)).astype(np.float32) * np.linspace(
        0.1, 3.0, 32, dtype=np.float32)
    fitted = method.evaluation.fit(feats, cluster, jax.random.PRNGKey(2))
    ours = np.asarray(jcluster.whiten(jnp.asarray(feats), fitted.mean, fitted.projection))
    ref = sklearn.decomposition.PCA(8, whiten=True, svd_solver="full").fit_transform(feats)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    # Components are defined up to sign: compare the (sign-free) Gram matrices and the norms.
    np.testing.assert_allclose(ours @ ours.T, ref @ ref.T, atol=2e-4)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, rtol=1e-5)


def test_recluster_labels_reinitialises_head_and_samples_uniformly():
    n = 64
    # Two whitened components: the plane of the three group means (whitening would blow the
    # noise directions up to the same scale as the groups' separation).
    config, method = _method(n=n, **{"deepcluster.pca_dim": 2})
    params, model_state, cluster = method.init(jax.random.PRNGKey(0), jnp.asarray(_images(2)))
    # Three well-separated groups of very different sizes.
    rng = np.random.default_rng(3)
    sizes = [40, 16, 8]
    centres = rng.normal(size=(3, 32)) * 20
    feats = np.concatenate([c + rng.normal(size=(s, 32)) for c, s in zip(centres, sizes)])
    trained_head = jax.tree.map(lambda a: a + 1.0, params["head"])
    params = {**params, "head": trained_head}
    context = ReclusterContext(jnp.asarray(feats, jnp.float32), jax.random.PRNGKey(4))
    new_params, new_cluster, info = method.recluster(params, cluster, context)
    labels = np.asarray(new_cluster.pseudo_labels)
    assert labels.shape == (n,) and labels.min() >= 0 and labels.max() < 12
    assert info["pseudo_clusters_used"] == len(np.unique(labels))
    # Pseudo-classes never mix the three groups.
    starts = np.cumsum([0] + sizes)
    groups = [set(labels[a:b]) for a, b in zip(starts[:-1], starts[1:])]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    # Head re-initialised: N(0, 0.01^2) kernel, zero bias, nothing left of the trained head.
    kernel, bias = new_params["head"]["kernel"], new_params["head"]["bias"]
    assert float(jnp.abs(bias).max()) == 0.0
    assert 0.005 < float(jnp.std(kernel)) < 0.015
    # Uniform sampling: every used pseudo-class is visited about equally often in an epoch.
    order = np.asarray(new_cluster.order)
    counts = np.bincount(labels[order], minlength=12)
    used = counts[counts > 0]
    k_used = info["pseudo_clusters_used"]
    per_class = n // k_used + 1  # drawn per class, then the shuffled draws are cut to n
    assert len(used) == k_used and order.shape == (n,)
    assert used.max() <= per_class and used.min() >= per_class - (k_used * per_class - n)
    # The backbone is untouched.
    for a, b in zip(jax.tree.leaves(new_params["backbone"]), jax.tree.leaves(params["backbone"])):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("sampling", ["uniform", "reweight"])
def test_loss_is_cross_entropy_of_pseudo_labels(sampling):
    n = 6
    config, method = _method(n=n, **{"num_clusters": 3, "batch_size": 4,
                                     "deepcluster.sampling": sampling,
                                     "deepcluster.crop_scale": (1.0, 1.0),
                                     "deepcluster.flip": False, "deepcluster.train_clusters": 3})
    x = _images(n, seed=5)
    params, model_state, cluster = method.init(jax.random.PRNGKey(0), jnp.asarray(x[:2]))
    labels = np.array([0, 0, 0, 0, 1, 2])
    weights = np.array([0.25, 1.0, 1.0]) if sampling == "reweight" else np.ones(3)
    cluster = cluster._replace(pseudo_labels=jnp.asarray(labels, jnp.int32),
                               class_weights=jnp.asarray(weights, jnp.float32))
    params = {**params, "head": jax.tree.map(
        lambda a: jax.random.normal(jax.random.PRNGKey(6), a.shape), params["head"])}
    batch = {"x": jnp.asarray(x[[0, 1, 4, 5]]), "index": jnp.array([0, 1, 4, 5])}
    loss, (_, aux) = method.phases[0].loss_fn(params, model_state, cluster, batch,
                                              jax.random.PRNGKey(7))

    from jclust import models
    backbone = models.SmallCNN(widths=(8, 16), dense=32, pool_first=False)
    h = backbone.apply({"params": params["backbone"]}, batch["x"], method=backbone.features)
    logits = np.asarray(h @ params["head"]["kernel"] + params["head"]["bias"], np.float64)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    y = labels[[0, 1, 4, 5]]
    ce = -log_p[np.arange(4), y]
    w = weights[y]
    np.testing.assert_allclose(loss, np.sum(w * ce) / np.sum(w), rtol=1e-5)
    np.testing.assert_allclose(aux["pseudo_label_acc"], np.mean(logits.argmax(1) == y))


def test_collapse_warns_with_the_count():
    n = 20
    config, method = _method(n=n, **{"deepcluster.train_clusters": 4, "batch_size": 8})
    params, model_state, cluster = method.init(jax.random.PRNGKey(0), jnp.asarray(_images(2)))
    # Features of rank one: after whitening every example is one of two points; k-means with
    # faiss-style splitting cannot separate identical points, so nearly everything collapses.
    feats = np.ones((n, 32), np.float32)
    feats[:, 0] = np.r_[np.zeros(n - 1), 1.0]
    context = ReclusterContext(jnp.asarray(feats), jax.random.PRNGKey(1))
    _, cluster, info = method.recluster(params, cluster, context)
    assert info["pseudo_cluster_size_max"] >= n - 1
    assert ("warning" in info and "collapse" in info["warning"]
            and str(info["pseudo_cluster_size_max"]) in info["warning"])


def test_k_larger_than_the_data_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="train_clusters"):
        _method(n=10, **{"deepcluster.train_clusters": 11})
    result = run(cli_args({"data.limit": 40, "deepcluster.train_clusters": 50},
                          str(tmp_path / "run"), config_file="configs/deepcluster.py:digits"))
    assert result.returncode != 0
    assert "train_clusters" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("dc_ref"))
    final = train.train_and_evaluate(tiny_config(), workdir)
    return workdir, final


def test_end_to_end_logs_pseudo_label_health(reference_run):
    workdir, final = reference_run
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert records[-1]["step"] == 3 * (256 // 32)
    assert len(records) == 4  # a reclustering (and evaluation) at the start of every epoch, and the end
    for key in ("acc", "nmi", "ari", "pseudo_purity", "pseudo_nmi", "pseudo_clusters_used",
                "pseudo_cluster_size_min", "pseudo_cluster_size_max", "kmeans_splits"):
        assert key in records[1], key
    assert "pseudo_nmi_previous" in records[1]
    assert 0.0 <= final["acc"] <= 1.0
    # The over-clustering (twelve pseudo-classes) is scored against the ten digit classes.
    assert records[-1]["pseudo_purity"] > 0.3 and 0.0 < records[-1]["pseudo_nmi"] <= 1.0


def test_resume_restores_pseudo_labels_order_and_head(reference_run, tmp_path):
    """A run cut off after a mid-epoch checkpoint ends exactly like the uninterrupted one."""
    ref_dir, _ = reference_run
    # Step 12: epoch 2 (steps 8..15), after its reclustering, in the middle of the epoch.
    assert_resume_matches(ref_dir, str(tmp_path / "resumed"), 12, tiny_config())


def test_resume_inside_a_multi_epoch_recluster_period(tmp_path):
    """With ``recluster_epochs`` = 2 the second epoch of a period reads the order reshuffled; a run
    resumed there must reshuffle it the same way (it knows when the order was set)."""
    config = tiny_config(**{"deepcluster.recluster_epochs": 2})
    ref_dir = str(tmp_path / "ref")
    train.train_and_evaluate(config, ref_dir)
    # Step 12: epoch 1 (steps 8..15), the second epoch after the reclustering at step 0.
    assert_resume_matches(ref_dir, str(tmp_path / "resumed"), 12, config)


@pytest.mark.slow
def test_eight_devices_give_the_same_numbers_as_one(tmp_path):
    """Same parameters, PCA, pseudo-labels and class weights on 8 devices as on 1 (float64)."""
    assert_eight_devices_match_one(TINY, "configs/deepcluster.py:digits", tmp_path,
                                   sharded=("pseudo_labels",))

def test_final_evaluation_refits_on_the_final_features(reference_run):
    """The last evaluation uses PCA and centroids fitted on the final features, and they are what
    the final checkpoint holds (so predict agrees)."""
    workdir, final = reference_run
    _, state = final_params(workdir)
    config = tiny_config()
    dataset = loader.load_dataset(config)
    method = methods.from_config(config, loader.data_spec_of(dataset))
    feats = np.asarray(method.embed(state.params, state.model_state, jnp.asarray(dataset.inputs)))
    mean, projection = np.asarray(state.eval.mean), np.asarray(state.eval.projection)
    z = (feats - mean) @ projection
    # Whitened on these very features: unit variance per component, zero mean.
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-3)
    np.testing.assert_allclose(z.std(0, ddof=1), 1.0, rtol=2e-2)
    labels, _ = method.evaluation.assign(state.eval, jnp.asarray(feats))
    from jclust import metrics
    assert metrics.accuracy(dataset.labels, np.asarray(labels)) == pytest.approx(final["acc"], abs=1e-6)
