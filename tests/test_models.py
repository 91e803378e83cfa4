"""Tests for jclust.models: im2col conv, SmallCNN, MLPAutoencoder, factory."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import x64_mode
from jclust.models import (
    Conv3x3,
    MLPAutoencoder,
    SmallCNN,
    conv3x3,
    conv_valid,
    drawn_as_matrix,
    flatten_inputs,
    get_model,
    max_pool_2x2,
    resolve_impl,
)

TOL = dict(rtol=1e-5, atol=1e-5)

# Op-by-op (eager) JAX compiles every primitive separately and is slow on CPU,
# so inputs come from numpy and the computations under test are jitted.
_rng = np.random.default_rng(0)


def _normal(*shape) -> np.ndarray:
    return _rng.standard_normal(shape).astype(np.float32)


def _numpy_params(model, x):
    """Random variables shaped like ``model.init``'s, without compiling an init.

    XLA:CPU takes ~0.5 s to compile each jax.random call, so a real init of a
    network costs seconds of test time.
    """
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    return jax.tree_util.tree_map(
        lambda s: _normal(*s.shape) / np.sqrt(np.prod(s.shape[:-1]) or 1), shapes
    )


def _param_count(tree) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(tree))


# ---------------------------------------------------------------- conv3x3


@functools.partial(jax.jit, static_argnames="conv")
def _native_and_im2col(x, kernel, bias, g, *, conv):
    """(output, dx, dkernel, dbias) of ``conv`` with impl "native", then with "im2col"."""

    def both(impl):
        out, vjp = jax.vjp(lambda *a: conv(*a, impl=impl), x, kernel, bias)
        return (out, *vjp(g))

    return both("native"), both("im2col")


# Native and im2col sum the same products in a different order (and XLA:CPU's order depends on
# the CPU), so they are compared in two ways, each array against its own scale max|native|:
#  * float64 (the claim: same function): max|im2col - native| / max|native| measured <= 1.4e-15
#    (100 draws of every case below, output and the three gradients; AMD EPYC Zen 3, 2026-12-03);
#    held to 1e-13, 70x that. A float32 rounding anywhere on one path (~1e-7) fails it.
#  * float32 (what training runs): max|im2col - native| measured <= 6.8 eps32 * max|native| on the
#    same draws (sum orders differ, ~sqrt(fan-in) eps32); held to 64 eps32 (7.6e-6 relative),
#    9x that. A fixed atol of 1e-5 was not scaled: the kernel gradient reaches ~40, and one draw in
#    100 already failed it on this CPU.
F64_REL_TOL = 1e-13
F32_REL_TOL = 64 * np.finfo(np.float32).eps


def _assert_im2col_matches_native(conv, x, kernel, bias, g, out_shape):
    """im2col against native, in float64 (x64 mode) and in float32: each compared array within
    its dtype's relative tolerance times max|native| of that array."""
    args = (x, kernel, bias, g)
    with x64_mode():
        runs64 = jax.device_get(
            _native_and_im2col(*(np.asarray(a, np.float64) for a in args), conv=conv))
    runs32 = jax.device_get(
        _native_and_im2col(*(np.asarray(a, np.float32) for a in args), conv=conv))
    for (native, im2col), dtype, rel_tol in ((runs64, np.float64, F64_REL_TOL),
                                             (runs32, np.float32, F32_REL_TOL)):
        assert im2col[0].shape == out_shape
        for name, n, i in zip(("out", "dx", "dkernel", "dbias"), native, im2col):
            assert n.dtype == i.dtype == dtype, (name, n.dtype, i.dtype)
            np.testing.assert_allclose(i, n, rtol=0, atol=rel_tol * np.abs(n).max(),
                                       err_msg=f"{name} ({dtype.__name__})")


@pytest.mark.parametrize(
    "seed, shape, cout",
    [
        (0, (3, 5, 7, 1), 4),  # Cin=1, odd H/W, batch 3
        (1, (2, 8, 8, 3), 5),
        (2, (3, 9, 6, 16), 8),
        (3, (1, 1, 2, 2), 3),  # map smaller than the kernel
    ],
)
def test_conv3x3_im2col_matches_native_values_and_grads(seed, shape, cout):
    rng = np.random.default_rng(seed)  # inputs do not depend on which tests ran before
    x = rng.standard_normal(shape)
    kernel = rng.standard_normal((3, 3, shape[-1], cout)) / 3.0
    bias = rng.standard_normal(cout)
    g = rng.standard_normal(shape[:3] + (cout,))
    _assert_im2col_matches_native(conv3x3, x, kernel, bias, g, shape[:3] + (cout,))


def test_conv3x3_jit_and_no_bias():
    x = _normal(2, 6, 5, 3)
    kernel = _normal(3, 3, 3, 4)
    f = jax.jit(conv3x3, static_argnames="impl")
    np.testing.assert_allclose(
        f(x, kernel, None, impl="im2col"), f(x, kernel, None, impl="native"), **TOL
    )


def test_conv3x3_rejects_bad_shapes():
    with pytest.raises(ValueError):
        conv3x3(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 3, 4)))
    with pytest.raises(ValueError):
        conv3x3(jnp.zeros((1, 4, 4, 3)), jnp.zeros((5, 5, 3, 4)))


@pytest.mark.parametrize("seed, shape, size, cout", [(4, (3, 9, 7, 1), 5, 4),
                                                     (5, (2, 12, 12, 6), 5, 3),
                                                     (6, (2, 5, 5, 2), 5, 2),
                                                     (7, (1, 6, 4, 3), 1, 2)])
def test_conv_valid_im2col_matches_native_values_and_grads(seed, shape, size, cout):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    kernel = rng.standard_normal((size, size, shape[-1], cout)) / size
    bias = rng.standard_normal(cout)
    out_shape = (shape[0], shape[1] - size + 1, shape[2] - size + 1, cout)
    g = rng.standard_normal(out_shape)
    _assert_im2col_matches_native(conv_valid, x, kernel, bias, g, out_shape)


def test_conv_valid_rejects_bad_shapes():
    with pytest.raises(ValueError, match="kernel"):
        conv_valid(jnp.zeros((1, 6, 6, 2)), jnp.zeros((3, 5, 2, 4)))
    with pytest.raises(ValueError, match="NHWC"):
        conv_valid(jnp.zeros((1, 6, 6, 3)), jnp.zeros((5, 5, 2, 4)))
    with pytest.raises(ValueError, match="does not fit"):
        conv_valid(jnp.zeros((1, 4, 6, 2)), jnp.zeros((5, 5, 2, 4)), impl="im2col")


def test_resolve_impl():
    assert resolve_impl("native") == "native"
    assert resolve_impl("im2col") == "im2col"
    expected = "im2col" if jax.default_backend() == "cpu" else "native"
    assert resolve_impl("auto") == expected
    with pytest.raises(ValueError, match="impl"):
        resolve_impl("winograd")


def test_conv_module_params_interchangeable_with_nn_conv():
    x = _normal(2, 7, 5, 3)
    ref = nn.Conv(6, (3, 3), padding="SAME")
    impls = ("auto", "native", "im2col")
    mods = [Conv3x3(6, impl=impl) for impl in impls]

    @jax.jit
    def run(key, x):
        ref_vars = ref.init(key, x)
        # Each impl is applied to nn.Conv's own variables.
        outs = [m.apply(ref_vars, x) for m in mods]
        return ref_vars, ref.apply(ref_vars, x), outs

    ref_vars, ref_out, outs = run(jax.random.key(4), x)
    # Same default initialisers and the same key give the same parameters: each init compiled
    # alone. (Drawn within another program, the same draw may be lowered in another fusion and
    # differ in the last bit: at the suite's LLVM -O0, conftest.TEST_XLA_FLAGS, it does.)
    inits = [jax.jit(module.init)(jax.random.key(4), x) for module in (ref, mods[0])]
    chex.assert_trees_all_equal(inits[1], inits[0])
    for m, out in zip(mods, outs):
        shapes = jax.eval_shape(m.init, jax.random.key(0), x)
        assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(ref_vars)
        assert shapes["params"]["kernel"].shape == (3, 3, 3, 6)
        assert shapes["params"]["bias"].shape == (6,)
        np.testing.assert_allclose(out, ref_out, **TOL)


def test_kernels_drawn_as_a_matrix_equal_kernels_drawn_in_their_shape():
    """drawn_as_matrix only reshapes: the same numbers for fan-in and fan-free initialisers (the
    4-D draws here cost XLA:CPU ~1 s each to compile; drawn as a matrix, ~0.1 s)."""
    shape = (2, 2, 2, 3)
    for init in (nn.initializers.lecun_normal(), nn.initializers.he_normal(),
                 nn.initializers.normal(0.01)):
        direct = jax.jit(lambda key: init(key, shape))(jax.random.key(5))
        as_matrix = jax.jit(lambda key: drawn_as_matrix(init)(key, shape))(jax.random.key(5))
        assert as_matrix.shape == shape and float(jnp.std(as_matrix)) > 0
        np.testing.assert_array_equal(as_matrix, direct)


def test_conv_module_without_bias():
    x = jnp.ones((1, 4, 4, 2))
    vars_ = jax.eval_shape(Conv3x3(3, use_bias=False).init, jax.random.key(0), x)
    assert set(vars_["params"]) == {"kernel"}


# ---------------------------------------------------------------- max-pool


@pytest.mark.parametrize("shape", [(2, 8, 6, 3), (3, 7, 9, 2)])
def test_max_pool_2x2_matches_nn_max_pool_with_ties(shape):
    # Rounded values make ties in pooling windows frequent; gradients must
    # still go to the same (first) maximum as nn.max_pool's.
    x = np.round(_normal(*shape))
    x[0] = 0.0  # whole windows of equal values
    g = _normal(shape[0], shape[1] // 2, shape[2] // 2, shape[3])
    t = _normal(*shape)
    ref = lambda v: nn.max_pool(v, (2, 2), strides=(2, 2))

    @jax.jit
    def run(x, g, t):
        def all_of(f):
            y, vjp = jax.vjp(f, x)
            return y, vjp(g)[0], jax.jvp(f, (x,), (t,))[1]

        return all_of(max_pool_2x2), all_of(ref)

    for a, b in zip(*run(x, g, t)):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- SmallCNN


def test_small_cnn_param_count_and_shapes():
    x = jnp.zeros((2, 28, 28, 1))
    model = SmallCNN(num_outputs=10)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert _param_count(variables) == 896_906
    assert jax.eval_shape(model.apply, variables, x).shape == (2, 10)
    feats = jax.eval_shape(
        lambda v, x: model.apply(v, x, method=SmallCNN.features), variables, x
    )
    assert feats.shape == (2, 128)
    headless = SmallCNN()
    v2 = jax.eval_shape(headless.init, jax.random.key(0), x)
    assert _param_count(v2) == 896_906 - (128 * 10 + 10)
    assert jax.eval_shape(headless.apply, v2, x).shape == (2, 128)


def test_small_cnn_im2col_matches_native_logits_and_grads():
    x = _rng.uniform(size=(3, 28, 28, 1)).astype(np.float32)
    labels = np.array([0, 3, 7])
    native = SmallCNN(conv_impl="native", num_outputs=10)
    im2col = SmallCNN(conv_impl="im2col", num_outputs=10)
    params = _numpy_params(native, x)

    @jax.jit
    def run(p, x, labels):
        def loss(p, model):
            logits = model.apply(p, x)
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(3), labels]), logits

        grad = jax.value_and_grad(loss, has_aux=True)
        return grad(p, native), grad(p, im2col)

    ((l_n, logits_n), g_n), ((l_i, logits_i), g_i) = run(params, x, labels)
    np.testing.assert_allclose(logits_i, logits_n, **TOL)
    np.testing.assert_allclose(l_i, l_n, **TOL)
    assert jax.tree_util.tree_structure(g_i) == jax.tree_util.tree_structure(g_n)
    for a, b in zip(jax.tree_util.tree_leaves(g_i), jax.tree_util.tree_leaves(g_n)):
        np.testing.assert_allclose(a, b, **TOL)


def test_small_cnn_uint8_input_is_scaled():
    x8 = _rng.integers(0, 256, size=(2, 12, 10, 3), dtype=np.uint8)
    model = SmallCNN(widths=(4, 8), dense=16)
    variables = _numpy_params(model, x8)
    apply = jax.jit(model.apply)
    np.testing.assert_allclose(
        apply(variables, x8), apply(variables, x8.astype(np.float32) / 255.0), **TOL
    )


def test_small_cnn_bad_impl():
    with pytest.raises(ValueError, match="impl"):
        SmallCNN(conv_impl="fft").init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))


# ---------------------------------------------------------------- autoencoder


def test_autoencoder_shapes_methods_and_init():
    model = MLPAutoencoder(output_dim=24, hidden=(32, 16), embed_dim=4)
    x = _normal(5, 24)

    @jax.jit
    def run(key, x):
        variables = model.init(key, x)
        z, x_rec = model.apply(variables, x)
        z2 = model.apply(variables, x, method=MLPAutoencoder.encode)
        x_rec2 = model.apply(variables, z2, method=MLPAutoencoder.decode)
        return variables, (z, x_rec, z2, x_rec2)

    variables, (z, x_rec, z2, x_rec2) = run(jax.random.key(1), x)
    assert z.shape == (5, 4) and x_rec.shape == (5, 24)
    np.testing.assert_array_equal(z2, z)
    np.testing.assert_array_equal(x_rec2, x_rec)

    names = ["encoder_0", "encoder_1", "embed", "decoder_0", "decoder_1", "reconstruct"]
    params = variables["params"]
    assert sorted(params) == sorted(names)
    kernels = [np.asarray(params[n]["kernel"]) for n in names]
    assert [k.shape for k in kernels] == [(24, 32), (32, 16), (16, 4), (4, 16), (16, 32), (32, 24)]
    # variance_scaling(1/3, "fan_in", "uniform") is U(-limit, limit) with
    # limit = sqrt(3 * (1/3) / fan_in) = sqrt(1 / fan_in).
    u = np.concatenate([(k / np.sqrt(1.0 / k.shape[0])).ravel() for k in kernels])
    assert np.abs(u).max() <= 1.0 + 1e-6
    assert np.abs(u).max() > 0.99
    np.testing.assert_allclose(u.std(), 1.0 / np.sqrt(3.0), rtol=0.05)
    assert abs(u.mean()) < 0.05
    for n in names:
        assert not np.any(np.asarray(params[n]["bias"]))


def test_autoencoder_default_architecture():
    model = MLPAutoencoder(output_dim=784)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 784)))
    dims = [784, 500, 500, 2000, 10, 2000, 500, 500, 784]
    names = ["encoder_0", "encoder_1", "encoder_2", "embed"]
    names += ["decoder_0", "decoder_1", "decoder_2", "reconstruct"]
    params = shapes["params"]
    assert [params[n]["kernel"].shape for n in names] == list(zip(dims[:-1], dims[1:]))
    assert _param_count(shapes) == sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))


def test_flatten_inputs():
    x8 = np.arange(2 * 4 * 3 * 2, dtype=np.uint8).reshape(2, 4, 3, 2)
    out = flatten_inputs(x8)
    assert out.dtype == jnp.float32 and out.shape == (2, 24)
    np.testing.assert_allclose(out, x8.reshape(2, 24) / 255.0, rtol=1e-6)
    xf = np.linspace(-2, 2, 2 * 4 * 3 * 2, dtype=np.float32).reshape(2, 4, 3, 2)
    out_f = flatten_inputs(xf)
    assert out_f.dtype == jnp.float32
    np.testing.assert_array_equal(out_f, xf.reshape(2, 24))  # no rescaling


# ---------------------------------------------------------------- factory


def test_get_model():
    assert isinstance(get_model("small_cnn", num_outputs=10), SmallCNN)
    ae = get_model("mlp_autoencoder", output_dim=784, embed_dim=5)
    assert isinstance(ae, MLPAutoencoder) and ae.embed_dim == 5
    with pytest.raises(ValueError, match="mlp_autoencoder.*small_cnn"):
        get_model("resnet")


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
def test_cpu_fast_convolution_switches_off_on_accelerators(monkeypatch, backend):
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    assert resolve_impl("auto") == "native"
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert resolve_impl("auto") == "im2col"
