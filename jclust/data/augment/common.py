"""What the augmentation ops share: conversion to float and per-image broadcasting."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from jclust.precision import float_dtype


def to_float(images: jax.Array) -> jax.Array:
    """Integer images (0..255) -> float32 / 255; float images -> float32 unchanged in value.

    Args:
      images: [..., C] of any dtype.

    Returns:
      float32 array of the same shape.
    """
    images = jnp.asarray(images)
    if jnp.issubdtype(images.dtype, jnp.integer):
        return images.astype(float_dtype()) / 255.0
    return images.astype(float_dtype())


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def _per_image(values: jax.Array) -> jax.Array:
    """[B] -> [B, 1, 1, 1], to broadcast a per-image value over [B, H, W, C]."""
    return values[:, None, None, None]


def _where_per_image(mask: jax.Array, new: jax.Array, old: jax.Array) -> jax.Array:
    return jnp.where(_per_image(mask), new, old)


def _between(u: jax.Array, low: float, high: float) -> jax.Array:
    """Maps uniform [0, 1) draws onto [low, high) (exactly `low` when low == high)."""
    return low + (high - low) * u
