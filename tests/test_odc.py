"""ODC: memory arithmetic against hand-computed numbers, the train-step hook, and an end-to-end
run on digits whose resume from an intermediate checkpoint is bit-exact."""

import io
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jclust import config_lib, methods, train
from jclust import state as jstate
from jclust.cluster import splits
from jclust.config_lib import ConfigError
from jclust.methods import odc
from jclust.methods import ReclusterContext
from tests.conftest import ROOT, final_params, tiny_config

TINY_ODC = {
    "data.limit": 256, "batch_size": 32, "eval_batch_size": 128,
    "model.widths": (8, 16), "model.dense": 16,
    # 32 ReLU features: an all-zero (un-normalisable) feature row is practically impossible.
    "odc.neck_hidden": 32, "odc.feature_dim": 32, "odc.train_clusters": 8,
    "odc.min_cluster_size": 4, "odc.kmeans_iters": 5, "odc.eval_n_init": 1, "odc.eval_epochs": 1,
    "optim.epochs": 3, "log_every_steps": 8, "checkpoint_every_steps": 8, "keep_checkpoints": 5,
    "pictures.every_evals": 0,
}


# State two equivalent runs need not share: the evaluation PCA's projection and its centroids.
# On the tiny runs' features it whitens components of eigenvalue ~0, whose directions the data
# do not fix (entries ~1e4 that differ by as much between two float64 runs, measured); the
# evaluations they make are compared through their metrics and assignments instead.
EVAL_UNDETERMINED = (".eval.projection", ".eval.centroids")


def odc_config(**overrides):
    config = config_lib.load_config(os.path.join(ROOT, "configs", "odc.py:digits"))
    return config_lib.apply_overrides(config, {**TINY_ODC, **overrides})


def small_method(num_examples=40, **overrides):
    config = odc_config(**{"batch_size": 8, "odc.train_clusters": 6, "odc.min_cluster_size": 3,
                           "num_clusters": 4, **overrides})
    spec = methods.DataSpec(num_examples=num_examples, input_shape=(8, 8, 1), is_image=True)
    return config, methods.from_config(config, spec)


def test_memory_momentum_update_hand_computed():
    memory = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    # Row 0 gets f = (0, 2), i.e. u = (0, 1): 0.75 (1, 0) + 0.25 (0, 1) = (0.75, 0.25), whose norm
    # is sqrt(0.625). Row 2 gets f = (3, 4) = 5 (0.6, 0.8): unchanged direction.
    new = odc.update_memory(memory, jnp.array([0, 2]), jnp.array([[0.0, 2.0], [3.0, 4.0]]), 0.25)
    s = np.sqrt(0.625)
    np.testing.assert_allclose(new, [[0.75 / s, 0.25 / s], [0.0, 1.0], [0.6, 0.8]], rtol=1e-6)


def test_reassignment_is_the_dot_product_with_unnormalised_centroids():
    centroids = jnp.array([[1.0, 0.0], [0.0, 0.5]])
    # (0.6, 0.8): dot products 0.6 and 0.4 -> cluster 0 (cosine would pick cluster 1).
    # (0.2, 0.98): 0.2 and 0.49 -> cluster 1.
    labels = odc.nearest_centroid(jnp.array([[0.6, 0.8], [0.2, 0.98]]), centroids)
    np.testing.assert_array_equal(labels, [0, 1])


def test_loss_weights_follow_inverse_square_root_of_cluster_size():
    labels = jnp.array([0, 0, 0, 0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2])  # sizes 4, 1, 9, 0
    w = np.asarray(odc.loss_weights(labels, 4, 0.5))
    inverse = 1.0 / np.sqrt(np.array([4, 1, 9, 0]) + 1e-5)
    np.testing.assert_allclose(w, inverse / inverse.sum(), rtol=1e-6)
    np.testing.assert_allclose(w[0] / w[2], 1.5, rtol=1e-6)  # sqrt(9 / 4)
    assert np.isclose(w.sum(), 1.0)


def _cluster_state(memory, labels, centroids):
    n = memory.shape[0]
    return odc.ODCState(features=jnp.asarray(memory, jnp.float32),
                        labels=jnp.asarray(labels, jnp.int32),
                        centroids=jnp.asarray(centroids, jnp.float32),
                        iteration=jnp.zeros((), jnp.int32),
                        recluster_labels=jnp.zeros((n,), jnp.int32))


def test_small_cluster_is_dissolved_and_refilled_by_splitting_the_largest():
    # Cluster 0: three points at (1, 0) and two at (0, 1); cluster 1: two at (0.6, 0.8);
    # cluster 2: one point at (0.8, 0.6), below min_size = 2.
    memory = jnp.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1], [.6, .8], [.6, .8], [.8, .6]],
                       jnp.float32)
    labels = jnp.array([0, 0, 0, 0, 0, 1, 1, 2])
    centroids = jnp.array([[0.6, 0.4], [0.6, 0.8], [0.8, 0.6]])
    new_labels, new_centroids, n_small = odc.fix_small_clusters(
        memory, labels, centroids, jax.random.PRNGKey(0), min_size=2, iters=20)
    assert int(n_small) == 1
    # Point 7 goes to the best non-small centroid by dot product: 0.72 (cluster 0) < 0.96 (1).
    # Cluster 2 is then empty; the largest, cluster 0, splits into (1, 0) x 3 and (0, 1) x 2; the
    # part without its first member (index 0) becomes cluster 2.
    np.testing.assert_array_equal(new_labels, [0, 0, 0, 2, 2, 1, 1, 1])
    # Centroids of the two split parts are their means; cluster 1's is not recomputed.
    np.testing.assert_allclose(new_centroids, [[1, 0], [0.6, 0.8], [0, 1]], atol=1e-6)


def test_no_small_cluster_changes_nothing():
    memory = jnp.eye(4)
    labels = jnp.array([0, 0, 1, 1])
    centroids = jnp.array([[.5, .5, 0, 0], [0, 0, .5, .5]])
    new_labels, new_centroids, n_small = odc.fix_small_clusters(
        memory, labels, centroids, jax.random.PRNGKey(0), min_size=2, iters=5)
    assert int(n_small) == 0
    np.testing.assert_array_equal(new_labels, labels)
    np.testing.assert_array_equal(new_centroids, centroids)


def test_split_of_identical_points_falls_back_to_random_halves():
    memory = jnp.tile(jnp.array([[0.6, 0.8]]), (7, 1))
    labels = jnp.array([1, 1, 1, 1, 1, 1, 0])  # cluster 2 empty, cluster 0 a singleton
    centroids = jnp.array([[0.6, 0.8], [0.6, 0.8], [0.0, 0.0]])
    new_labels, new_centroids, n_small = odc.fix_small_clusters(
        memory, labels, centroids, jax.random.PRNGKey(3), min_size=1, iters=5)
    sizes = np.bincount(np.asarray(new_labels), minlength=3)
    assert int(n_small) == 1 and new_labels[0] == 1  # the first member keeps its label
    np.testing.assert_array_equal(sizes, [1, 3, 3])  # 6 // 2 stay, the rest move
    np.testing.assert_allclose(new_centroids[2], [0.6, 0.8], rtol=1e-6)


def test_bisect_matches_scikit_learn_two_means():
    from sklearn.cluster import KMeans
    rng = np.random.default_rng(0)
    blobs = np.concatenate([rng.normal(0.0, 1.0, (60, 5)), rng.normal(1.5, 1.0, (40, 5))])
    x = np.concatenate([blobs, rng.normal(9.0, 1.0, (30, 5))]).astype(np.float32)
    member = np.arange(130) < 100  # the last 30 rows belong to another cluster
    part = np.asarray(splits.bisect(jnp.asarray(x), jnp.asarray(member), jax.random.PRNGKey(0), 20))
    assert not part[0] and not np.any(part[100:]) and 0 < part.sum() < 100
    km = KMeans(n_clusters=2, n_init=10, random_state=0).fit(x[:100])

    def inertia(labels):
        return sum(((x[:100][labels == c] - x[:100][labels == c].mean(0)) ** 2).sum() for c in (0, 1))

    assert inertia(part[:100].astype(int)) <= inertia(km.labels_) * (1 + 1e-5)


def test_cluster_update_order_and_centroid_interval():
    _, method = small_method(num_examples=6, **{"odc.train_clusters": 2, "odc.min_cluster_size": 1,
                                                "odc.centroid_update_every": 2,
                                                "odc.memory_momentum": 0.5, "num_clusters": 2,
                                                "batch_size": 2})
    update = method.phases[0].cluster_update
    memory = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1], [0, 1]], np.float32)
    state = _cluster_state(memory, [0, 0, 0, 1, 1, 1], [[1, 0], [0, 1]])
    # Example 0 gets f = (0.1, 1): memory ∝ (1, 0) + u = (1.0995, 0.995), dot products 0.74 and
    # 0.67 -> stays in cluster 0. Example 5 gets (1, 0): memory ∝ (1, 1), an exact tie, which
    # argmax breaks towards cluster 0 (a change).
    batch = {"index": jnp.array([0, 5])}
    f = jnp.array([[0.1, 1.0], [3.0, 0.0]])
    state, metrics = update(state, batch, f, jax.random.PRNGKey(0))
    u0 = np.array([0.1, 1.0]) / np.linalg.norm([0.1, 1.0])
    m0 = 0.5 * np.array([1.0, 0.0]) + 0.5 * u0
    m0 /= np.linalg.norm(m0)
    np.testing.assert_allclose(state.features[0], m0, rtol=1e-6)
    np.testing.assert_allclose(state.features[5], [np.sqrt(.5), np.sqrt(.5)], rtol=1e-6)
    np.testing.assert_array_equal(state.labels, [0, 0, 0, 1, 1, 0])
    assert float(metrics["memory_label_change"]) == 0.5 and int(state.iteration) == 1
    np.testing.assert_array_equal(state.centroids, [[1, 0], [0, 1]])  # not yet (every 2)
    # Second iteration: example 3 gets (1, 0) too, then all centroids are recomputed.
    state, _ = update(state, {"index": jnp.array([3, 1])}, jnp.array([[1.0, 0.0], [1.0, 0.0]]),
                      jax.random.PRNGKey(1))
    np.testing.assert_array_equal(state.labels, [0, 0, 0, 0, 1, 0])
    expected = [np.mean(np.asarray(state.features)[[0, 1, 2, 3, 5]], axis=0), [0.0, 1.0]]
    np.testing.assert_allclose(state.centroids, expected, rtol=1e-6)
    assert int(state.iteration) == 2


def test_loss_is_class_weighted_cross_entropy_of_the_memory_labels():
    _, method = small_method()
    x = np.random.default_rng(0).integers(0, 256, (40, 8, 8, 1), dtype=np.uint8)
    params, model_state, cluster = method.init(jax.random.PRNGKey(0), jnp.asarray(x[:8]))
    labels = np.repeat(np.arange(6), [15, 10, 6, 4, 3, 2])
    cluster = cluster._replace(labels=jnp.asarray(labels, jnp.int32))
    index = np.array([0, 1, 20, 30, 35, 38, 39, 15])
    batch = {"x": jnp.asarray(x[index]), "index": jnp.asarray(index, jnp.int32)}
    loss, (_, metrics, f) = method.phases[0].loss_fn(params, model_state, cluster, batch,
                                                     jax.random.PRNGKey(1))
    logits = np.asarray(f) @ np.asarray(params["head"]["kernel"]) + np.asarray(params["head"]["bias"])
    log_p = logits - np.log(np.sum(np.exp(logits), axis=1, keepdims=True))
    y = labels[index]
    w = (np.bincount(labels, minlength=6) + 1e-5) ** -0.5
    w = (w / w.sum())[y]
    np.testing.assert_allclose(loss, np.sum(-w * log_p[np.arange(8), y]) / np.sum(w), rtol=1e-5)
    assert f.shape == (8, 32) and "pseudo_label_acc" in metrics


def test_one_jitted_train_step_updates_params_and_memories():
    _, method = small_method()
    x = np.random.default_rng(1).integers(0, 256, (40, 8, 8, 1), dtype=np.uint8)
    state = jstate.init_state(method, 0, x[:8])
    feats = method.embed(state.params, state.model_state, jnp.asarray(x))
    context = ReclusterContext(feats, jax.random.PRNGKey(2))
    params, cluster, info = method.recluster(state.params, state.cluster, context)
    assert info["memory_clusters_used"] == 6 and "warning" not in info
    np.testing.assert_allclose(cluster.features, feats, rtol=1e-6)  # embed is already unit
    state = state.replace(params=params, cluster=cluster)
    before = jax.device_get(state)
    step = jax.jit(jstate.make_train_step(method, 0))
    index = np.arange(8, 16)
    state, metrics = step(state, {"x": jnp.asarray(x[index]), "index": jnp.asarray(index, jnp.int32)})
    for key in ("loss", "grad_norm", "pseudo_label_acc", "memory_label_change", "small_clusters",
                "memory_cluster_size_min", "memory_cluster_size_max"):
        assert np.isfinite(float(metrics[key])), key
    assert int(state.step) == 1 and int(state.cluster.iteration) == 1
    memory, old = np.asarray(state.cluster.features), np.asarray(before.cluster.features)
    np.testing.assert_array_equal(np.delete(memory, index, 0), np.delete(old, index, 0))
    assert not np.allclose(memory[index], old[index])
    np.testing.assert_allclose(np.linalg.norm(memory, axis=1), 1.0, rtol=1e-5)
    assert np.bincount(np.asarray(state.cluster.labels), minlength=6).min() >= 3  # min size
    assert not np.array_equal(np.asarray(state.params["neck"]["Dense_0"]["kernel"]),
                              np.asarray(before.params["neck"]["Dense_0"]["kernel"]))


def test_memory_in_one_cluster_warns():
    from jclust.methods.common import labels_report
    info = labels_report(np.zeros(40, np.int32), 6, prefix="memory")
    assert "pseudo-label collapse: 40 of 40 examples in one cluster (1 of 6 used)" in info["warning"]
    assert info["memory_clusters_used"] == 1 and info["memory_cluster_size_max"] == 40
    fine = labels_report(np.arange(40, dtype=np.int32) % 6, 6, prefix="memory",
                         previous=np.arange(40) % 3)
    assert "warning" not in fine and 0 < fine["memory_nmi_previous"] < 1


@pytest.mark.parametrize("overrides, spec, match", [
    ({"odc.train_clusters": 41}, (40, (8, 8, 1), True), "more clusters than the 40 examples"),
    ({"num_clusters": 50}, (40, (8, 8, 1), True), "more clusters than the 40 examples"),
    ({"odc.memory_momentum": 0.0}, (40, (8, 8, 1), True), "odc.memory_momentum"),
    ({"odc.centroid_update_every": 0}, (40, (8, 8, 1), True), "odc.centroid_update_every"),
    ({"batch_size": 64}, (40, (8, 8, 1), True), "batch_size"),
    ({}, (40, (64,), False), "images"),
    ({"model.name": "mlp_autoencoder"}, (40, (8, 8, 1), True), "small_cnn"),
])
def test_bad_configs_are_clear_errors(overrides, spec, match):
    config = odc_config(**{"batch_size": 8, "odc.train_clusters": 6, "odc.min_cluster_size": 3,
                           "num_clusters": 4, **overrides})
    with pytest.raises(ConfigError, match=match):
        methods.from_config(config, methods.DataSpec(*spec))


def test_the_cluster_floor_scales_down_with_the_data():
    """At most a quarter of the mean cluster size: Fashion-MNIST keeps its 20, small sets get
    a floor their clusters can hold (an explicit value above that is lowered, not refused)."""
    assert odc.min_cluster_floor(20, 70_000, 100) == 20
    assert odc.min_cluster_floor(20, 10_000, 100) == 20
    assert odc.min_cluster_floor(20, 3_000, 100) == 7
    assert odc.min_cluster_floor(20, 1_797, 100) == 4
    assert odc.min_cluster_floor(10, 1_797, 30) == 10  # the digits config: unchanged
    assert odc.min_cluster_floor(7, 40, 6) == 1
    small_method(**{"odc.train_clusters": 6, "odc.min_cluster_size": 7})  # 6 x 7 > 40: runs


def test_phases_without_cluster_update_leave_the_cluster_state_alone():
    config = tiny_config()
    method = methods.from_config(config, methods.DataSpec(64, (8, 8, 1), True))
    assert all(phase.cluster_update is None for phase in method.phases)
    x = np.random.default_rng(0).integers(0, 256, (64, 8, 8, 1), dtype=np.uint8)
    state = jstate.init_state(method, 0, x[:4])
    before = jax.device_get(state.cluster)
    new, metrics = jax.jit(jstate.make_train_step(method, 1))(
        state, {"x": jnp.asarray(x[:4]), "index": jnp.arange(4, dtype=jnp.int32)})
    assert set(metrics) == {"loss", "grad_norm", "kl"}
    for a, b in zip(jax.tree.leaves(new.cluster), jax.tree.leaves(before)):
        np.testing.assert_array_equal(a, b)


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in ("time", "nmi_previous")}
                for line in f]


def test_digits_end_to_end_checkpoints_memories_and_resumes_exactly(tmp_path):
    config = odc_config()
    reference = str(tmp_path / "reference")
    final = train.train_and_evaluate(config, reference)
    assert final["step"] == 24  # 3 epochs x 8 batches of 32 out of 256 digits
    for key in ("acc", "nmi", "ari", "clusters_used"):
        assert key in final
    records = _records(reference)
    assert [r["step"] for r in records] == [0, 8, 16, 24]
    assert "kmeans_splits" in records[0] and "memory_nmi_previous" in records[1]
    ref_params, ref_state = final_params(reference)
    memory = np.asarray(ref_state.cluster.features)
    assert isinstance(ref_state.cluster, odc.ODCState) and memory.shape == (256, 32)
    np.testing.assert_allclose(np.linalg.norm(memory, axis=1), 1.0, rtol=1e-5)
    assert int(ref_state.cluster.iteration) == 24
    assert np.bincount(np.asarray(ref_state.cluster.labels), minlength=8).min() >= 4

    # A run killed after its step-8 checkpoint: later checkpoints never written.
    resumed = str(tmp_path / "resumed")
    shutil.copytree(reference, resumed)
    ckpt_dir = os.path.join(resumed, "checkpoints")
    for name in os.listdir(ckpt_dir):
        if name.isdigit() and int(name) > 8:
            shutil.rmtree(os.path.join(ckpt_dir, name))
    out = io.StringIO()
    train.train_and_evaluate(config, resumed, stdout=out)
    assert "resumed from checkpoint step 8" in out.getvalue()
    params, state = final_params(resumed)
    for a, b in zip(params, ref_params):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(state.cluster), jax.tree.leaves(ref_state.cluster)):
        np.testing.assert_array_equal(a, b)
    assert _records(resumed) == records


@pytest.mark.parametrize("pca_dim", [0, 3])
def test_evaluation_rule_whitens_then_assigns_like_its_kmeans(pca_dim):
    """The evaluation's PCA-whitened, unit features have identity covariance (before the L2
    normalisation) and its assign gives back the evaluation k-means's own labels."""
    from jclust import cluster as jcluster
    config, method = small_method(**{"odc.eval_pca_dim": pca_dim, "odc.eval_n_init": 2})
    feats = np.random.default_rng(0).normal(size=(40, 32)).astype(np.float32)
    feats[:20, :3] += 4.0  # two groups
    params, _, cluster = method.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    key = jax.random.key(1)
    fitted = method.evaluation.fit(feats, cluster, key)
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    projected = (unit - np.asarray(fitted.mean)) @ np.asarray(fitted.projection)
    if pca_dim:
        assert projected.shape == (40, pca_dim)
        np.testing.assert_allclose(np.cov(projected, rowvar=False),
                                   np.eye(pca_dim), atol=0.05)
    else:
        np.testing.assert_allclose(projected, unit, rtol=1e-6)
    z = projected / np.linalg.norm(projected, axis=1, keepdims=True)
    expected = jcluster.kmeans(jnp.asarray(z), 4, key=key, n_init=2, spherical=True)
    labels, confidence = method.evaluation.assign(fitted, jnp.asarray(feats))
    np.testing.assert_array_equal(labels, expected.labels)
    np.testing.assert_allclose(confidence, np.max(z @ np.asarray(expected.centroids).T, 1),
                               rtol=1e-5)


def test_eval_pca_dim_larger_than_the_features_is_a_config_error():
    with pytest.raises(ConfigError, match="eval_pca_dim"):
        small_method(**{"odc.eval_pca_dim": 33})
