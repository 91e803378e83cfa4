"""Mixture-model EM primitives: responsibilities and the M-step objective against hand-computed
numbers and a float64 NumPy reference; invariance to the shared density constant."""

import jax
import jax.numpy as jnp
import numpy as np

from jclust import cluster as jcluster
from tests.conftest import x64_mode


def test_two_samples_two_clusters_by_hand():
    # sigmoid(0) = 1/2 and sigmoid(ln 3) = 3/4: densities (1/2, 3/4) and (3/4, 1/2) with Z = 1.
    logits = jnp.array([[0.0, np.log(3.0)], [np.log(3.0), 0.0]])
    log_p = jcluster.sigmoid_log_densities(logits)
    np.testing.assert_allclose(np.exp(log_p), [[0.5, 0.75], [0.75, 0.5]], rtol=1e-6)

    uniform = jnp.log(jnp.array([0.5, 0.5]))
    out = jcluster.responsibilities(log_p, uniform)
    np.testing.assert_allclose(out.responsibilities, [[0.4, 0.6], [0.6, 0.4]], rtol=1e-6)
    np.testing.assert_allclose(out.log_likelihood, [np.log(0.625)] * 2, rtol=1e-6)
    q = jcluster.expected_complete_log_likelihood(out.responsibilities, log_p, uniform)
    np.testing.assert_allclose(q, 0.8 * np.log(0.5) + 0.6 * np.log(0.375), rtol=1e-6)

    # Weights (1/4, 3/4): sample 1 has pi p = (1/8, 9/16), so gamma = (2/11, 9/11).
    skewed = jnp.log(jnp.array([0.25, 0.75]))
    gamma = jcluster.responsibilities(log_p, skewed).responsibilities
    np.testing.assert_allclose(gamma[0], [2 / 11, 9 / 11], rtol=1e-6)
    np.testing.assert_allclose(gamma[1], [0.25 * 0.75 / (0.25 * 0.75 + 0.75 * 0.5),
                                          0.75 * 0.5 / (0.25 * 0.75 + 0.75 * 0.5)], rtol=1e-6)


def test_responsibilities_match_a_float64_reference_and_survive_tiny_densities():
    rng = np.random.default_rng(0)
    log_p = rng.normal(size=(50, 7)) * 30 - 200  # densities ~e^-200: zero in float32
    weights = rng.dirichlet(np.ones(7))
    joint = log_p + np.log(weights)
    top = joint.max(1, keepdims=True)
    ref_ll = top[:, 0] + np.log(np.exp(joint - top).sum(1))
    ref_gamma = np.exp(joint - ref_ll[:, None])
    # gamma = exp(joint - ll) with |joint|, |ll| up to ~315: one rounding of a log-density (or of
    # ll) moves gamma by up to eps * |joint| relative, and a sum of gammas off 1 by as much. So
    # every check is held to 4 eps * max|joint| in the dtype computed in: 1.5e-4 in float32
    # (where one ulp at 200 is already 1.5e-5) and 2.8e-13 in float64 (x64 mode). Measured over
    # 200 draws like this one (AMD EPYC Zen 3, 2026-12-03), in units of eps * max|joint|: gamma
    # 0.26 (float32) / 0.32 (float64), log-likelihood 0.63 / 0.49, sum of gamma - 1 0.24 / 0.24,
    # shifted weights: gamma 0.35 / 0.33, log-likelihood 0.47 / 0.49; 4 is 6x the largest.
    for dtype in (np.float64, np.float32):
        tol = 4 * np.finfo(dtype).eps * np.abs(joint).max()
        with x64_mode(dtype == np.float64):
            out = jcluster.responsibilities(jnp.asarray(log_p, dtype),
                                            jnp.asarray(np.log(weights), dtype))
            # Unnormalised log-weights are normalised.
            shifted = jcluster.responsibilities(jnp.asarray(log_p, dtype),
                                                jnp.asarray(np.log(weights) + 5.0, dtype))
            out, shifted = jax.device_get((out, shifted))
        assert out.responsibilities.dtype == out.log_likelihood.dtype == dtype
        np.testing.assert_allclose(out.responsibilities, ref_gamma, rtol=0, atol=tol)
        np.testing.assert_allclose(out.log_likelihood, ref_ll, rtol=0, atol=tol)
        np.testing.assert_allclose(np.sum(out.responsibilities, 1), 1.0, rtol=0, atol=tol)
        np.testing.assert_allclose(shifted.responsibilities, out.responsibilities, rtol=0,
                                   atol=tol)
        # (gamma alone would not show it: only the log-likelihood moves with the weights' sum.)
        np.testing.assert_allclose(shifted.log_likelihood, out.log_likelihood, rtol=0, atol=tol)


def test_the_shared_constant_leaves_gamma_unchanged_and_shifts_the_likelihood():
    logits = jax.random.normal(jax.random.PRNGKey(1), (16, 5))
    weights = jnp.log(jnp.full((5,), 0.2))
    a = jcluster.responsibilities(jcluster.sigmoid_log_densities(logits, 0.0), weights)
    b = jcluster.responsibilities(jcluster.sigmoid_log_densities(logits, 3.5), weights)
    np.testing.assert_allclose(a.responsibilities, b.responsibilities, rtol=1e-6)
    np.testing.assert_allclose(b.log_likelihood, a.log_likelihood - 3.5, rtol=1e-6)


def test_no_gradient_flows_through_gamma_in_the_m_step():
    log_p = jnp.log(jnp.array([[0.2, 0.5], [0.6, 0.1]]))
    weights = jnp.log(jnp.array([0.5, 0.5]))

    def objective(log_p):
        gamma = jcluster.responsibilities(log_p, weights).responsibilities
        return jcluster.expected_complete_log_likelihood(gamma, log_p, weights)

    gamma = jcluster.responsibilities(log_p, weights).responsibilities
    # d Q / d log p_ik = gamma_ik / N when gamma is held fixed.
    np.testing.assert_allclose(jax.grad(objective)(log_p), gamma / 2, rtol=1e-6)
