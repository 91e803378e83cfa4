"""Backbones behind one interface: ResNet-18 (CIFAR stem, BatchNorm state) and the Sobel filter."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.ndimage

from jclust import config_lib, methods, models
from jclust import state as jstate
from jclust.methods import ReclusterContext


def _resnet_config(widths=(8, 8, 16, 16)):
    c = ml_collections.ConfigDict({"name": "resnet18", "stage_widths": widths})
    return c


def test_resnet18_shapes_and_batch_statistics():
    backbone = models.make_backbone(_resnet_config())
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    params, state = backbone.init(jax.random.PRNGKey(0), x)
    assert backbone.feature_dim == 16
    feats, same = backbone.apply(params, state, x, train=False)
    assert feats.shape == (4, 16)
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(state)):
        np.testing.assert_array_equal(a, b)
    _, updated = backbone.apply(params, state, x, train=True)
    # Running means move towards the batch means (momentum 0.9 from zero init).
    moved = [float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(updated),
                                                          jax.tree.leaves(state))]
    assert max(moved) > 1e-3
    # Stride-2 stages: 32 -> 32 -> 16 -> 8 -> 4 before the global average.
    n_params = sum(p.size for p in jax.tree.leaves(params))
    assert n_params > 10_000


def test_full_resnet18_has_the_usual_size():
    backbone = models.make_backbone(_resnet_config((64, 128, 256, 512)))
    shapes = jax.eval_shape(lambda: backbone.init(jax.random.PRNGKey(0),
                                                  jnp.zeros((1, 32, 32, 3), jnp.uint8)))
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes[0]))
    assert 11_100_000 < n_params < 11_200_000  # ResNet-18, CIFAR stem, no classifier: 11.17 M


def test_jule_cnn_is_the_reference_mnist_network():
    """[conv5x5-50, BN, ReLU, pool] -> [conv5x5-50, BN, ReLU] -> flatten: 28 -> 24 -> 12 -> 8,
    so 8 * 8 * 50 = 3,200 features, with BatchNorm statistics in the model state."""
    cfg = config_lib.jule_cnn_model()
    backbone = models.make_backbone(cfg, (28, 28, 1))
    assert backbone.feature_dim == 3200
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8))
    params, state = backbone.init(jax.random.PRNGKey(0), x)
    shapes = {k: jax.tree.map(jnp.shape, v) for k, v in params.items()}
    assert shapes["ConvValid_0"]["kernel"] == (5, 5, 1, 50)
    assert shapes["ConvValid_1"]["kernel"] == (5, 5, 50, 50)
    assert set(state["batch_stats"]) == {"BatchNorm_0", "BatchNorm_1"}
    feats, _ = backbone.apply(params, state, x, train=False)
    trained, updated = backbone.apply(params, state, x, train=True)
    assert feats.shape == trained.shape == (4, 3200)
    assert float(jnp.min(trained)) >= 0.0  # ReLU last
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(updated),
                                                        jax.tree.leaves(state)))
    # The same network from flax's own layers gives the same features.
    ref = _flax_jule_cnn(params, state, x)
    np.testing.assert_allclose(feats, ref, rtol=1e-4, atol=1e-5)


def _flax_jule_cnn(params, state, x):
    """JuleCNN's eval-mode forward pass written with nn.Conv / nn.BatchNorm / nn.max_pool."""
    h = x.astype(jnp.float32) / 255.0
    for i in range(2):
        conv = nn.Conv(50, (5, 5), padding="VALID")
        h = conv.apply({"params": params[f"ConvValid_{i}"]}, h)
        bn = nn.BatchNorm(use_running_average=True, epsilon=1e-5)
        h = nn.relu(bn.apply({"params": params[f"BatchNorm_{i}"],
                              "batch_stats": state["batch_stats"][f"BatchNorm_{i}"]}, h))
        if i == 0:
            h = nn.max_pool(h, (2, 2), strides=(2, 2))
    return h.reshape(h.shape[0], -1)


def test_jule_cnn_needs_an_input_shape_that_fits():
    cfg = config_lib.jule_cnn_model()
    with pytest.raises(ValueError, match="input shape"):
        models.make_backbone(cfg)
    with pytest.raises(ValueError, match="too small"):
        models.make_backbone(cfg, (8, 8, 1))


def test_sobel_matches_scipy():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, 7, 9, 3), dtype=np.uint8)
    out = np.asarray(models.sobel_filter(jnp.asarray(images)))
    gray = images.astype(np.float64).mean(-1) / 255.0
    kernel = np.array(models.backbones.SOBEL_X)
    for b in range(2):
        gx = scipy.ndimage.correlate(gray[b], kernel, mode="constant")
        gy = scipy.ndimage.correlate(gray[b], kernel.T, mode="constant")
        np.testing.assert_allclose(out[b, ..., 0], gx, atol=1e-5)
        np.testing.assert_allclose(out[b, ..., 1], gy, atol=1e-5)


def test_unknown_backbone_lists_the_valid_names():
    with pytest.raises(ValueError, match="jule_cnn, resnet18, small_cnn"):
        models.make_backbone(ml_collections.ConfigDict({"name": "vgg"}))


@pytest.mark.parametrize("config_file", ["deepcluster.py", "deepclusterv2.py", "odc.py", "swav.py"])
def test_cifar10_configs_run_a_jitted_step_with_resnet18(config_file):
    """The :cifar10 variants (ResNet-18, BatchNorm state, Sobel for DeepCluster) on fake 32x32
    colour images, one recluster and one jitted train step; the network shrunk to two stages of
    width 8 (its compilation is most of this test's time; the full ResNet-18 is
    test_resnet18_shapes_and_batch_statistics's)."""
    config = config_lib.load_config(f"configs/{config_file}:cifar10")
    small = {"model.stage_widths": (8, 8), "batch_size": 8}
    section = {"deepcluster.py": "deepcluster", "deepclusterv2.py": "deepclusterv2",
               "odc.py": "odc", "swav.py": "swav"}[config_file]
    small.update({"deepcluster.py": {"deepcluster.train_clusters": 4, "deepcluster.pca_dim": 4},
                  "deepclusterv2.py": {"deepclusterv2.prototypes": (4, 4, 4),
                                       "deepclusterv2.projection_hidden": 16,
                                       "deepclusterv2.feature_dim": 8,
                                       "deepclusterv2.eval_pca_dim": 4},
                  "odc.py": {"odc.train_clusters": 4, "odc.min_cluster_size": 2,
                             "odc.feature_dim": 8, "odc.neck_hidden": 16, "odc.eval_pca_dim": 4},
                  "swav.py": {"swav.prototypes": 4, "swav.projection_hidden": 16,
                              "swav.feature_dim": 8, "swav.num_small_crops": 2,
                              "swav.eval_pca_dim": 4}}[config_file])
    small["num_clusters"] = 3
    config = config_lib.apply_overrides(config, small)
    assert config.model.name == "resnet18" and config.data.image_shape == (32, 32, 3)
    if section == "deepcluster":
        assert config.deepcluster.sobel
    n = 16
    x = np.random.default_rng(2).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    method = methods.from_config(config, methods.DataSpec(n, (32, 32, 3), True))
    state = jstate.init_state(method, 0, x[:2])
    assert "batch_stats" in state.model_state["backbone"]
    feats = jax.jit(method.embed)(state.params, state.model_state, jnp.asarray(x))
    if method.recluster is not None:  # SwAV has nothing to recluster
        context = ReclusterContext(feats, jax.random.PRNGKey(3))
        params, cluster, _ = method.recluster(state.params, state.cluster, context)
        state = state.replace(params=params, cluster=cluster)
    before = jax.device_get(state.model_state)
    batch = {"x": jnp.asarray(x[:8]), "index": jnp.arange(8, dtype=jnp.int32)}
    new_state, metrics = jax.jit(jstate.make_train_step(method, 0))(state, batch)
    assert np.isfinite(float(metrics["loss"]))
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new_state.model_state),
                                                        jax.tree.leaves(before))]
    assert any(changed)  # BatchNorm running statistics advanced


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_bfloat16_compute_keeps_parameters_and_features_float32(name):
    """Mixed precision: the backbone computes in bf16; parameters, BatchNorm statistics,
    features and gradients stay float32, and the features stay close to the float32 ones."""
    if name == "small_cnn":
        cfg = config_lib.small_cnn_model()
        cfg.widths, cfg.dense = (8, 16), 32
        x = np.random.default_rng(0).integers(0, 256, (6, 28, 28, 1), dtype=np.uint8)
    else:
        cfg = _resnet_config()
        x = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    full = models.make_backbone(cfg)
    cfg.compute_dtype = "bfloat16"
    mixed = models.make_backbone(cfg)
    params, state = full.init(jax.random.PRNGKey(0), jnp.asarray(x))
    params_mixed, state_mixed = mixed.init(jax.random.PRNGKey(0), jnp.asarray(x))
    for a, b in zip(jax.tree.leaves((params, state)), jax.tree.leaves((params_mixed, state_mixed))):
        assert b.dtype == jnp.float32 and a.shape == b.shape
    # Jitted: ResNet-18's ops one by one compile one at a time, slower than the whole.
    full_apply = jax.jit(full.apply, static_argnums=3)
    mixed_apply = jax.jit(mixed.apply, static_argnums=3)
    ref, _ = full_apply(params, state, jnp.asarray(x), False)
    got, new_state = mixed_apply(params, state, jnp.asarray(x), True)
    got_eval, _ = mixed_apply(params, state, jnp.asarray(x), False)
    assert got.dtype == jnp.float32 and got_eval.dtype == jnp.float32
    assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(new_state))
    # bf16 keeps 8 significant bits: agreement to a few per cent of the feature scale.
    scale = float(jnp.max(jnp.abs(ref)))
    assert float(jnp.max(jnp.abs(got_eval - ref))) < 0.05 * scale
    assert float(jnp.max(jnp.abs(got_eval - ref))) > 0  # it really computed in bf16
    grads = jax.jit(jax.grad(lambda p: jnp.sum(mixed.apply(p, state, jnp.asarray(x), True)[0] ** 2)))(params)
    assert all(g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g)))
               for g in jax.tree.leaves(grads))


def test_unknown_compute_dtype_is_a_config_error():
    config = config_lib.load_config("configs/swav.py:digits")
    with pytest.raises(config_lib.ConfigError, match="compute_dtype='float16'"):
        config_lib.validate(config_lib.apply_overrides(config, {"model.compute_dtype": "float16"}),
                            methods.REGISTRY)


def test_jule_default_config_runs_the_reference_net_in_a_jitted_step():
    """configs/jule.py (the reference's MNIST network by default) on fake 28x28 images,
    shrunk: the first over-clustering and one jitted triplet step that advances BatchNorm."""
    config = config_lib.apply_overrides(
        config_lib.load_config("configs/jule.py"),
        {"model.widths": (4, 6), "jule.embed_dim": 8, "jule.neighbours": 3, "batch_size": 16,
         "num_clusters": 3})
    assert config.model.name == "jule_cnn" and config.model.kernel_size == 5
    assert config.jule.evaluation == "spectral"
    assert config_lib.load_config("configs/jule.py:small_cnn").model.name == "small_cnn"
    n = 32
    # Pairs of near-identical images, so that the 1-NN over-clustering has clusters of two.
    base = np.random.default_rng(2).integers(0, 250, (n // 2, 28, 28, 1), dtype=np.uint8)
    x = np.concatenate([base, base + 1]).astype(np.uint8)
    method = methods.from_config(config, methods.DataSpec(n, (28, 28, 1), True))
    state = jstate.init_state(method, 0, x[:2])
    assert state.params["head"]["kernel"].shape == (6 * 8 * 8, 8)
    feats = method.embed(state.params, state.model_state, jnp.asarray(x))
    context = ReclusterContext(feats, jax.random.PRNGKey(3))
    params, cluster, _ = method.recluster(state.params, state.cluster, context)
    state = state.replace(params=params, cluster=cluster)
    before = jax.device_get(state.model_state)
    batch = {"x": jnp.asarray(x[:16]), "index": jnp.arange(16, dtype=jnp.int32)}
    new_state, metrics = jax.jit(jstate.make_train_step(method, 0))(state, batch)
    assert np.isfinite(float(metrics["loss"]))
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new_state.model_state),
                                                        jax.tree.leaves(before)))


def test_small_cnn_can_end_before_its_relu():
    """output_relu=False returns the dense layer before the ReLU (same parameters: the ReLU of it
    is the default network's representation), and a head on it applies the ReLU."""
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1)), jnp.uint8)
    with_relu = models.SmallCNN(widths=(4, 8), dense=16)
    before = models.SmallCNN(widths=(4, 8), dense=16, output_relu=False)
    params = with_relu.init(jax.random.PRNGKey(0), x, method=with_relu.features)
    pre = before.apply(params, x, method=before.features)
    assert float(jnp.min(pre)) < 0
    np.testing.assert_array_equal(jax.nn.relu(pre),
                                  with_relu.apply(params, x, method=with_relu.features))
    headed, headed_pre = (models.SmallCNN(widths=(4, 8), dense=16, num_outputs=3, output_relu=r)
                          for r in (True, False))
    head_params = headed.init(jax.random.PRNGKey(1), x)
    np.testing.assert_array_equal(headed.apply(head_params, x), headed_pre.apply(head_params, x))
    config = config_lib.small_cnn_model()
    config.widths, config.dense, config.output_relu = (4, 8), 16, False
    backbone = models.make_backbone(config)
    p, s = backbone.init(jax.random.PRNGKey(0), x)
    np.testing.assert_array_equal(backbone.apply(p, s, x, False)[0],
                                  before.apply({"params": p}, x, method=before.features))

