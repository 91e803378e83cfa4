"""Silent recompiles: each phase's train step is traced once over a whole run (chex), and the
clustering primitives trace nothing on a second call with the same shapes (jax.monitoring)."""

import contextlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jclust import cluster as jcluster
from jclust import state as jstate
from jclust import train
from tests.conftest import tiny_config

TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"


@contextlib.contextmanager
def counting_traces():
    """Counts JAX traces (jit, eager primitives, lax control flow) inside the block."""
    counts = {"traces": 0}

    def listener(name, secs, **kwargs):
        del secs, kwargs
        counts["traces"] += name == TRACE_EVENT

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield counts
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def _dec_config():
    return tiny_config(**{"dec.max_steps": 30})


def _deepcluster_config():
    from tests import test_deepcluster
    return test_deepcluster.tiny_config(**{"optim.epochs": 2, "checkpoint_every_steps": 8})


@pytest.mark.parametrize("make_config", [_dec_config, _deepcluster_config],
                         ids=["dec", "deepcluster"])
def test_each_phase_step_is_traced_once_in_a_whole_run(make_config, tmp_path, monkeypatch):
    """Whole tiny runs: DEC (pretraining, then clustering with target updates from host-side
    reclusters, evaluations and checkpoints in between) and DeepCluster (its head re-initialised
    and its pseudo-labels replaced by every recluster, the trainer's evaluation state replaced at
    every evaluation). chex counts the traces of a function by where it was made, so the phases'
    steps share one count: a retrace of any (a weak type or a sharding that changed after a
    recluster or an evaluation, a batch of another shape) would exceed the number of phases."""
    build = jstate.make_train_step
    monkeypatch.setattr(jstate, "make_train_step",
                        lambda method, phase_index: chex.assert_max_traces(
                            build(method, phase_index), n=len(method.phases)))
    chex.clear_trace_counter()
    try:
        record = train.train_and_evaluate(make_config(), str(tmp_path / "run"))
    finally:
        chex.clear_trace_counter()
    assert record["step"] > 0


def test_the_guard_fails_a_step_that_retraces(monkeypatch):
    build = jstate.make_train_step
    monkeypatch.setattr(jstate, "make_train_step",
                        lambda method, phase_index: chex.assert_max_traces(
                            build(method, phase_index), n=1))
    chex.clear_trace_counter()
    from jclust import methods
    method = methods.from_config(tiny_config(), methods.DataSpec(64, (8, 8, 1), True))
    images = np.random.default_rng(0).integers(0, 256, (64, 8, 8, 1), dtype=np.uint8)
    state = jstate.init_state(method, 0, images[:8])
    step = jax.jit(jstate.make_train_step(method, 0))

    def batch(size):
        return {"x": jnp.asarray(images[:size]), "index": jnp.arange(size, dtype=jnp.int32)}

    try:
        state, _ = step(state, batch(8))
        state, _ = step(state, batch(8))
        with np.testing.assert_raises_regex(AssertionError, "traced > 1 times"):
            step(state, batch(16))
    finally:
        chex.clear_trace_counter()


def test_primitives_trace_nothing_on_a_second_call_with_the_same_shapes():
    """k-means (restarts, spherical), PCA-whitening and Sinkhorn called again on other values of
    the same shapes reuse their compilations: no retrace (a Python scalar or a key passed where
    a traced value belongs would recompile on every call)."""
    rng = np.random.default_rng(0)

    def calls(seed):
        x = jnp.asarray(rng.normal(size=(300, 16)), jnp.float32)
        key = jax.random.PRNGKey(seed)
        jcluster.kmeans(x, 5, key=key, n_init=2, max_iter=10)
        jcluster.kmeans(x, 5, key=key, n_init=2, max_iter=10, spherical=True)
        mean, projection = jcluster.fit_whitening(x, 8)
        jcluster.whiten(x, mean, projection)
        jcluster.sinkhorn_knopp(x[:64, :5], epsilon=0.05, num_iters=3)

    with counting_traces() as first:
        calls(0)
    assert first["traces"] > 0  # the counter sees traces (these shapes are used nowhere else)
    with counting_traces() as counts:
        calls(1)
    assert counts["traces"] == 0
