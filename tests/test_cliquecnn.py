"""CliqueCNN: disjoint cliques, the loss by hand, a round's state and report, resume and devices."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jclust import cluster as jcluster
from jclust import config_lib, evaluators, methods, models, predict, train
from jclust.config_lib import ConfigError
from jclust.methods import ReclusterContext, cliquecnn, cliquecnn_space
from tests.conftest import (ROOT, assert_eight_devices_match_one, assert_resume_matches, cli_args,
                            run, x64_mode)

CONFIG = os.path.join(ROOT, "configs", "cliquecnn.py:digits")
TINY = {
    "data.limit": 256, "batch_size": 32, "eval_batch_size": 128,
    "model.widths": (8, 16), "model.dense": 32, "cliquecnn.pca_dim": 16,
    "cliquecnn.similarity_dim": 16,
    "cliquecnn.eval_pca_dim": 8, "cliquecnn.eval_n_init": 2, "cliquecnn.num_neighbours": 8,
    "cliquecnn.num_initial_batches": 6, "cliquecnn.cliques_per_batch": 4,
    "cliquecnn.clique_size": 4, "cliquecnn.grow_max_size": 6, "cliquecnn.build_chunk": 4,
    "cliquecnn.cliques_per_step": 4, "cliquecnn.samples_per_clique": 8,
    "cliquecnn.grow_null_samples": 50, "cliquecnn.grow_p_value": 0.05,
    "cliquecnn.round_epochs": 1, "optim.epochs": 3,
    "log_every_steps": 8, "checkpoint_every_steps": 4, "keep_checkpoints": 50,
    "pictures.every_evals": 0, "tensorboard": False, "eval_retrieval_queries": 56,
    "cliquecnn.mirror_match": True,  # the Fashion-MNIST default's path (digits has it off)
}


def tiny_config(**overrides):
    return config_lib.apply_overrides(config_lib.load_config(CONFIG), {**TINY, **overrides})


def _method(n=64, **overrides):
    config = tiny_config(**overrides)
    return config, methods.from_config(config, methods.DataSpec(n, (8, 8, 1), True))


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8)


def test_overlapping_cliques_go_to_the_lowest_index_and_singletons_are_dropped():
    members = np.array([[0, 1, 2, -1],
                        [2, 3, 4, -1],    # 2 stays in clique 0
                        [1, 5, -1, -1],   # 1 stays in clique 0: 5 alone, the clique dropped
                        [6, 7, -1, -1]])
    labels = jcluster.first_clique_labels(members, 9)
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, -1, 3, 3, -1])
    features = jcluster.l2_normalize(jnp.asarray(np.random.default_rng(0).normal(size=(9, 4)),
                                                 jnp.float32))
    table = jcluster.cliques_from_labels(labels, 4, 3, features)
    np.testing.assert_array_equal(np.asarray(table.members),
                                  [[0, 1, 2], [3, 4, -1], [-1, -1, -1], [6, 7, -1]])
    np.testing.assert_array_equal(np.asarray(table.sizes), [3, 2, 0, 2])
    # Growth adds only samples in no clique yet.
    grown = jcluster.make_cliques(jnp.asarray([[0, 1, 2, 5], [3, 4, 0, 8], [-1] * 4, [6, 7, 8, 5]]),
                                  features)
    np.testing.assert_array_equal(jcluster.grown_labels(labels, grown),
                                  [0, 0, 0, 1, 1, 0, 3, 3, 1])


@pytest.mark.parametrize("in_batch", [False, True])
def test_clique_loss_by_hand(in_batch):
    logits = np.array([[2.0, 0.0, -1.0, 3.0], [0.5, 1.5, 0.0, -2.0], [1.0, 1.0, 4.0, 0.0]])
    labels = np.array([0, 1, 1])
    value, accuracy = cliquecnn.clique_loss(jnp.asarray(logits, jnp.float32), jnp.asarray(labels),
                                            in_batch=in_batch)
    # in_batch: the batch holds cliques 0 and 1 only, so the softmax runs over those two columns.
    cols = [0, 1] if in_batch else [0, 1, 2, 3]
    z = logits[:, cols]
    log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
    want = -np.mean(log_p[np.arange(3), [cols.index(y) for y in labels]])
    np.testing.assert_allclose(float(value), want, rtol=1e-6)
    predicted = np.array(cols)[z.argmax(1)]
    assert float(accuracy) == pytest.approx(np.mean(predicted == labels))


def test_imprinted_head_by_hand():
    """Logit of clique c = scale * cos(h - mu, m_c - mu) * |h - mu| / r (NumPy float64); a
    clique without members keeps the random head's column."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(12, 5))
    labels = np.array([0, 0, 1, 1, 1, -1, 0, 1, -1, 0, 1, 1])
    random_head = {"kernel": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
                   "bias": jnp.asarray(rng.normal(size=3), jnp.float32)}
    head = cliquecnn.imprinted_head(jnp.asarray(features, jnp.float32), labels, 3, 3.0,
                                    random_head)
    logits = features @ np.asarray(head["kernel"], np.float64) + np.asarray(head["bias"])
    mu = features.mean(0)
    centred = features - mu
    r = np.sqrt(np.mean(np.sum(centred ** 2, axis=1)))
    for c in (0, 1):
        m = centred[labels == c].mean(0)
        want = 3.0 * centred @ m / np.linalg.norm(m) / r
        # float32 parameters: measured 5e-7 from this float64 formula on logits up to 3.7.
        np.testing.assert_allclose(logits[:, c], want, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(head["kernel"][:, 2], random_head["kernel"][:, 2])
    assert float(head["bias"][2]) == float(random_head["bias"][2])


def test_clique_head_is_a_dense_layer_and_applies_the_relu_the_trunk_left_out():
    """relu_input=False: nn.Dense's parameters and logits, bit for bit; relu_input=True: the
    same layer on ReLU(h). Imprinting with relu_input imprints ReLU(features), what the head
    sees."""
    import flax.linen as nn
    key, h = jax.random.PRNGKey(3), jax.random.normal(jax.random.PRNGKey(1), (6, 16))
    dense = nn.Dense(7, kernel_init=nn.initializers.normal(0.01))
    dense_params = dense.init(key, jnp.zeros((1, 16)))["params"]
    plain, after_relu = cliquecnn.CliqueHead(7, 0.01), cliquecnn.CliqueHead(7, 0.01, True)
    params = plain.init(key, jnp.zeros((1, 16)))["params"]
    jax.tree.map(np.testing.assert_array_equal, params, dense_params)
    np.testing.assert_array_equal(plain.apply({"params": params}, h),
                                  dense.apply({"params": dense_params}, h))
    np.testing.assert_array_equal(after_relu.apply({"params": params}, h),
                                  dense.apply({"params": dense_params}, jax.nn.relu(h)))

    config, method = _method(**{"model.output_relu": False})
    images = _images(64)
    params, _, _ = method.init(jax.random.PRNGKey(0), jnp.asarray(images[:2]))
    labels = np.arange(64) % 5
    backbone = models.make_backbone(config.model)
    features = cliquecnn.train_mode_features(backbone, params["backbone"], images, 32)
    assert float(jnp.min(features)) < 0  # before the ReLU
    head = cliquecnn.imprinted_round_head(backbone, params["backbone"], images, labels,
                                          params["head"], scale=3.0, batch_size=32,
                                          relu_input=True)
    want = cliquecnn.imprinted_head(jax.nn.relu(features), labels, params["head"]["bias"].shape[0],
                                    3.0, params["head"])
    jax.tree.map(np.testing.assert_array_equal, head, want)


def _clustered_images(n=64, groups=4, seed=0):
    """Images of ``groups`` distinct prototypes with a little noise (cliques find the groups)."""
    rng = np.random.default_rng(seed)
    prototypes = rng.integers(0, 256, size=(groups, 8, 8, 1))
    labels = np.arange(n) % groups
    noise = rng.integers(-12, 13, size=(n, 8, 8, 1))
    return np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8), labels


@pytest.mark.parametrize("init_features,mirror_match", [("hog_lda", False), ("hog_lda", True),
                                                         ("pca_whiten", False)])
def test_round_zero_builds_pure_disjoint_cliques_and_the_batch_order(init_features, mirror_match):
    n = 64
    images, truth = _clustered_images(n)
    # Whitening gives the noise's directions the weight of the groups' 3: keep those 3 only.
    pca_dim = 3 if init_features == "pca_whiten" else 16
    config, method = _method(n=n, **{"cliquecnn.init_features": init_features,
                                     "cliquecnn.pca_dim": pca_dim,
                                     "cliquecnn.mirror_match": mirror_match})
    params, model_state, cluster = method.init(jax.random.PRNGKey(0), jnp.asarray(images[:2]))
    context = ReclusterContext(jnp.zeros((n, 32)), jax.random.PRNGKey(1), inputs=images)
    new_params, cluster, info = method.recluster(params, cluster, context)
    labels = np.asarray(cluster.clique_labels)
    covered = labels >= 0
    assert covered.sum() >= 2 * 4 and int(cluster.round) == 1
    for c in np.unique(labels[covered]):  # every clique inside one prototype's group
        assert len(np.unique(truth[labels == c])) == 1, c
        assert (labels == c).sum() >= 2
    # The order: a round (one epoch of n // 32 steps) of batches of cliques_per_step x
    # samples_per_clique clique members.
    order = np.asarray(cluster.order).reshape(-1, 32)
    assert order.shape[0] == n // 32
    assert np.all(labels[order] >= 0)
    for row in order:  # 4 cliques x 8 samples, in runs of one clique
        assert len(np.unique(labels[row])) == 4
        runs = labels[row].reshape(4, 8)
        np.testing.assert_array_equal(runs, np.repeat(runs[:, :1], 8, axis=1))
    assert info["clique_coverage"] == pytest.approx(covered.mean())
    assert info["clique_intra_similarity"] > info["clique_inter_similarity"] + 0.1
    assert "warning" not in info
    assert not np.array_equal(new_params["head"]["kernel"], params["head"]["kernel"])  # reset


def test_collapsed_embedding_warns_and_no_cliques_stops_with_a_config_error():
    n = 64
    images, _ = _clustered_images(n)
    config, method = _method(n=n, **{"cliquecnn.init_features": "network",
                                     "cliquecnn.mirror_match": False})
    params, model_state, cluster = method.init(jax.random.PRNGKey(0), jnp.asarray(images[:2]))
    rng = np.random.default_rng(3)
    healthy = rng.normal(size=(n, 32)).astype(np.float32)
    _, _, info = method.recluster(params, cluster, ReclusterContext(
        jnp.asarray(healthy), jax.random.PRNGKey(1), inputs=images))
    assert "warning" not in info and info["feature_spread"] > 0.9
    # Rows nearly equal: z-scores of the remaining noise still form cliques, but of noise.
    collapsed = 1.0 + 1e-4 * healthy
    _, _, info = method.recluster(params, cluster, ReclusterContext(
        jnp.asarray(collapsed), jax.random.PRNGKey(1), inputs=images))
    assert info["feature_spread"] < 1e-3
    assert "embedding collapse" in info["warning"] and "learning_rate" in info["warning"]
    # Identical rows: no clique at all, an error naming the key to change.
    with pytest.raises(ConfigError, match="cliques_per_step"):
        method.recluster(params, cluster, ReclusterContext(
            jnp.ones((n, 32)), jax.random.PRNGKey(1), inputs=images))


def _flat(images):
    """A stand-in trunk: the pixels, flattened."""
    return np.asarray(images, np.float32).reshape(len(images), -1)


@pytest.mark.parametrize("init_features", ["hog_lda", "pca_whiten", "network"])
def test_mirror_match_makes_each_image_and_its_mirror_image_nearest(init_features):
    """Images and their mirror images: with the mirrored match each one's nearest neighbour is
    its mirror twin at similarity 1 (its mirror view is the twin's view, through the same
    normalisation); without it, rarely."""
    originals = np.random.default_rng(5).integers(0, 256, size=(20, 8, 8, 1), dtype=np.uint8)
    images = np.concatenate([originals, cliquecnn_space.mirrored(originals)])
    np.testing.assert_array_equal(images[20:, :, ::-1], originals)
    twin = (np.arange(40) + 20) % 40
    context = ReclusterContext(_flat(images), jax.random.PRNGKey(0), inputs=images, embed=_flat)
    round_index = 1 if init_features == "network" else 0
    spaces = [cliquecnn_space.round_space(round_index, context, init_features=init_features,
                                          pca_dim=16, num_neighbours=4, mirror_match=mirror)[0]
              for mirror in (True, False)]
    assert spaces[0].features.shape == (40, 2, 16) and spaces[1].features.shape == (40, 16)
    np.testing.assert_array_equal(np.asarray(spaces[0].neighbours[:, 0]), twin)
    np.testing.assert_allclose(np.asarray(jcluster.view_similarity(
        spaces[0].features[:1], spaces[0].features[20:21])), [[1.0]], rtol=1e-6)
    assert np.mean(np.asarray(spaces[1].neighbours[:, 0]) == twin) < 0.5
    with pytest.raises(ValueError, match="context.embed"):
        cliquecnn_space.round_space(1, context._replace(embed=None), init_features=init_features,
                                    pca_dim=16, num_neighbours=4, mirror_match=True)


def test_similarity_benchmark_builds_round_zero_with_the_mirror():
    """``benchmarks/similarity.py --features=round0:KIND:DIM:mirror``: the views the method's
    round 0 builds, the first of them the plain space."""
    from benchmarks import similarity
    images, _ = _clustered_images(64)
    views = np.asarray(similarity.features_of("round0:pca_whiten:8:mirror", images))
    plain = np.asarray(similarity.features_of("round0:pca_whiten:8", images))
    assert views.shape == (64, 2, 8) and plain.shape == (64, 8)
    # The same computation on 2N rows and on N: on some processors float32 rounds it otherwise
    # with the batch's shape (Zen 1: up to 6e-8 apart; Zen 4: bit-equal), far inside float32's
    # own drift from the float64 control (2.3e-4, PCA whitening's small components). In float64
    # the two agree to rounding (measured: exactly); in float32, to a few ulps of unit values.
    np.testing.assert_allclose(views[:, 0], plain, rtol=0, atol=1e-6)
    with x64_mode():
        views64 = np.asarray(similarity.features_of("round0:pca_whiten:8:mirror", images))
        plain64 = np.asarray(similarity.features_of("round0:pca_whiten:8", images))
    assert views64.dtype == np.float64
    np.testing.assert_allclose(views64[:, 0], plain64, rtol=0, atol=1e-12)
    context = ReclusterContext(jnp.zeros((64, 4)), jax.random.PRNGKey(0), inputs=images)
    space, _ = cliquecnn_space.round_space(0, context, init_features="pca_whiten", pca_dim=8,
                                           num_neighbours=4, mirror_match=True)
    np.testing.assert_array_equal(np.asarray(space.features), views)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="batch_size"):
        _method(**{"batch_size": 16})
    with pytest.raises(ConfigError, match="cliques_per_batch"):
        _method(n=40, **{"cliquecnn.cliques_per_batch": 11})
    with pytest.raises(ConfigError, match="init_features"):
        _method(**{"cliquecnn.init_features": "sift"})
    with pytest.raises(ConfigError, match="similarity_power=1.5 is out of range"):
        _method(**{"cliquecnn.similarity_power": 1.5})
    with pytest.raises(ConfigError, match="similarity_dim=33 is out of range"):
        _method(**{"cliquecnn.similarity_dim": 33})
    result = run(cli_args({"data.limit": 64, "cliquecnn.loss": "local"}, str(tmp_path / "run"),
                          config_file="configs/cliquecnn.py:digits"))
    assert result.returncode != 0
    assert "cliquecnn.loss" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("cliquecnn_ref"))
    final = train.train_and_evaluate(tiny_config(), workdir)
    return workdir, final


def test_end_to_end_logs_rounds_and_clique_purity(reference_run):
    workdir, final = reference_run
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert records[-1]["step"] == 3 * (256 // 32)
    assert [r.get("round") for r in records[:3]] == [0, 1, 2]
    for key in ("acc", "nmi", "ari", "pseudo_purity", "pseudo_coverage", "clique_coverage",
                "cliques_used", "clique_intra_similarity", "triplet_check_passed"):
        assert key in records[1], key
    assert records[1]["pseudo_coverage"] == pytest.approx(records[1]["clique_coverage"])
    assert 0.0 <= final["acc"] <= 1.0


def test_every_evaluation_scores_the_similarity_space_that_predict_gives(reference_run):
    """The retrieval figures of the last evaluation are those of the run's similarity space as
    ``benchmarks/similarity.py run:WORKDIR`` computes it (jclust.predict), the last 56 of the 256
    digits querying the first 200: the same pass over the same parameters, so equal. The space
    is the embedding's power-whitened PCA, not the embedding."""
    workdir, final = reference_run
    predictor = predict.Predictor.from_workdir(workdir)
    data, _ = predict.load_data(predictor, "digits", limit=256)
    embedding, labels = predictor.embed_data(data), np.asarray(data.labels)
    space = predictor.similarity_data(data)
    np.testing.assert_array_equal(
        space, np.asarray(jcluster.power_whiten(embedding, 16, 0.5)))
    expected = evaluators.retrieval_record(space, labels, 56, seed=0)
    assert set(expected) == set(evaluators.RETRIEVAL_KEYS)
    for key, value in expected.items():
        assert final[key] == pytest.approx(value, abs=1e-6), key
    assert evaluators.retrieval_record(embedding, labels, 56, seed=0) != expected
    assert 0.1 < final["knn20_acc"] <= 1.0 and 0.5 < final["anchor_auc"] <= 1.0


def test_similarity_space_is_the_power_whitened_pca_numpy_computes():
    """jclust.cluster.power_whiten (CliqueCNN's similarity space) against a float64 NumPy reference (eigh of the covariance; components
    scaled by variance ** (-power / 2), unit rows) on features with a spread spectrum (100:1).
    The float32 covariance and its eigenvectors carry the error: measured against the float64
    reference (AMD EPYC Zen 4), 4e-7 at power 0 to 1.1e-6 at power 1, where a float32 NumPy of
    the same formula is off by 2.6e-7; an other CPU's summation order moves that by the same
    order, and the bound 2e-5 leaves ~20x."""
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(500, 12)) * np.geomspace(10.0, 0.1, 12)).astype(np.float32)
    for power in (0.0, 0.5, 1.0):
        got = np.asarray(jcluster.power_whiten(x, 6, power))
        centred = x.astype(np.float64) - x.mean(0)
        variance, vectors = np.linalg.eigh(centred.T @ centred / (len(x) - 1))
        variance, vectors = variance[::-1][:6], vectors[:, ::-1][:, :6]
        ref = centred @ vectors * (variance + 1e-8) ** (-power / 2)
        ref /= np.linalg.norm(ref, axis=1, keepdims=True)
        signs = np.sign(np.sum(got * ref, axis=0))  # each component's sign is arbitrary
        np.testing.assert_allclose(got, ref * signs, atol=2e-5)
    # Fewer examples than dim: as many components as examples, no error.
    assert np.asarray(jcluster.power_whiten(x[:4], 6, 0.5)).shape == (4, 4)
    # All components kept when the features are narrower than dim; power 0 is the cosine of
    # the centred features then.
    got = np.asarray(jcluster.power_whiten(x, 64, 0.0))
    centred = x - x.mean(0)
    np.testing.assert_allclose(got @ got.T, (centred / np.linalg.norm(centred, axis=1,
                                                                      keepdims=True)) @
                               (centred / np.linalg.norm(centred, axis=1, keepdims=True)).T,
                               atol=2e-5)


def test_retrieval_queries_must_leave_a_database(tmp_path):
    result = run(cli_args({"data.limit": 256, "eval_retrieval_queries": 200},
                          str(tmp_path / "run"), config_file="configs/cliquecnn.py:digits"))
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1
    assert "eval_retrieval_queries=200" in result.stderr and "at most 156" in result.stderr
    assert not os.path.exists(tmp_path / "run")


def test_auto_retrieval_queries_are_a_seventh_of_labelled_data_and_none_otherwise():
    class Data:  # what retrieval_queries reads of a loader.Loader
        def __init__(self, n, labelled):
            self.num_examples, self.source = n, "npz:x.npz"
            self.labels = np.zeros(n, np.int32) if labelled else None

    config = config_lib.load_config(os.path.join(ROOT, "configs", "cliquecnn.py"))
    assert config.eval_retrieval_queries == -1  # the Fashion-MNIST config's default
    assert evaluators.retrieval_queries(config, Data(70_000, True)) == 10_000  # its test split
    assert evaluators.retrieval_queries(config, Data(3_000, True)) == 428
    assert evaluators.retrieval_queries(config, Data(116, True)) == 16  # leaves 100, the least
    assert evaluators.retrieval_queries(config, Data(115, True)) == 0  # would leave 99
    assert evaluators.retrieval_queries(config, Data(3_000, False)) == 0
    for queries, n, labelled in ((-2, 3_000, True), (2_901, 3_000, True), (5, 3_000, False)):
        with pytest.raises(ConfigError, match=f"eval_retrieval_queries={queries}"):
            evaluators.retrieval_queries(
                config_lib.apply_overrides(config, {"eval_retrieval_queries": queries}),
                Data(n, labelled))


def test_resume_in_the_middle_of_a_round_is_bit_equal(reference_run, tmp_path):
    ref_dir, _ = reference_run
    # Step 12: round 2 (steps 8..15), after its cliques were built, in the middle of the round.
    assert_resume_matches(ref_dir, str(tmp_path / "resumed"), 12, tiny_config())


@pytest.mark.slow
def test_eight_devices_give_the_same_numbers_as_one(tmp_path):
    """Same parameters, cliques and order on 8 devices as on 1 (float64)."""
    assert_eight_devices_match_one(TINY, "configs/cliquecnn.py:digits", tmp_path,
                                   sharded=("clique_labels",))


def test_loss_capped_by_input_power():
    """As DEC's pretraining: below ``max_input_power`` the loss is the plain one bit for bit,
    above it times max_input_power / P (P the batch's mean ||x||^2), Adam left alone."""
    images = _images(32, seed=3)
    power = float(np.mean(np.sum((images.reshape(32, -1) / 255.0) ** 2, axis=1)))
    batch = {"x": jnp.asarray(images), "index": jnp.arange(32)}

    def loss(max_input_power, optimizer="sgd"):
        _, method = _method(**{"cliquecnn.max_input_power": max_input_power,
                               "optim.optimizer": optimizer})
        params, model_state, cluster = method.init(jax.random.PRNGKey(0), batch["x"])
        cluster = cluster._replace(clique_labels=jnp.arange(64, dtype=jnp.int32) % 24)
        value, (_, metrics) = method.phases[0].loss_fn(params, model_state, cluster, batch,
                                                       jax.random.PRNGKey(1))
        return float(value), float(metrics["rate_scale"])

    plain, scale = loss(0.0)
    assert scale == 1.0
    assert loss(power * 1.01) == (plain, 1.0)
    assert loss(power / 4, optimizer="adam") == (plain, 1.0)
    capped, scale = loss(power / 4)
    np.testing.assert_allclose([capped, scale], [plain / 4, 0.25], rtol=1e-5)
    with pytest.raises(ConfigError, match="max_input_power"):
        _method(**{"cliquecnn.max_input_power": -1.0})
