"""jclust.precision: float32 by default, float64 throughout in JAX's x64 mode (the tests' control
for device-count equivalence), and no state leaf that changes dtype during a run."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jclust import loader, methods, precision
from jclust import state as jstate
from tests.conftest import tiny_config, x64_mode


def test_float_dtype_follows_the_x64_mode_and_cast_floats_only_touches_floats():
    assert precision.float_dtype() == np.float32
    tree = {"w": np.ones(2, np.float32), "n": np.arange(3), "h": jnp.ones(2, jnp.bfloat16)}
    assert precision.cast_floats(tree)["w"] is tree["w"]  # identity in float32 mode
    with x64_mode():
        assert precision.float_dtype() == np.float64
        cast = precision.cast_floats(tree)
        assert cast["w"].dtype == np.float64 and cast["n"].dtype == tree["n"].dtype
        assert cast["h"].dtype == jnp.bfloat16  # mixed-precision leaves stay as they are
    assert precision.float_dtype() == np.float32


def _config(name):
    if name == "odc":
        return importlib.import_module("tests.test_odc").odc_config()
    if name in ("dec", "idec"):
        return tiny_config(method=name)
    return importlib.import_module(f"tests.test_{name}").tiny_config()


def _dtypes(tree):
    return [(jax.tree_util.keystr(p), np.asarray(x).dtype)
            for p, x in jax.tree_util.tree_leaves_with_path(tree)]


# In x64 mode: every method's initial state, its reclusterings (each phase's first) and its
# evaluation fit keep every leaf's dtype. A leaf that turned float32 mid-run (a re-initialised
# flax head) made the float64 resume differ from the uninterrupted run by 5e-11, and retraces
# the jitted step.
@pytest.mark.parametrize("name", ["dec", "idec", "deepcluster", "deepclusterv2", "odc", "swav",
                                  "jule", "nmm", "cliquecnn"])
def test_no_state_leaf_changes_dtype_in_x64_mode(name):
    c = _config(name)
    with x64_mode():
        data = loader.load_dataset(c)
        method = methods.from_config(c, loader.data_spec_of(data))
        state = jstate.init_state(method, 0, data.inputs[:c.batch_size])
        floats = {d for _, d in _dtypes(state) if np.issubdtype(d, np.floating)}
        assert floats == {np.dtype(np.float64)}, floats
        features = np.asarray(method.embed(state.params, state.model_state,
                                           jnp.asarray(data.inputs)))
        assert features.dtype == np.float64
        key = jax.random.PRNGKey(0)
        for phase in range(len(method.phases)):
            if method.recluster is None:
                break
            context = methods.ReclusterContext(features, key, phase=phase, inputs=data.inputs)
            params, cluster, _ = method.recluster(state.params, state.cluster, context)
            assert _dtypes((params, cluster)) == _dtypes((state.params, state.cluster)), phase
            state = state.replace(params=params, cluster=cluster)
        if method.evaluation is not None:
            fitted = method.evaluation.fit(features, state.cluster, key)
            assert _dtypes(fitted) == _dtypes(state.eval)
