"""Row L2 normalisation, the one copy that the clustering primitives, the methods and the
models' projection heads share."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Rows of x [..., D] scaled to unit L2 norm, ``x / max(|x|, eps)``: zero rows stay zero.

    Args:
      x: [..., D] float.
      eps: lower bound on the norm each row is divided by.

    Returns:
      [..., D], the shape of x.
    """
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)
