"""Batched, jit-able image augmentations in jax.numpy with explicit rng."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def random_shift(images: jax.Array, key: jax.Array, max_shift: int) -> jax.Array:
    """Translates every image by its own random (dy, dx) in [-max_shift, max_shift], zero-filled.

    Args:
      images: [B, H, W, C] (any dtype; zeros enter at the borders).
      key: PRNG key.
      max_shift: largest shift in pixels; 0 returns the images unchanged.

    Returns:
      [B, H, W, C], same dtype.
    """
    if max_shift <= 0:
        return images
    b, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
    offsets = jax.random.randint(key, (b, 2), 0, 2 * max_shift + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets)
