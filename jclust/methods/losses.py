"""Losses shared by several methods."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Mean (optionally weighted) softmax cross-entropy. logits [B, K], labels [B] int, weights [B]
    (DeepCluster's and ODC's classification of pseudo-labels)."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if weights is None:
        return jnp.mean(losses)
    return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1e-12)
