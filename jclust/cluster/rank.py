"""Order statistics without a sort, for CliqueCNN's dissimilar-seed rule (jax.numpy)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _sortable(x: jax.Array) -> jax.Array:
    """int32 keys ordered as the floats x (-0.0 just below +0.0)."""
    bits = jax.lax.bitcast_convert_type(x, jnp.int32)
    return jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)


def _count_search(count_at_most, start, bits: int, m):
    """The smallest t in [start, start + 2^bits) with count_at_most(t) >= m (count_at_most is
    non-decreasing), decided bit by bit from the top."""
    def bit(i, t):
        step = jnp.int32(1) << (bits - 1 - i)
        return jnp.where(count_at_most(t + (step - 1)) >= m, t, t + step)

    return jax.lax.fori_loop(0, bits, bit, start)


def rank_select(values: jax.Array, rank) -> jax.Array:
    """The index of the element of 0-based ``rank`` when float ``values`` [N] are sorted by
    (value, index), i.e. ``np.argsort(values, kind="stable")[rank]``.

    Counting passes instead of a sort: 31 over the value's bits (after its sign) and
    ceil(log2 N) over the indices of equal values; on CPU ~10x faster than ``lax.top_k`` for the
    3,500 lowest of 70,000 and free of ``cumsum`` (slow on XLA:CPU).
    """
    values = values.astype(jnp.float32)
    key = _sortable(jnp.where(values == 0, 0.0, values))  # -0.0 == 0.0, as np.argsort has it
    m = rank + 1
    half = jnp.where(jnp.sum(key < 0) >= m, jnp.iinfo(jnp.int32).min, 0).astype(jnp.int32)
    t = _count_search(lambda trial: jnp.sum(key <= trial), half, 31, m)
    need = m - jnp.sum(key < t)
    index = jnp.arange(values.shape[0], dtype=jnp.int32)
    tied = key == t
    bits = max(1, int(values.shape[0] - 1).bit_length())
    return _count_search(lambda trial: jnp.sum(tied & (index <= trial)), jnp.zeros((), jnp.int32),
                         bits, need)


def dissimilar_seed(key: jax.Array, max_sim: jax.Array, pool_size: int) -> jax.Array:
    """CliqueCNN's next seed: uniformly random among the ``pool_size`` samples of lowest
    ``max_sim`` [N] (their maximum similarity to the batch so far; ties to the lower index)."""
    return rank_select(max_sim, jax.random.randint(key, (), 0, pool_size))
