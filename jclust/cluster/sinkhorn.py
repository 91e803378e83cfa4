"""Sinkhorn-Knopp balanced soft assignments (SwAV's codes), in jax.numpy.

Given scores S [B, K] (cosines between B samples and K prototypes), the codes Q [B, K] approximately
solve  max_Q <Q, S> + epsilon * H(Q)  over the transportation polytope where every prototype
receives 1/K of the batch's mass and every sample 1/B (SwAV, Caron et al. 2020, eq. 3). As in the
reference (``distributed_sinkhorn``), Q starts at exp(S / epsilon) normalised to total mass 1 and
``num_iters`` times divides each prototype's column by K times its sum, then each sample's row by
B times its sum; the result is scaled by B so that every row sums to 1.

The sums run over the **global** batch: under ``jax.jit`` with the batch sharded along a mesh axis,
``jnp.sum`` over the batch axis is a cross-device reduction, so 8 devices give the codes of 1.

Two numerically different but mathematically equal paths:
  * ``log_domain=False``: the reference's multiplicative updates, after subtracting the global
    max of S / epsilon (exp(S / epsilon) alone overflows float32 for epsilon < ~0.012 with cosine
    scores, and float16 already at 0.05);
  * ``log_domain=True``: the same updates on log Q with log-sum-exp; exact for any epsilon.
Both run in float32 whatever the input dtype (bf16 scores are upcast). No gradient flows through
the codes.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jclust.precision import float_dtype


class SinkhornOutput(NamedTuple):
    """Codes and how balanced they came out.

    Attributes:
      codes: [B, K] float32, non-negative; every row sums to 1.
      prototype_mass_error: scalar, max_k |sum_i codes[i, k] / B - 1 / K| * K, the relative
        deviation of the prototypes' shares from 1/K (0 at convergence).
    """
    codes: jax.Array
    prototype_mass_error: jax.Array


def sinkhorn_knopp(scores: jax.Array, *, epsilon: float = 0.05, num_iters: int = 3,
                   log_domain: bool = False) -> SinkhornOutput:
    """Balanced codes of a batch of scores (SwAV's Sinkhorn-Knopp).

    Args:
      scores: [B, K] scores of B samples against K prototypes (any float dtype).
      epsilon: entropic regularisation; smaller gives harder codes (SwAV: 0.05).
      num_iters: number of (prototype, sample) normalisation rounds (SwAV: 3).
      log_domain: iterate on log Q with log-sum-exp (see the module docstring).

    Returns:
      SinkhornOutput with codes [B, K] (rows sum to 1) and the remaining prototype-mass error.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be [B, K], got shape {scores.shape}")
    if epsilon <= 0 or num_iters < 1:
        raise ValueError(f"need epsilon > 0 and num_iters >= 1, got {epsilon}, {num_iters}")
    scores = jax.lax.stop_gradient(scores).astype(float_dtype())
    b, k = scores.shape
    logits = scores / epsilon
    if log_domain:
        log_q = logits - jax.nn.logsumexp(logits)
        for _ in range(num_iters):
            log_q = log_q - jax.nn.logsumexp(log_q, axis=0, keepdims=True) - jnp.log(k)
            log_q = log_q - jax.nn.logsumexp(log_q, axis=1, keepdims=True) - jnp.log(b)
        q = jnp.exp(log_q)
    else:
        q = jnp.exp(logits - jnp.max(logits))
        q = q / jnp.sum(q)
        for _ in range(num_iters):
            q = q / (jnp.sum(q, axis=0, keepdims=True) * k)
            q = q / (jnp.sum(q, axis=1, keepdims=True) * b)
    codes = q * b
    error = jnp.max(jnp.abs(jnp.sum(codes, axis=0) / b - 1.0 / k)) * k
    return SinkhornOutput(codes=codes, prototype_mass_error=error)
