"""Composed views: one augmented view (crop -> flip -> rotation -> colour -> blur) and SwAV's
multi-crop."""

from __future__ import annotations

import functools

import jax

from jclust.data.augment.common import to_float
from jclust.data.augment.geometry import random_flip, random_resized_crop, random_rotation
from jclust.data.augment.photometric import color_jitter, gaussian_blur, random_grayscale


def augment_view(images: jax.Array, key: jax.Array, *, out_size: int | tuple[int, int],
                 scale: tuple[float, float], ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 flip: bool = True, max_degrees: float = 0.0, color: bool = True,
                 jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
                 jitter_p: float = 0.8, grayscale_p: float = 0.2, blur_p: float = 0.0,
                 blur_sigma: tuple[float, float] = (0.1, 2.0)) -> jax.Array:
    """One augmented view: crop -> flip -> rotation -> colour jitter + grayscale -> blur.

    The colour step (``color_jitter`` with strengths `jitter` = (brightness, contrast, saturation,
    hue) and probability `jitter_p`, then ``random_grayscale`` with `grayscale_p`) runs only for
    RGB images; grayscale images skip it entirely (call ``color_jitter`` directly for brightness
    and contrast on C = 1).

    Args:
      images: [B, H, W, C], uint8 or float in [0, 1].
      key: PRNG key.
      out_size: (H', W') of the view, or an int.
      scale, ratio: ``random_resized_crop`` ranges.
      flip: random horizontal flip with p = 0.5.
      max_degrees: random rotation range; 0 skips it.
      color: apply the colour step (RGB only).
      jitter, jitter_p, grayscale_p: colour step settings.
      blur_p, blur_sigma: ``gaussian_blur`` probability (0 skips it) and sigma range.

    Returns:
      [B, H', W', C] float32 in [0, 1].
    """
    k_crop, k_flip, k_rot, k_jitter, k_gray, k_blur = jax.random.split(key, 6)
    view = random_resized_crop(images, k_crop, out_size=out_size, scale=scale, ratio=ratio)
    if flip:
        view = random_flip(view, k_flip)
    if max_degrees > 0:
        view = random_rotation(view, k_rot, max_degrees=max_degrees)
    if color and view.shape[-1] == 3:
        brightness, contrast, saturation, hue = jitter
        view = color_jitter(view, k_jitter, brightness=brightness, contrast=contrast,
                            saturation=saturation, hue=hue, p=jitter_p)
        view = random_grayscale(view, k_gray, p=grayscale_p)
    if blur_p > 0:
        view = gaussian_blur(view, k_blur, p=blur_p, sigma=blur_sigma)
    return view


def multi_crop(images: jax.Array, key: jax.Array, *, large_size: int | tuple[int, int],
               small_size: int | tuple[int, int] | None = None, num_large: int = 2,
               num_small: int = 0, large_scale: tuple[float, float] = (0.14, 1.0),
               small_scale: tuple[float, float] = (0.05, 0.14),
               **view_kwargs) -> tuple[jax.Array, ...]:
    """SwAV multi-crop: `num_large` large views then `num_small` small views, independent keys.

    Args:
      images: [B, H, W, C], uint8 or float in [0, 1].
      key: PRNG key.
      large_size, small_size: output sizes of the two kinds of view (small_size needed only
        when num_small > 0).
      num_large, num_small: how many views of each kind.
      large_scale, small_scale: crop area ranges of the two kinds.
      **view_kwargs: further ``augment_view`` settings shared by all views (ratio, flip, color,
        blur_p, ...).

    Returns:
      A tuple of num_large arrays [B, *large_size, C] followed by num_small arrays
      [B, *small_size, C], float32 in [0, 1].
    """
    if num_small > 0 and small_size is None:
        raise ValueError(f"num_small={num_small} needs small_size")
    images = to_float(images)
    keys = jax.random.split(key, num_large + num_small)

    def views(view_keys, size, scale):
        # vmap over the keys: the view is traced and compiled once per kind, not once per view.
        one = functools.partial(augment_view, out_size=size, scale=scale, **view_kwargs)
        return tuple(jax.vmap(lambda k: one(images, k))(view_keys)) if len(view_keys) else ()

    return (views(keys[:num_large], large_size, large_scale)
            + views(keys[num_large:], small_size, small_scale))
