"""Mixture-model EM in log-space: responsibilities (E-step) and the expected complete-data
log-likelihood that an optimiser step maximises (M-step), in jax.numpy.

For N samples and K mixture components with log-densities log p_k(x_i) [N, K] and mixture weights
pi [K]:

  E-step:  gamma_ik = pi_k p_k(x_i) / sum_j pi_j p_j(x_i)
           = softmax_k(log pi_k + log p_k(x_i)),
  M-step:  maximise Q = (1/N) sum_i sum_k gamma_ik [log pi_k + log p_k(x_i)]  with gamma fixed.

Everything runs in log-space (log-sum-exp), so densities far below float32's range are fine.
Sums over samples are plain ``jnp`` reductions: under ``jax.jit`` with the samples sharded over a
mesh axis they are global, so 8 devices give the numbers of 1.

Also the neural mixture model's component densities (Tissera et al. 2021, as reconstructed in
METHODS.md §6): p_k(x) = sigmoid(o~_k(x)) / Z, where o~_k are the final layer's outputs normalised
per neuron over the batch and Z > 0 is one constant shared by every component, so that every
density is non-negative with the same integral. Z shifts every log-density by -log Z and cancels in
the responsibilities.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jclust.precision import float_dtype


class EMOutput(NamedTuple):
    """The E-step of a mixture model on a batch.

    Attributes:
      responsibilities: [N, K] float32, gamma_ik; every row sums to 1.
      log_likelihood: [N] float32, log p(x_i) = logsumexp_k(log pi_k + log p_k(x_i)).
    """
    responsibilities: jax.Array
    log_likelihood: jax.Array


def sigmoid_log_densities(normalized_logits: jax.Array, log_normalizer: float = 0.0) -> jax.Array:
    """log p_k(x) = log sigmoid(o~_k(x)) - log Z, computed stably.

    Args:
      normalized_logits: [N, K] final-layer outputs, normalised per neuron (column) over the batch.
      log_normalizer: log Z, shared by every component.

    Returns:
      [N, K] float32 log-densities, each <= -log Z.
    """
    return jax.nn.log_sigmoid(normalized_logits.astype(float_dtype())) - log_normalizer


def responsibilities(log_densities: jax.Array, log_weights: jax.Array) -> EMOutput:
    """E-step: posterior cluster probabilities of every sample.

    Args:
      log_densities: [N, K] log p_k(x_i).
      log_weights: [K] log pi_k (need not be normalised: normalised here).

    Returns:
      EMOutput with responsibilities [N, K] and per-sample log-likelihood [N] under the
      normalised weights.
    """
    log_densities = log_densities.astype(float_dtype())
    log_weights = jax.nn.log_softmax(log_weights.astype(float_dtype()))
    joint = log_densities + log_weights
    log_likelihood = jax.nn.logsumexp(joint, axis=-1)
    return EMOutput(responsibilities=jnp.exp(joint - log_likelihood[:, None]),
                    log_likelihood=log_likelihood)


def expected_complete_log_likelihood(gamma: jax.Array, log_densities: jax.Array,
                                     log_weights: jax.Array) -> jax.Array:
    """Q = (1/N) sum_i sum_k gamma_ik [log pi_k + log p_k(x_i)], the M-step objective.

    Args:
      gamma: [N, K] responsibilities (treated as constants: gradients are stopped here).
      log_densities: [N, K] log p_k(x_i); gradients flow through them.
      log_weights: [K] log pi_k (normalised here).

    Returns:
      Scalar Q (maximise it; the M-step loss is -Q).
    """
    gamma = jax.lax.stop_gradient(gamma.astype(float_dtype()))
    log_weights = jax.nn.log_softmax(log_weights.astype(float_dtype()))
    return jnp.mean(jnp.sum(gamma * (log_densities.astype(float_dtype()) + log_weights), axis=-1))
