"""SwAV: swapped loss by formula, queue order, prototype normalisation and freezing, collapse
warning, resume and devices."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jclust import config_lib, methods, models, train
from jclust import state as jstate
from jclust.cluster import sinkhorn_knopp
from jclust.config_lib import ConfigError
from jclust.methods import swav
from tests.conftest import (ROOT, assert_eight_devices_match_one, assert_resume_matches,
                            assert_sharded_steps_match, assert_whitened_backbone_probe,
                            final_params)

CONFIG = os.path.join(ROOT, "configs", "swav.py:digits")
TINY = {
    "data.limit": 256, "batch_size": 32, "eval_batch_size": 128,
    "model.widths": (8, 16), "model.dense": 32, "swav.feature_dim": 8,
    "swav.projection_hidden": 16, "swav.prototypes": 12, "swav.eval_n_init": 2,
    "swav.queue_length": 64, "swav.queue_start_epoch": 1, "swav.freeze_prototypes_steps": 4,
    "optim.epochs": 3, "eval_every_steps": 8, "log_every_steps": 8, "checkpoint_every_steps": 4,
    "keep_checkpoints": 50, "pictures.every_evals": 0, "tensorboard": False,
}


def tiny_config(**overrides):
    return config_lib.apply_overrides(config_lib.load_config(CONFIG), {**TINY, **overrides})


def _method(n=64, **overrides):
    config = tiny_config(**overrides)
    return config, methods.from_config(config, methods.DataSpec(n, (8, 8, 1), True))


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8)


def test_swapped_prediction_loss_follows_the_paper_formula():
    rng = np.random.default_rng(0)
    scores = rng.uniform(-1, 1, size=(4, 3, 5)).astype(np.float32)  # 2 large + 2 small crops
    codes = rng.dirichlet(np.ones(5), size=(2, 3)).astype(np.float32)
    temperature = 0.2
    total = 0.0
    for s in range(2):
        per_crop = []
        for v in range(4):
            if v == s:
                continue
            p = np.exp(scores[v] / temperature)
            p /= p.sum(-1, keepdims=True)
            per_crop.append(np.mean([-np.sum(codes[s, i] * np.log(p[i])) for i in range(3)]))
        total += np.mean(per_crop)
    np.testing.assert_allclose(swav.swapped_prediction_loss(jnp.asarray(scores),
                                                            jnp.asarray(codes), temperature),
                               total / 2, rtol=1e-5)


def test_swapped_loss_hand_computed_two_crops():
    # Crop 0 predicts crop 1's code and vice versa. Scores (1, 0) and (0, 1) at temperature 1,
    # one-hot codes [1, 0] for crop 0 and [0, 1] for crop 1:
    # crop 1 (scores (0, 1)) predicting [1, 0]: -log(1 / (1 + e)); crop 0 predicting [0, 1]: same.
    scores = jnp.array([[[1.0, 0.0]], [[0.0, 1.0]]])
    codes = jnp.array([[[1.0, 0.0]], [[0.0, 1.0]]])
    np.testing.assert_allclose(swav.swapped_prediction_loss(scores, codes, 1.0),
                               np.log1p(np.e), rtol=1e-6)


def test_queue_pushes_newest_first_and_drops_the_oldest():
    queue = jnp.array([[1.0], [2.0], [3.0], [4.0]])  # row 0 newest
    pushed = swav.push_queue(queue, jnp.array([[8.0], [9.0]]))
    np.testing.assert_array_equal(pushed[:, 0], [8.0, 9.0, 1.0, 2.0])


def test_queue_starts_at_its_epoch_and_is_used_once_full():
    n = 64  # 2 steps an epoch at batch 32; queue of 64 from epoch 1 (step 2), full after step 3
    config, method = _method(n=n)
    update = method.phases[0].cluster_update
    state = jstate.init_state(method, 0, _images(2))
    cluster = state.cluster
    z = [jnp.full((2, 32, 8), float(i + 1)) for i in range(4)]
    counts, fronts = [], []
    for i in range(4):
        cluster, metrics = update(cluster, {}, {"z": z[i], "collapsed": jnp.array(False)},
                                  jax.random.PRNGKey(0))
        counts.append(int(cluster.queue_count))
        fronts.append(float(cluster.queue[0, 0, 0]))
    assert counts == [0, 0, 32, 64]
    assert fronts == [0.0, 0.0, 3.0, 4.0]
    np.testing.assert_array_equal(cluster.queue[1, 32:, 0], 3.0)  # older batch behind the newer
    assert int(cluster.iteration) == 4 and int(cluster.collapse_steps) == 0


def test_codes_with_a_full_queue_are_the_batch_rows_of_sinkhorn_over_queue_and_batch():
    n = 64
    config, method = _method(n=n, **{"swav.num_small_crops": 0})
    state = jstate.init_state(method, 0, _images(2))
    queue = swav.jnp.asarray(np.random.default_rng(1).normal(size=(2, 64, 8)), jnp.float32)
    queue = queue / jnp.linalg.norm(queue, axis=-1, keepdims=True)
    cluster = state.cluster._replace(queue=queue, queue_count=jnp.array(64, jnp.int32))
    x = _images(32, seed=2)
    batch = {"x": jnp.asarray(x), "index": jnp.arange(32, dtype=jnp.int32)}
    rng = jax.random.PRNGKey(3)
    params = method.phases[0].prepare_params(state.params)
    loss, (_, metrics, outputs) = method.phases[0].loss_fn(params, state.model_state, cluster,
                                                           batch, rng)
    assert float(metrics["queue_in_use"]) == 1.0
    # Recompute the loss from the crops' z with the reference's queue rule.
    z = outputs["z"]
    c = params["prototypes"]
    scores = jnp.einsum("vbf,kf->vbk", z, c)
    codes = []
    for s in range(2):
        both = jnp.concatenate([queue[s] @ c.T, scores[s]])
        codes.append(sinkhorn_knopp(both, epsilon=config.swav.epsilon, num_iters=3,
                                    log_domain=True).codes[64:])
    expected = swav.swapped_prediction_loss(scores, jnp.stack(codes), config.swav.temperature)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # Without the queue the codes (and so the loss) differ.
    empty = cluster._replace(queue_count=jnp.array(0, jnp.int32))
    loss_no_queue = method.phases[0].loss_fn(params, state.model_state, empty, batch, rng)[0]
    assert not np.isclose(float(loss_no_queue), float(loss), rtol=1e-4)


def test_train_step_normalises_and_freezes_prototypes_then_trains_them():
    n = 64
    config, method = _method(n=n, **{"swav.freeze_prototypes_steps": 1})
    x = _images(n, seed=4)
    state = jstate.init_state(method, 0, x[:2])
    state = state.replace(params={**state.params, "prototypes": state.params["prototypes"] * 3.0})
    step = jax.jit(jstate.make_train_step(method, 0))
    batch = {"x": jnp.asarray(x[:32]), "index": jnp.arange(32, dtype=jnp.int32)}
    first, metrics = step(state, batch)
    # Step 1: frozen, so the prototypes are exactly the re-normalised ones.
    np.testing.assert_allclose(first.params["prototypes"],
                               swav.l2_normalize(state.params["prototypes"]), rtol=1e-6)
    assert not np.allclose(first.params["backbone"]["convs_0"]["kernel"],
                           state.params["backbone"]["convs_0"]["kernel"])
    second, _ = step(first, batch)
    assert not np.allclose(second.params["prototypes"], first.params["prototypes"])
    for key in ("loss_over_log_k", "code_entropy", "prototypes_used", "feature_std",
                "collapse_steps"):
        assert np.isfinite(float(metrics[key])), key
    assert 1 <= float(metrics["prototypes_used"]) <= 12


def test_prototype_assignment_rule_with_k_equal_to_num_clusters():
    config, method = _method(n=64, **{"swav.prototypes": 10})
    assert method.assignment_rule == swav.PROTOTYPES_RULE and method.training_labels is None
    state = jstate.init_state(method, 0, _images(2))
    feats = method.embed(state.params, state.model_state, jnp.asarray(_images(20, seed=5)))
    labels, confidence = method.assign(state.params, state.cluster, feats)
    scores = swav.l2_normalize(feats) @ swav.l2_normalize(state.params["prototypes"]).T
    np.testing.assert_array_equal(labels, np.argmax(scores, -1))
    np.testing.assert_allclose(confidence, np.max(jax.nn.softmax(scores / 0.1, -1), -1), rtol=1e-5)


def test_backbone_assignment_rule_is_deepcluster_v1s_on_the_backbone_features():
    """"backbone": the feature pass yields [z, h]; the evaluation PCA-whitens h (identity
    covariance), and its assign gives back the evaluation k-means's own labels."""
    config, method = _method(n=64, **{"swav.assignment": "backbone", "swav.eval_pca_dim": 4})
    assert method.assignment_rule == swav.BACKBONE_RULE
    state = jstate.init_state(method, 0, _images(2))
    feats = np.asarray(method.embed(state.params, state.model_state,
                                    jnp.asarray(_images(64, seed=5))))
    h = np.asarray(models.make_backbone(config.model).apply(
        state.params["backbone"], state.model_state["backbone"], jnp.asarray(_images(64, seed=5)),
        False)[0])
    assert feats.shape == (64, 8 + h.shape[1])
    np.testing.assert_allclose(feats[:, 8:], h, rtol=1e-6)
    assert_whitened_backbone_probe(method.evaluation, feats, h, state.cluster, 4, 2)
    prototypes = swav.l2_normalize(feats[:, :8]) @ swav.l2_normalize(state.params["prototypes"]).T
    np.testing.assert_array_equal(method.training_labels(state.params, state.cluster, feats),
                                  np.argmax(prototypes, -1))
    with pytest.raises(ConfigError, match="eval_pca_dim"):
        _method(**{"swav.assignment": "backbone", "swav.eval_pca_dim": 10 ** 4})


def test_bad_configs_are_config_errors():
    with pytest.raises(ConfigError, match="num_clusters"):
        _method(**{"swav.assignment": "prototypes"})
    with pytest.raises(ConfigError, match="shorter than one batch"):
        _method(**{"swav.queue_length": 16})
    with pytest.raises(ConfigError, match="global_pool"):
        _method(**{"model.global_pool": False})
    with pytest.raises(ConfigError, match="epsilon"):
        _method(**{"swav.epsilon": 0.0})


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("swav_ref"))
    final = train.train_and_evaluate(tiny_config(), workdir)
    return workdir, final


def test_end_to_end_logs_both_clusterings_and_fills_the_queue(reference_run):
    workdir, final = reference_run
    assert 0.0 <= final["acc"] <= 1.0
    assert "pseudo_purity" in final  # the 12-prototype argmax, scored as an over-clustering
    _, state = final_params(workdir)
    assert int(state.cluster.queue_count) == 64 and int(state.cluster.iteration) == 24
    assert 0.0 <= final["pseudo_purity"] <= 1.0 and 0.0 <= final["pseudo_nmi"] <= 1.0


def test_resume_restores_queue_and_counters(reference_run, tmp_path):
    ref_dir, _ = reference_run
    # Step 12: epoch 1 (steps 8..15); the queue started at step 8 and is full and in use since
    # step 10, so the checkpoint must carry it.
    assert_resume_matches(ref_dir, str(tmp_path / "resumed"), 12, tiny_config())


def test_collapse_warning_is_printed_once_with_the_remedies(tmp_path, capsys):
    # Every prototype must win an example of each batch: never true at K = 12, B = 32 with
    # random initial features, so every step counts as collapsed.
    config = tiny_config(**{"swav.collapse_prototype_fraction": 1.0,
                            "swav.collapse_patience_steps": 3, "optim.epochs": 1})
    train.train_and_evaluate(config, str(tmp_path / "run"))
    out = capsys.readouterr().out
    assert out.count("SwAV looks collapsed") == 1
    assert "swav.epsilon" in out and "swav.freeze_prototypes_epochs" in out


SHARDED_STEPS = """
import numpy as np
from jclust import loader
from jclust import methods
from jclust import state as jstate
from tests.conftest import one_step_each_side
from tests.test_swav import tiny_config

def first_step(sides):
    config = tiny_config(**{"swav.queue_start_epoch": 0, "swav.freeze_prototypes_steps": 1})
    dataset = loader.load_dataset(config)
    method = methods.from_config(config, loader.data_spec_of(dataset))
    state = jstate.init_state(method, 0, dataset.inputs[:32])
    idx = np.arange(32, dtype=np.int32)
    return one_step_each_side(method, state, {"x": dataset.inputs[idx], "index": idx},
                              dataset.num_examples, sides, None)  # SwAV has no per-example state
"""


def test_eight_devices_take_the_same_step_as_one(tmp_path):
    """The batch split over 8 devices: Sinkhorn over the global batch, BatchNorm and the queue
    push give one device's step up to float32 rounding (conftest.assert_sharded_steps_match)."""
    assert_sharded_steps_match(SHARDED_STEPS, tmp_path)


@pytest.mark.slow
def test_eight_devices_end_to_end(tmp_path):
    """A whole run on 8 devices ends where 1 device ends, in float64. (In float32 the ~1e-7
    rounding of the reductions doubles every step or so through exp(scores / epsilon), and
    flips prototype labels within a 24-step run: conftest.X64_TOLERANCE.)"""
    eight, _ = assert_eight_devices_match_one(TINY, "configs/swav.py:digits", tmp_path)
    assert int(eight.cluster.queue_count) == 64
