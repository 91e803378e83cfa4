"""Mixture-model EM primitives: responsibilities and the M-step objective against hand-computed
numbers and a float64 NumPy reference; invariance to the shared density constant."""

import jax
import jax.numpy as jnp
import numpy as np

from jclust import cluster as jcluster


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
    out = jcluster.responsibilities(jnp.asarray(log_p, jnp.float32),
                                    jnp.asarray(np.log(weights), jnp.float32))
    np.testing.assert_allclose(out.responsibilities, ref_gamma, atol=1e-5)
    np.testing.assert_allclose(out.log_likelihood, ref_ll, rtol=1e-5)
    np.testing.assert_allclose(np.sum(out.responsibilities, 1), 1.0, rtol=1e-5)
    # Unnormalised log-weights are normalised.
    shifted = jcluster.responsibilities(jnp.asarray(log_p, jnp.float32),
                                        jnp.asarray(np.log(weights) + 5.0, jnp.float32))
    np.testing.assert_allclose(shifted.responsibilities, out.responsibilities, atol=1e-6)


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
