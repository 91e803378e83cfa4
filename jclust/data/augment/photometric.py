"""Photometric augmentations: colour jitter, grayscale and Gaussian blur."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jclust.data.augment.common import _between, _per_image, _where_per_image, to_float
from jclust.precision import RANDOM_DTYPE, float_dtype

LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601, as torchvision and PIL's "L" mode


# --------------------------------------------------------------------------------------------
# Colour


def rgb_to_grayscale(images: jax.Array) -> jax.Array:
    """ITU-R 601 luma 0.299 R + 0.587 G + 0.114 B.

    Args:
      images: [..., 3] float.

    Returns:
      [..., 1] float32.
    """
    weights = jnp.asarray(LUMA_WEIGHTS, float_dtype())
    return jnp.tensordot(to_float(images), weights, axes=1)[..., None]


def rgb_to_hsv(rgb: jax.Array) -> jax.Array:
    """RGB -> HSV with all three in [0, 1], as Python's ``colorsys.rgb_to_hsv``.

    Args:
      rgb: [..., 3] float in [0, 1].

    Returns:
      [..., 3] (hue, saturation, value); hue 0 and saturation 0 for gray pixels.
    """
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = jnp.max(rgb, axis=-1)
    spread = value - jnp.min(rgb, axis=-1)
    saturation = jnp.where(value > 0, spread / jnp.where(value > 0, value, 1.0), 0.0)
    safe = jnp.where(spread > 0, spread, 1.0)
    # colorsys breaks ties in the order red, green, blue.
    hue = jnp.where(value == r, (g - b) / safe,
                    jnp.where(value == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    hue = jnp.where(spread > 0, jnp.mod(hue / 6.0, 1.0), 0.0)
    return jnp.stack([hue, saturation, value], axis=-1)


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
    """HSV -> RGB, the inverse of ``rgb_to_hsv`` (as ``colorsys.hsv_to_rgb``).

    Args:
      hsv: [..., 3] (hue, saturation, value) in [0, 1]; hue is taken modulo 1.

    Returns:
      [..., 3] RGB float32.
    """
    hue, saturation, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    sector = jnp.floor(hue * 6.0)
    frac = hue * 6.0 - sector
    sector = jnp.mod(sector.astype(jnp.int32), 6)[..., None]
    p = value * (1.0 - saturation)
    q = value * (1.0 - saturation * frac)
    t = value * (1.0 - saturation * (1.0 - frac))

    def pick(*candidates):  # the channel's value in each of the six hue sectors
        return jnp.take_along_axis(jnp.stack(candidates, axis=-1), sector, axis=-1)[..., 0]

    return jnp.stack([pick(value, q, p, p, t, value), pick(t, value, value, q, p, p),
                      pick(p, p, t, value, value, q)], axis=-1)


def adjust_brightness(images: jax.Array, factors: jax.Array) -> jax.Array:
    """clip(image * factor) per image (torchvision's ``adjust_brightness``).

    Args:
      images: [B, H, W, C] float in [0, 1].
      factors: [B]; 1 keeps the image, 0 makes it black.

    Returns:
      [B, H, W, C] float32 in [0, 1].
    """
    return jnp.clip(to_float(images) * _per_image(factors), 0.0, 1.0)


def adjust_contrast(images: jax.Array, factors: jax.Array) -> jax.Array:
    """Blends each image with its mean gray level: clip(f * image + (1 - f) * mean).

    The mean is over all pixels of the luma (RGB) or of the single channel (C = 1), as torchvision.

    Args:
      images: [B, H, W, C] float in [0, 1], C = 1 or 3.
      factors: [B]; 1 keeps the image, 0 makes it uniform gray.

    Returns:
      [B, H, W, C] float32 in [0, 1].
    """
    images = to_float(images)
    gray = images if images.shape[-1] == 1 else rgb_to_grayscale(images)
    mean = jnp.mean(gray, axis=(1, 2, 3), keepdims=True)
    factors = _per_image(factors)
    return jnp.clip(factors * images + (1.0 - factors) * mean, 0.0, 1.0)


def adjust_saturation(images: jax.Array, factors: jax.Array) -> jax.Array:
    """Blends each RGB pixel with its luma: clip(f * rgb + (1 - f) * gray).

    Args:
      images: [B, H, W, 3] float in [0, 1].
      factors: [B]; 1 keeps the image, 0 makes it grayscale, > 1 saturates.

    Returns:
      [B, H, W, 3] float32 in [0, 1].
    """
    images = to_float(images)
    factors = _per_image(factors)
    return jnp.clip(factors * images + (1.0 - factors) * rgb_to_grayscale(images), 0.0, 1.0)


def adjust_hue(images: jax.Array, shifts: jax.Array) -> jax.Array:
    """Rotates the hue of each RGB image by shifts[i] turns (through HSV).

    Args:
      images: [B, H, W, 3] float in [0, 1].
      shifts: [B] in [-0.5, 0.5]; 0 leaves the image unchanged up to float rounding.

    Returns:
      [B, H, W, 3] float32 in [0, 1].
    """
    hsv = rgb_to_hsv(to_float(images))
    hue = jnp.mod(hsv[..., 0] + shifts[:, None, None], 1.0)
    return jnp.clip(hsv_to_rgb(hsv.at[..., 0].set(hue)), 0.0, 1.0)


def _jitter_range(strength: float | tuple[float, float]) -> tuple[float, float]:
    """torchvision's convention: s -> [max(0, 1 - s), 1 + s]; a pair is taken as the range."""
    if isinstance(strength, (tuple, list)):
        return float(strength[0]), float(strength[1])
    return max(0.0, 1.0 - strength), 1.0 + strength


def _check_channels(images: jax.Array) -> int:
    channels = images.shape[-1]
    if channels not in (1, 3):
        raise ValueError(f"colour augmentations need C = 1 or 3; got images of shape "
                         f"{images.shape}")
    return channels


def color_jitter(images: jax.Array, key: jax.Array, *,
                 brightness: float | tuple[float, float] = 0.4,
                 contrast: float | tuple[float, float] = 0.4,
                 saturation: float | tuple[float, float] = 0.4,
                 hue: float | tuple[float, float] = 0.1,
                 p: float = 0.8) -> jax.Array:
    """torchvision's ColorJitter applied to each image with probability `p`.

    Factors are drawn per image: brightness, contrast and saturation uniform in
    [max(0, 1 - s), 1 + s] (or in a given (min, max) pair), the hue shift uniform in [-hue, hue]
    turns. The order is fixed: brightness, contrast, saturation, hue (torchvision shuffles it per
    call), each followed by a clip to [0, 1]. A strength of 0 skips that step. For grayscale
    images (C = 1) only brightness and contrast apply; saturation and hue are ignored, not errors.

    Args:
      images: [B, H, W, C], C = 1 or 3, uint8 or float in [0, 1].
      key: PRNG key.
      brightness, contrast, saturation: strength s, or a (min, max) factor range.
      hue: largest absolute hue shift (<= 0.5), or a (min, max) range.
      p: probability that an image is jittered at all.

    Returns:
      [B, H, W, C] float32 in [0, 1].
    """
    images = to_float(images)
    channels = _check_channels(images)
    # One draw: see sample_crop_boxes.
    u = jax.random.uniform(key, (images.shape[0], 5), RANDOM_DTYPE)
    out = images
    if brightness:
        out = adjust_brightness(out, _between(u[:, 0], *_jitter_range(brightness)))
    if contrast:
        out = adjust_contrast(out, _between(u[:, 1], *_jitter_range(contrast)))
    if channels == 3 and saturation:
        out = adjust_saturation(out, _between(u[:, 2], *_jitter_range(saturation)))
    if channels == 3 and hue:
        low, high = hue if isinstance(hue, (tuple, list)) else (-hue, hue)
        out = adjust_hue(out, _between(u[:, 3], low, high))
    return _where_per_image(u[:, 4] < p, out, images)


def random_grayscale(images: jax.Array, key: jax.Array, *, p: float = 0.2) -> jax.Array:
    """Replaces each RGB image by its luma, copied to 3 channels, with probability `p`.

    Args:
      images: [B, H, W, C], C = 1 or 3, uint8 or float in [0, 1]. C = 1 is returned unchanged.
      key: PRNG key.
      p: probability per image.

    Returns:
      [B, H, W, C] float32 in [0, 1].
    """
    images = to_float(images)
    if _check_channels(images) == 1:
        return images
    gray = jnp.broadcast_to(rgb_to_grayscale(images), images.shape)
    gray_rows = jax.random.bernoulli(key, jnp.asarray(p, RANDOM_DTYPE), (images.shape[0],))
    return _where_per_image(gray_rows, gray, images)


# --------------------------------------------------------------------------------------------
# Blur


def _blur_axis(images: jax.Array, kernels: jax.Array, axis: int) -> jax.Array:
    """Convolves along `axis` (1 or 2) with per-image kernels [B, K], reflect padding."""
    radius = kernels.shape[1] // 2
    pad = [(0, 0)] * 4
    pad[axis] = (radius, radius)
    padded = jnp.pad(images, pad, mode="reflect")
    size = images.shape[axis]
    # A sum of K shifted slices: kernels differ per image, which a grouped conv expresses badly.
    return sum(_per_image(kernels[:, k]) * jax.lax.slice_in_dim(padded, k, k + size, axis=axis)
               for k in range(kernels.shape[1]))


def default_kernel_size(sigma_max: float, image_size: tuple[int, int]) -> int:
    """The odd kernel size 2 r + 1 with r = ceil(3 sigma_max), capped at min(H, W) - 1 so that
    reflect padding fits in the image.

    Args:
      sigma_max: the largest sigma the kernel must serve, in pixels.
      image_size: (H, W).

    Returns:
      K, an odd int >= 1.
    """
    radius = min(max(1, math.ceil(3 * sigma_max)), min(image_size) - 1)
    return 2 * max(radius, 0) + 1


def blur(images: jax.Array, sigmas: jax.Array, *, kernel_size: int) -> jax.Array:
    """Separable Gaussian blur, one sigma per image, reflect padding (numpy's "reflect").

    The kernel exp(-x^2 / (2 sigma^2)) for x in [-(K-1)/2, (K-1)/2] is normalised to sum 1, as
    torchvision's ``gaussian_blur``.

    Args:
      images: [B, H, W, C] float in [0, 1].
      sigmas: [B] positive standard deviations in pixels.
      kernel_size: K, odd.

    Returns:
      [B, H, W, C] float32 in [0, 1].
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer; got {kernel_size}")
    radius = kernel_size // 2
    offsets = jnp.arange(-radius, radius + 1, dtype=float_dtype())
    kernels = jnp.exp(-0.5 * (offsets / sigmas[:, None]) ** 2)
    kernels = kernels / jnp.sum(kernels, axis=1, keepdims=True)
    out = _blur_axis(_blur_axis(to_float(images), kernels, axis=1), kernels, axis=2)
    return jnp.clip(out, 0.0, 1.0)


def gaussian_blur(images: jax.Array, key: jax.Array, *, p: float = 0.5,
                  sigma: tuple[float, float] = (0.1, 2.0),
                  kernel_size: int | None = None) -> jax.Array:
    """Blurs each image with probability `p`, sigma uniform in `sigma` (see ``blur``).

    SwAV blurs with PIL's GaussianBlur(radius=sigma); this is the exact Gaussian instead.

    Args:
      images: [B, H, W, C], uint8 or float in [0, 1].
      key: PRNG key.
      p: probability per image; 0 returns the images unchanged.
      sigma: (min, max) standard deviation in pixels.
      kernel_size: odd K; None means ``default_kernel_size(sigma[1], (H, W))``.

    Returns:
      [B, H, W, C] float32 in [0, 1].
    """
    images = to_float(images)
    if p <= 0:
        return images
    batch, h, w, _ = images.shape
    if kernel_size is None:
        kernel_size = default_kernel_size(sigma[1], (h, w))
    u = jax.random.uniform(key, (batch, 2), RANDOM_DTYPE)
    blurred = blur(images, _between(u[:, 0], *sigma), kernel_size=kernel_size)
    return _where_per_image(u[:, 1] < p, blurred, images)
