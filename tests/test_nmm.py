"""Neural mixture-model EM: the density transformation against the degenerate solution, the
consistency terms by formula, neighbour mining and drawing, one jitted step, resume, 8 devices."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jclust import cluster as jcluster
from jclust import config_lib, methods, train
from jclust import schedule as jschedule
from jclust import state as jstate
from jclust.config_lib import ConfigError
from jclust.methods import nmm
from jclust.models import MixtureHead
from tests.conftest import (ROOT, assert_eight_devices_match_one, assert_resume_matches,
                            assert_sharded_steps_match, final_params)

CONFIG = os.path.join(ROOT, "configs", "nmm.py:digits")
TINY = {
    "data.limit": 256, "batch_size": 32, "eval_batch_size": 128,
    "model.widths": (8, 16), "model.dense": 32, "nmm.num_neighbours": 5,
    "nmm.mixture_weights": "estimated", "nmm.weights_momentum": 0.5,
    # One head (the configs' 5 are tested on their own below): the 8-device end-to-end comparison
    # needs a trajectory along which rounding does not grow.
    "nmm.num_heads": 1,
    # SGD, not the configs' Adam: Adam turns gradients that are 0 up to rounding (biases ahead of
    # the batch normalisation) into full +-lr steps whose sign is the rounding's, which would make
    # the 8-device comparisons meaningless.
    "optim.optimizer": "sgd", "optim.learning_rate": 0.05, "optim.momentum": 0.9,
    # A gentler sigmoid than the configs' (15) keeps the tiny runs' rounding from growing.
    "nmm.sigmoid_scale": 5.0, "nmm.em_weight": 1.0,
    "optim.epochs": 3, "eval_every_steps": 8, "log_every_steps": 8, "checkpoint_every_steps": 4,
    "keep_checkpoints": 50, "pictures.every_evals": 0, "tensorboard": False,
}


def tiny_config(**overrides):
    return config_lib.apply_overrides(config_lib.load_config(CONFIG), {**TINY, **overrides})


def _method(n=64, **overrides):
    config = tiny_config(**overrides)
    return config, methods.from_config(config, methods.DataSpec(n, (8, 8, 1), True))


def _train_head(normalize, seed, k=4, steps=300):
    """Trains a MixtureHead alone by EM (M-step on -Q) on Gaussian inputs; returns the hard
    cluster shares [K] and the mean responsibilities [K]."""
    x = jax.random.normal(jax.random.PRNGKey(seed), (256, 16))
    head = MixtureHead(num_components=k, normalize=normalize)
    params = head.init(jax.random.PRNGKey(1), x)["params"]
    tx = optax.adam(0.05)
    log_w = jnp.zeros(k)

    def loss(p):
        o = head.apply({"params": p}, x, train=True, mutable=["batch_stats"])[0]
        log_p = jcluster.sigmoid_log_densities(5.0 * o)
        gamma = jcluster.responsibilities(log_p, log_w).responsibilities
        return -jcluster.expected_complete_log_likelihood(gamma, log_p, log_w), log_p

    @jax.jit
    def step(p, opt):
        (_, log_p), grads = jax.value_and_grad(loss, has_aux=True)(p)
        updates, opt = tx.update(grads, opt, p)
        return optax.apply_updates(p, updates), opt, log_p

    opt = tx.init(params)
    for _ in range(steps):
        params, opt, log_p = step(params, opt)
    shares = np.bincount(np.asarray(jnp.argmax(log_p, -1)), minlength=k) / x.shape[0]
    mass = np.asarray(jcluster.responsibilities(log_p, log_w).responsibilities).mean(0)
    return shares, mass


def test_without_batch_normalisation_one_neuron_takes_every_sample():
    shares, _ = _train_head("none", seed=2)
    np.testing.assert_allclose(shares.max(), 1.0)
    # On other inputs too the unnormalised head ends on at most two of the four components.
    for seed in (0, 1, 3):
        shares, _ = _train_head("none", seed=seed)
        assert np.count_nonzero(shares) <= 2 and shares.max() > 0.6, (seed, shares)


def test_with_batch_normalisation_cluster_masses_stay_near_one_over_k():
    for seed in (0, 2):
        shares, mass = _train_head("batch", seed=seed)
        np.testing.assert_allclose(shares, 0.25, atol=0.06)
        np.testing.assert_allclose(mass, 0.25, atol=0.02)


def test_consistency_terms_follow_their_formulas():
    rng = np.random.default_rng(0)
    q_a = rng.dirichlet(np.ones(4), size=3).astype(np.float32)
    q_b = rng.dirichlet(np.ones(4), size=3).astype(np.float32)
    dot = -np.mean(np.log(np.sum(q_a * q_b, 1)))
    np.testing.assert_allclose(nmm.consistency_loss(q_a, q_b, "dot"), dot, rtol=1e-5)
    ce = -0.5 * np.mean(np.sum(q_a * np.log(q_b), 1) + np.sum(q_b * np.log(q_a), 1))
    np.testing.assert_allclose(nmm.consistency_loss(q_a, q_b, "cross_entropy"), ce, rtol=1e-5)
    # Identical one-hot posteriors agree perfectly.
    one_hot = np.eye(4, dtype=np.float32)[:3]
    np.testing.assert_allclose(nmm.consistency_loss(one_hot, one_hot, "dot"), 0.0, atol=1e-6)
    mass = q_a.mean(0)
    np.testing.assert_allclose(nmm.mean_entropy(q_a), -np.sum(mass * np.log(mass)), rtol=1e-5)
    np.testing.assert_allclose(nmm.mean_entropy(np.full((5, 4), 0.25, np.float32)), np.log(4),
                               rtol=1e-6)


def test_cross_entropy_consistency_treats_the_other_side_as_a_constant():
    q_a = jnp.array([[0.7, 0.3]])
    grad_b = jax.grad(lambda q_b: nmm.consistency_loss(q_a, q_b, "cross_entropy"))(
        jnp.array([[0.4, 0.6]]))
    # d/dq_b of -1/2 [q_a log q_b + sg(q_b) log q_a] = -q_a / (2 q_b).
    np.testing.assert_allclose(grad_b, [[-0.7 / 0.8, -0.3 / 1.2]], rtol=1e-5)


def test_mined_neighbours_match_scikit_learn():
    from sklearn.neighbors import NearestNeighbors
    x = np.random.default_rng(0).normal(size=(120, 10)).astype(np.float32)
    ours = np.asarray(nmm.mine_neighbours(x, 4))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    ref = NearestNeighbors(n_neighbors=5).fit(unit).kneighbors(unit, return_distance=False)[:, 1:]
    np.testing.assert_array_equal(ours, ref)
    # With PCA first: the neighbours of the projected rows.
    from sklearn.decomposition import PCA
    proj = PCA(3).fit_transform(x)
    proj /= np.linalg.norm(proj, axis=1, keepdims=True)
    ref = NearestNeighbors(n_neighbors=5).fit(proj).kneighbors(proj, return_distance=False)[:, 1:]
    agree = np.mean(np.asarray(nmm.mine_neighbours(x, 4, pca_dim=3)) == ref)
    assert agree > 0.97  # float32 PCA against float64: rare near-ties may swap


def test_drawn_neighbours_are_valid_reproducible_and_uniform():
    table = np.array([[1, 2, 3], [-1, -1, -1], [0, -1, 4], [2, 2, 2], [0, 1, 2]])
    idx = np.array([0, 1, 2, 3])
    a = jschedule.draw_neighbours(table, idx, seed=7, step=11)
    np.testing.assert_array_equal(a, jschedule.draw_neighbours(table, idx, seed=7, step=11))
    assert a[0] in (1, 2, 3) and a[1] == 1 and a[2] in (0, 4) and a[3] == 2
    draws = np.stack([jschedule.draw_neighbours(table, np.zeros(1, int), 0, s) for s in range(3000)])
    np.testing.assert_allclose(np.bincount(draws[:, 0], minlength=4)[1:] / 3000, 1 / 3, atol=0.04)
    draws = np.stack([jschedule.draw_neighbours(table, np.full(1, 2), 0, s) for s in range(2000)])
    assert set(np.unique(draws)) == {0, 4}


def test_assignment_is_the_argmax_density_with_its_posterior():
    config, method = _method(**{"nmm.num_heads": 1})
    params, _, cluster = method.init(jax.random.PRNGKey(0), jnp.zeros((4, 8, 8, 1), jnp.uint8))
    logits = jnp.array([[2.0, -1.0] + [-3.0] * 8, [0.0, 1.0] + [-3.0] * 8])
    feats = jnp.concatenate([logits, jnp.ones((2, 32))], axis=1)
    labels, confidence = method.assign(params, cluster, feats)
    np.testing.assert_array_equal(labels, [0, 1])
    gamma = jcluster.responsibilities(jax.nn.log_sigmoid(logits), cluster.log_weights[0])
    np.testing.assert_allclose(confidence, [gamma.responsibilities[0, 0],
                                            gamma.responsibilities[1, 1]], rtol=1e-6)


def test_one_jitted_step_is_em_plus_consistency():
    config, method = _method(**{"nmm.augment_anchor": False, "nmm.augment_weight": 0.0,
                                "nmm.num_heads": 1})
    x = np.random.default_rng(0).integers(0, 256, size=(32, 8, 8, 1), dtype=np.uint8)
    state = jstate.init_state(method, 0, x)
    step = jax.jit(jstate.make_train_step(method, 0))
    batch = {"x": x, "index": np.arange(32, dtype=np.int32), "neighbour_x": x,
             "neighbour_index": np.arange(32, dtype=np.int32)}
    new, metrics = step(state, jax.tree.map(jnp.asarray, batch))
    assert int(new.step) == 1 and np.isfinite(float(metrics["loss"]))
    # The neighbour here is the image itself: same posterior, so the term is -log sum_k q_k^2,
    # and the total is -Q + that - entropy of the batch mass.
    assert float(metrics["neighbour_consistency"]) > 0
    expected = (-float(metrics["expected_log_lik"]) + float(metrics["neighbour_consistency"])
                - float(metrics["mass_entropy_over_log_k"]) * np.log(10))
    np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-5)
    # Estimated weights moved towards the batch's mass (momentum 0.5).
    assert not np.allclose(np.asarray(new.cluster.log_weights), np.log(0.1))
    np.testing.assert_allclose(np.exp(np.asarray(new.cluster.log_weights)).sum(), 1.0, rtol=1e-5)


def test_bad_configs_are_config_errors():
    with pytest.raises(ConfigError, match="normalize"):
        _method(**{"nmm.normalize": "layer"})
    with pytest.raises(ConfigError, match="nothing would be trained"):
        _method(**{"nmm.em_weight": 0.0, "nmm.augment_weight": 0.0, "nmm.neighbour_weight": 0.0})
    with pytest.raises(ConfigError, match="num_neighbours"):
        _method(n=20, **{"nmm.num_neighbours": 20, "batch_size": 4})
    with pytest.raises(ConfigError, match="consistency"):
        _method(**{"nmm.consistency": "kl"})
    with pytest.raises(ConfigError, match="num_heads"):
        _method(**{"nmm.num_heads": 0})
    with pytest.raises(ConfigError, match="unknown config argument"):
        config_lib.load_config(os.path.join(ROOT, "configs", "nmm.py:digit"))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("nmm_ref"))
    final = train.train_and_evaluate(tiny_config(), workdir)
    return workdir, final


def test_end_to_end_mines_neighbours_and_evaluates(reference_run):
    workdir, final = reference_run
    assert 0.0 <= final["acc"] <= 1.0 and final["clusters_used"] >= 2
    _, state = final_params(workdir)
    neighbours = np.asarray(state.cluster.neighbours)
    assert neighbours.shape == (256, 5) and neighbours.min() >= 0
    assert not np.any(neighbours == np.arange(256)[:, None])  # never itself
    assert int(state.cluster.iteration) == 24


def test_resume_restores_weights_and_neighbours(reference_run, tmp_path):
    ref_dir, _ = reference_run
    assert_resume_matches(ref_dir, str(tmp_path / "resumed"), 12, tiny_config())


def test_resume_restores_every_head(tmp_path):
    """Two heads: their weights, running losses and batch statistics resume exactly."""
    config = tiny_config(**{"nmm.num_heads": 2, "optim.epochs": 2})
    ref_dir = str(tmp_path / "ref")
    train.train_and_evaluate(config, ref_dir)
    state = assert_resume_matches(ref_dir, str(tmp_path / "resumed"), 8, config)
    assert state.cluster.head_losses.shape == (2,) and state.cluster.log_weights.shape == (2, 10)


def test_backbone_neighbours_are_re_mined_every_epoch(tmp_path):
    config = tiny_config(**{"nmm.neighbour_space": "backbone", "nmm.remine_epochs": 1,
                            "optim.epochs": 2})
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = {r["step"]: r for r in map(json.loads, f)}
    assert records[0]["neighbours_changed"] == 1.0  # first mining: every list is new
    assert 0.0 < records[8]["neighbours_changed"] < 1.0  # re-mined after one epoch of training
    assert "neighbours_changed" not in records[16]  # the end: evaluation only


SHARDED_STEPS = """
import numpy as np
from jclust import loader
from jclust import methods
from jclust import schedule as jschedule
from jclust import state as jstate
from tests.conftest import one_step_each_side
from tests.test_nmm import tiny_config

def first_step(sides):
    config = tiny_config(**{"nmm.num_heads": 2})
    dataset = loader.load_dataset(config)
    method = methods.from_config(config, loader.data_spec_of(dataset))
    state = jstate.init_state(method, 0, dataset.inputs[:32])
    table = np.random.default_rng(0).integers(0, 256, size=(256, 5))
    idx = np.arange(32, dtype=np.int32)
    nbr = jschedule.draw_neighbours(table, idx, 0, 1)
    batch = {"x": dataset.inputs[idx], "index": idx, "neighbour_x": dataset.inputs[nbr],
             "neighbour_index": nbr}
    return one_step_each_side(method, state, batch, dataset.num_examples, sides,
                              lambda s: s.cluster.neighbours)
"""


def test_eight_devices_take_the_same_step_as_one(tmp_path):
    """The batch split over 8 devices: batch-normalised densities, E-step, consistency terms and
    the estimated weights give one device's step up to float32 rounding
    (conftest.assert_sharded_steps_match)."""
    assert_sharded_steps_match(SHARDED_STEPS, tmp_path)


@pytest.mark.slow
def test_eight_devices_end_to_end(tmp_path):
    """A whole run on 8 devices: identical neighbours (mined on the host-side inputs) and the
    same state as on 1 device, in float64 (conftest.X64_TOLERANCE)."""
    assert_eight_devices_match_one(TINY, "configs/nmm.py:digits", tmp_path,
                                   sharded=("neighbours",))


def _head_slice(tree, j, k):
    """Head j's columns of a MixtureHead's parameters or batch statistics (the last axis)."""
    return jax.tree.map(lambda a: a[..., j * k:(j + 1) * k], tree)


def test_heads_are_independent_mixtures_and_the_loss_is_their_mean():
    """Three heads on one backbone: each head's loss is the one-head loss of its own columns, the
    step minimises their mean and reports the selected head's terms."""
    k = 10
    config3, three = _method(**{"nmm.num_heads": 3})
    config1, one = _method(**{"nmm.num_heads": 1})
    x = np.random.default_rng(0).integers(0, 256, size=(16, 8, 8, 1), dtype=np.uint8)
    nbr = np.random.default_rng(1).integers(0, 256, size=(16, 8, 8, 1), dtype=np.uint8)
    batch = jax.tree.map(jnp.asarray, {"x": x, "neighbour_x": nbr})
    params, model_state, cluster = three.init(jax.random.PRNGKey(0), jnp.asarray(x))
    assert cluster.log_weights.shape == (3, k) and cluster.head_losses.shape == (3,)
    cluster = cluster._replace(head_losses=jnp.array([0.3, -2.0, 0.1]))  # head 1 selected
    rng = jax.random.PRNGKey(5)
    loss3, (_, metrics3, outputs3) = three.phases[0].loss_fn(params, model_state, cluster, batch,
                                                             rng)
    per_head = []
    for j in range(3):
        params1 = {"backbone": params["backbone"], "head": _head_slice(params["head"], j, k)}
        state1 = {"backbone": model_state["backbone"],
                  "head": _head_slice(model_state["head"], j, k)}
        cluster1 = one.init(jax.random.PRNGKey(0), jnp.asarray(x))[2]._replace(
            log_weights=cluster.log_weights[j:j + 1])
        loss1, (_, metrics1, _) = one.phases[0].loss_fn(params1, state1, cluster1, batch, rng)
        per_head.append(float(loss1))
        if j == 1:
            for name, value in metrics1.items():
                np.testing.assert_allclose(float(metrics3[name]), float(value), rtol=1e-5,
                                           err_msg=name)
    np.testing.assert_allclose(np.asarray(outputs3["head_losses"]), per_head, rtol=1e-5)
    np.testing.assert_allclose(float(loss3), np.mean(per_head), rtol=1e-5)
    assert int(metrics3["selected_head"]) == 1
    assert len(set(np.round(per_head, 4))) == 3  # differently initialised heads


def test_running_head_losses_pick_the_assigning_head():
    k = 10
    config, method = _method(**{"nmm.num_heads": 3, "nmm.head_loss_momentum": 0.9})
    params, _, cluster = method.init(jax.random.PRNGKey(0), jnp.zeros((4, 8, 8, 1), jnp.uint8))
    update = method.phases[0].cluster_update
    outputs = {"mass": jnp.full((3, k), 0.1), "head_losses": jnp.array([1.0, 2.0, 3.0])}
    cluster, _ = update(cluster, None, outputs, None)  # the first step's losses start the averages
    np.testing.assert_allclose(cluster.head_losses, [1.0, 2.0, 3.0], rtol=1e-6)
    outputs = {"mass": jnp.full((3, k), 0.1), "head_losses": jnp.array([5.0, 2.0, 1.0])}
    cluster, _ = update(cluster, None, outputs, None)
    np.testing.assert_allclose(cluster.head_losses, [1.4, 2.0, 2.8], rtol=1e-6)
    assert int(cluster.selected_head) == 0
    # The assignment reads the selected head's columns only.
    logits = np.full((2, 3 * k), -3.0, np.float32)
    logits[:, 2 * k + 5] = 4.0  # head 2 says cluster 5 ...
    logits[0, 0 * k + 3] = 2.0  # ... head 0: clusters 3 and 7
    logits[1, 0 * k + 7] = 2.0
    feats = jnp.concatenate([jnp.asarray(logits), jnp.ones((2, 32))], axis=1)
    labels, _ = method.assign(params, cluster, feats)
    np.testing.assert_array_equal(labels, [3, 7])
    labels, _ = method.assign(params, cluster._replace(head_losses=jnp.array([3.0, 2.0, 1.0])),
                              feats)
    np.testing.assert_array_equal(labels, [5, 5])


def test_init_params_parts_start_nmm_from_another_methods_backbone(tmp_path):
    """config.init_params_parts=backbone: an NMM run starts from a SwAV run's exported backbone
    (exactly, at a zero learning rate) under its own fresh mixture head (as a run without
    init_params has it); a part the model or the file lacks (every part, by default) or of
    another shape is refused before anything is written."""
    from jclust import inference
    from jclust import workdir as jworkdir
    from tests import test_swav
    swav_config = test_swav.tiny_config(**{"model.global_pool": True})
    swav = methods.from_config(swav_config, methods.DataSpec(256, (8, 8, 1), True))
    swav_params = jstate.init_state(swav, 7, np.zeros((4, 8, 8, 1), np.uint8)).params
    path = str(tmp_path / "params_swav.msgpack")
    jworkdir.export_params(path, swav_params)
    same = {"model.global_pool": True, "optim.learning_rate": 0.0, "optim.epochs": 1,
            "eval_every_steps": -1}
    train.train_and_evaluate(tiny_config(init_params=path, init_params_parts="backbone", **same),
                             str(tmp_path / "from_swav"))
    train.train_and_evaluate(tiny_config(**same), str(tmp_path / "fresh"))
    from_swav = inference.load_run(str(tmp_path / "from_swav"))[2].params
    fresh = inference.load_run(str(tmp_path / "fresh"))[2].params
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(from_swav["backbone"]),
                 jax.device_get(swav_params["backbone"]))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(from_swav["head"]),
                 jax.device_get(fresh["head"]))
    assert not np.array_equal(np.asarray(fresh["backbone"]["convs_0"]["kernel"]),
                              np.asarray(swav_params["backbone"]["convs_0"]["kernel"]))
    for parts, pool, match in (("prototypes", True, "no part 'prototypes' in this model"),
                               ("", True, "no part 'head' in the file"),
                               ("backbone", False, r"\['backbone'\]\['fc'\]\['kernel'\] has shape")):
        workdir = tmp_path / f"bad_{parts or 'all'}_{pool}"
        with pytest.raises(ConfigError, match=match):
            train.train_and_evaluate(tiny_config(init_params=path, init_params_parts=parts,
                                                 **{**same, "model.global_pool": pool}),
                                     str(workdir))
        assert not workdir.exists()
