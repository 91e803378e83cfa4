"""The float dtype jclust computes in and keeps its state in.

float32 by default. With JAX's x64 mode on (``JAX_ENABLE_X64=1`` in the environment, or
``jax.config.update("jax_enable_x64", True)`` before any computation) every parameter, optimiser
and clustering state, feature pass and clustering primitive runs in float64 instead. Training in
float64 is slow and rarely useful; it is the tests' control: two computations that differ only in
the order of their reductions (one device against eight, one process against two) drift apart by
~1e-7 relative per step in float32, and chaotically over a run, but by ~1e-16 in float64, so a
float64 run can be held to a tight tolerance on any CPU.

Images stay uint8 and host features may stay float32 on the host; they are promoted on the way in.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


# Random draws are float32 in both modes, so that the float64 control draws the same crops, flips,
# dropout masks and initial prototypes as the float32 run and differs from it only by rounding (a
# float64 draw from the same key is another number). In float32 mode this is the default dtype.
RANDOM_DTYPE = np.float32


def float_dtype() -> np.dtype:
    """float64 when JAX's x64 mode is on, else float32 (read at call time, not import time)."""
    return np.dtype(jax.dtypes.canonicalize_dtype(np.float64))


def cast_floats(tree: Any) -> Any:
    """``tree`` with every floating-point array leaf cast to :func:`float_dtype` (bfloat16 and
    other leaves unchanged). Flax creates parameters and batch statistics in float32 whatever the
    x64 mode; this is the identity in float32 mode."""
    dtype = float_dtype()

    def cast(x):
        if getattr(x, "dtype", None) in (np.float32, np.float64) and x.dtype != dtype:
            return jnp.asarray(x, dtype)
        return x

    return jax.tree.map(cast, tree)
