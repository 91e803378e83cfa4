"""Sinkhorn-Knopp codes against a float64 NumPy reference, by hand, and across devices."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jclust.cluster import sinkhorn_knopp


def numpy_sinkhorn(scores, epsilon, num_iters):
    """SwAV's distributed_sinkhorn on one device, written plainly in float64."""
    q = np.exp(np.asarray(scores, np.float64) / epsilon).T  # [K, B]
    q /= q.sum()
    k, b = q.shape
    for _ in range(num_iters):
        q /= q.sum(axis=1, keepdims=True) * k
        q /= q.sum(axis=0, keepdims=True) * b
    return (q * b).T


def _scores(b, k, seed=0):
    z = np.random.default_rng(seed).normal(size=(b, 16))
    c = np.random.default_rng(seed + 1).normal(size=(k, 16))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    return (z @ c.T).astype(np.float32)  # cosines, as in SwAV


@pytest.mark.parametrize("log_domain", [False, True])
@pytest.mark.parametrize("epsilon,num_iters", [(0.05, 3), (0.1, 1), (0.03, 10)])
def test_matches_float64_reference(log_domain, epsilon, num_iters):
    scores = _scores(64, 12)
    out = sinkhorn_knopp(jnp.asarray(scores), epsilon=epsilon, num_iters=num_iters,
                         log_domain=log_domain)
    np.testing.assert_allclose(out.codes, numpy_sinkhorn(scores, epsilon, num_iters),
                               rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(np.sum(out.codes, axis=1), 1.0, rtol=1e-5)


def test_marginals_converge_to_the_transportation_polytope():
    scores = _scores(96, 8, seed=3)
    errors = [float(sinkhorn_knopp(jnp.asarray(scores), epsilon=0.05, num_iters=n,
                                   log_domain=True).prototype_mass_error) for n in (1, 3, 30, 300)]
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 1e-4
    codes = np.asarray(sinkhorn_knopp(jnp.asarray(scores), epsilon=0.05, num_iters=300,
                                      log_domain=True).codes)
    np.testing.assert_allclose(codes.sum(axis=0), 96 / 8, rtol=1e-3)  # each prototype: B/K
    np.testing.assert_allclose(codes.sum(axis=1), 1.0, rtol=1e-5)


def test_hand_computed_two_by_two():
    # S = [[1, 0], [0, 0]], epsilon = 1: Q0 = [[e, 1], [1, 1]] / (e + 3).
    # One round: columns divided by 2 x their sums (e + 1, 2); then rows by 2 x their sums.
    # Row 0 before row normalisation: [e / (2(e+1)), 1/4] -> codes row 0 = that / its sum.
    e = np.e
    a, b = e / (2 * (e + 1)), 0.25
    c, d = 1 / (2 * (e + 1)), 0.25
    expected = np.array([[a / (a + b), b / (a + b)], [c / (c + d), d / (c + d)]])
    for log_domain in (False, True):
        out = sinkhorn_knopp(jnp.array([[1.0, 0.0], [0.0, 0.0]]), epsilon=1.0, num_iters=1,
                             log_domain=log_domain)
        np.testing.assert_allclose(out.codes, expected, rtol=1e-6)


def test_small_epsilon_needs_the_log_domain():
    scores = _scores(32, 6)
    exact = sinkhorn_knopp(jnp.asarray(scores), epsilon=0.005, num_iters=3, log_domain=True)
    assert np.all(np.isfinite(exact.codes))
    np.testing.assert_allclose(np.sum(exact.codes, axis=1), 1.0, rtol=1e-5)
    # Close to a hard, balanced assignment: every row nearly one-hot.
    assert float(np.min(np.max(exact.codes, axis=1))) > 0.5


def test_bfloat16_scores_are_computed_in_float32_without_gradient():
    scores = jnp.asarray(_scores(16, 4), jnp.bfloat16)
    out = sinkhorn_knopp(scores, epsilon=0.05)
    assert out.codes.dtype == jnp.float32 and np.all(np.isfinite(out.codes))
    grad = jax.grad(lambda s: jnp.sum(sinkhorn_knopp(s).codes * s))(jnp.asarray(_scores(16, 4)))
    np.testing.assert_allclose(grad, sinkhorn_knopp(jnp.asarray(_scores(16, 4))).codes, rtol=1e-6)


def test_bad_shapes_and_parameters_are_errors():
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        sinkhorn_knopp(jnp.zeros((3,)))
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn_knopp(jnp.zeros((3, 2)), epsilon=0.0)


SHARDED_SCRIPT = """
import numpy as np, jax, jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jclust.cluster import sinkhorn_knopp
assert jax.device_count() == 8
scores = np.load({path!r})
mesh = Mesh(np.array(jax.devices()), ("data",))
x = jax.device_put(scores, NamedSharding(mesh, P("data")))
for log_domain in (False, True):
    fn = jax.jit(lambda s: sinkhorn_knopp(s, epsilon=0.05, num_iters=3, log_domain=log_domain).codes,
                 out_shardings=NamedSharding(mesh, P("data")))
    codes = fn(x)
    assert len(codes.sharding.device_set) == 8
    np.save({out!r}.format(int(log_domain)), np.asarray(codes))
"""


def test_eight_devices_give_the_codes_of_the_global_batch(tmp_path):
    """Batch rows sharded over 8 devices: the column sums are global, the codes those of the
    whole batch (a per-device Sinkhorn would balance each shard on its own and differ). Run in
    float64 against the float64 NumPy reference: measured |difference| <= 1e-15, relative
    <= 1.5e-14 (AMD EPYC, 2026-12-03), so 1e-9 holds on any CPU; in float32 exp(scores / 0.05) turns the reductions'
    CPU-dependent rounding into ~1e-5 relative differences."""
    from tests.conftest import X64_ENV, run
    scores = _scores(64, 12).astype(np.float64)
    np.save(tmp_path / "scores.npy", scores)
    out = str(tmp_path / "codes{}.npy")
    result = run([sys.executable, "-c", SHARDED_SCRIPT.format(path=str(tmp_path / "scores.npy"), out=out)],
                 env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=8", **X64_ENV},
                 timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    for log_domain in (0, 1):
        codes = np.load(out.format(log_domain))
        assert codes.dtype == np.float64
        np.testing.assert_allclose(codes, numpy_sinkhorn(scores, 0.05, 3), rtol=1e-9, atol=1e-12)
    per_shard = np.concatenate([numpy_sinkhorn(s, 0.05, 3) for s in np.split(scores, 8)])
    assert not np.allclose(per_shard, np.load(out.format(0)), rtol=1e-3)
