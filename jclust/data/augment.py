"""Batched, jit-able image augmentations in jax.numpy with explicit rng.

Conventions for everything below except ``random_shift`` (which keeps its input dtype):

- Images are ``[B, H, W, C]`` with C = 1 (grayscale) or 3 (RGB). The random functions accept uint8
  (0..255) or float (0..1) and return float32 in [0, 1]; ``to_float`` does the conversion.
- Every random function takes a ``jax.random`` key and draws its parameters independently for each
  image of the batch. Its static settings (sizes, probabilities, strengths) are keyword-only, so
  ``jax.jit(functools.partial(augment_view, out_size=(32, 32), scale=(0.2, 1.0)))`` compiles once.
- Deterministic helpers (``crop_and_resize``, ``rotate``, ``adjust_*``, ``blur``) take the per-image
  parameters as arrays; the random functions draw those parameters and call them.

``augment_view`` composes one view (crop -> flip -> rotation -> colour -> blur) and ``multi_crop``
returns the SwAV set of large and small views.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp

from jclust.precision import RANDOM_DTYPE, float_dtype

LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601, as torchvision and PIL's "L" mode
_CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before its central fallback


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


# --------------------------------------------------------------------------------------------
# Random resized crop


def _central_crop_size(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """torchvision's fallback: the largest central box, aspect ratio clamped into `ratio`."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        return int(round(width / min(ratio))), width
    if in_ratio > max(ratio):
        return height, int(round(height * max(ratio)))
    return height, width


def sample_crop_boxes(key: jax.Array, *, batch_size: int, image_size: tuple[int, int],
                      scale: tuple[float, float] = (0.08, 1.0),
                      ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> jax.Array:
    """Draws one RandomResizedCrop box per image, with torchvision's sampling rule.

    For each image, 10 candidate boxes are drawn with area fraction uniform in `scale` and aspect
    ratio (width / height) log-uniform in `ratio`, side lengths rounded to integers. The first
    candidate that fits inside the image is kept and placed uniformly at random; if none fits, the
    box is torchvision's central fallback (the whole image with its aspect ratio clamped into
    `ratio`). All 10 candidates are drawn at once, so this is vectorised and jit-compatible.

    Args:
      key: PRNG key.
      batch_size: B.
      image_size: (H, W) of the images to crop.
      scale: range of the box area as a fraction of H * W.
      ratio: range of the box aspect ratio width / height.

    Returns:
      int32 [B, 4] rows (top, left, height, width), with 1 <= height <= H, 1 <= width <= W.
    """
    img_h, img_w = image_size
    # One draw for everything: each jax.random call inlines its own threefry, which compiles slowly.
    u = jax.random.uniform(key, (batch_size, 2 * _CROP_ATTEMPTS + 2), RANDOM_DTYPE)
    u_area, u_ratio, u_offset = jnp.split(u, [_CROP_ATTEMPTS, 2 * _CROP_ATTEMPTS], axis=1)
    area = img_h * img_w * _between(u_area, *scale)
    aspect = jnp.exp(_between(u_ratio, math.log(ratio[0]), math.log(ratio[1])))
    heights = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    widths = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    fits = (heights > 0) & (heights <= img_h) & (widths > 0) & (widths <= img_w)
    first = jnp.argmax(fits, axis=1)[:, None]
    found = jnp.any(fits, axis=1)
    fallback_h, fallback_w = _central_crop_size(img_h, img_w, ratio)
    height = jnp.where(found, jnp.take_along_axis(heights, first, axis=1)[:, 0], fallback_h)
    width = jnp.where(found, jnp.take_along_axis(widths, first, axis=1)[:, 0], fallback_w)
    top = jnp.floor(u_offset[:, 0] * (img_h - height + 1)).astype(jnp.int32)
    left = jnp.floor(u_offset[:, 1] * (img_w - width + 1)).astype(jnp.int32)
    top, left = jnp.minimum(top, img_h - height), jnp.minimum(left, img_w - width)
    top = jnp.where(found, top, (img_h - height) // 2)
    left = jnp.where(found, left, (img_w - width) // 2)
    return jnp.stack([top, left, height, width], axis=1)


def crop_and_resize(images: jax.Array, boxes: jax.Array, *,
                    out_size: int | tuple[int, int]) -> jax.Array:
    """Resamples box (top, left, height, width) of every image to `out_size`, bilinearly.

    Uses ``jax.image.scale_and_translate`` with the linear (triangle) kernel and antialiasing, so a
    box larger than `out_size` is averaged over like torchvision's ``antialias=True`` resize. The
    box edges map onto the output edges exactly. Unlike torchvision (which crops, then resizes),
    the kernel of the outermost output pixels can reach the image just outside the box (less
    than one input pixel when upscaling); image borders are handled by renormalising the kernel.
    A box of the output size at integer offsets is an exact copy.

    Args:
      images: [B, H, W, C] float.
      boxes: [B, 4] (top, left, height, width) in pixels, int or float, heights and widths > 0.
      out_size: (H', W') or an int for a square output.

    Returns:
      [B, H', W', C] float32.
    """
    out_h, out_w = _pair(out_size)
    channels = images.shape[-1]

    def one(image, box):
        box = box.astype(float_dtype())
        factor = jnp.stack([out_h / box[2], out_w / box[3]])
        return jax.image.scale_and_translate(
            image, (out_h, out_w, channels), (0, 1), factor, -box[:2] * factor,
            method="linear", antialias=True)

    return jax.vmap(one)(to_float(images), boxes)


def random_resized_crop(images: jax.Array, key: jax.Array, *, out_size: int | tuple[int, int],
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> jax.Array:
    """RandomResizedCrop: a random box per image (``sample_crop_boxes``) resized to `out_size`.

    With scale=(1, 1), ratio=(1, 1) on square images and `out_size` equal to the input size this is
    the identity. Resampling is bilinear with antialiasing (see ``crop_and_resize``).

    Args:
      images: [B, H, W, C], uint8 or float in [0, 1].
      key: PRNG key.
      out_size: (H', W') or an int for a square output.
      scale: range of the box area as a fraction of H * W.
      ratio: range of the box aspect ratio width / height (log-uniform).

    Returns:
      [B, H', W', C] float32 in [0, 1].
    """
    b, h, w, _ = images.shape
    boxes = sample_crop_boxes(key, batch_size=b, image_size=(h, w), scale=scale, ratio=ratio)
    return jnp.clip(crop_and_resize(images, boxes, out_size=out_size), 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Flip and rotation


def random_flip(images: jax.Array, key: jax.Array, *, p: float = 0.5) -> jax.Array:
    """Mirrors each image left-right with probability `p`.

    Args:
      images: [B, H, W, C], uint8 or float in [0, 1].
      key: PRNG key.
      p: flip probability.

    Returns:
      [B, H, W, C] float32 in [0, 1].
    """
    images = to_float(images)
    flip = jax.random.bernoulli(key, jnp.asarray(p, RANDOM_DTYPE), (images.shape[0],))
    return _where_per_image(flip, images[:, :, ::-1], images)


def rotate(images: jax.Array, angles: jax.Array) -> jax.Array:
    """Rotates image i counter-clockwise by angles[i] radians about its centre.

    Bilinear (``jax.scipy.ndimage.map_coordinates`` with order 1); pixels whose source falls
    outside the image are 0, and border pixels blend with that 0. The centre is
    ((H - 1) / 2, (W - 1) / 2), so an angle of pi/2 on a square image is ``np.rot90`` over axes
    (1, 2), and 0 is the identity.

    Args:
      images: [B, H, W, C], uint8 or float in [0, 1].
      angles: [B] radians; positive is counter-clockwise as displayed (row 0 at the top).

    Returns:
      [B, H, W, C] float32 in [0, 1].
    """
    images = to_float(images)
    _, h, w, _ = images.shape
    cy, cx = (h - 1) / 2, (w - 1) / 2
    dy, dx = jnp.meshgrid(jnp.arange(h, dtype=float_dtype()) - cy,
                          jnp.arange(w, dtype=float_dtype()) - cx, indexing="ij")

    def one(image, angle):
        cos, sin = jnp.cos(angle), jnp.sin(angle)
        # Inverse map: output offset (dy, dx) reads the input at that offset rotated back.
        source = [cos * dy + sin * dx + cy, -sin * dy + cos * dx + cx]

        def channel(plane):
            return jax.scipy.ndimage.map_coordinates(plane, source, order=1, mode="constant")

        return jax.vmap(channel, in_axes=2, out_axes=2)(image)

    return jnp.clip(jax.vmap(one)(images, jnp.asarray(angles, float_dtype())), 0.0, 1.0)


def random_rotation(images: jax.Array, key: jax.Array, *, max_degrees: float) -> jax.Array:
    """Rotates each image by its own angle uniform in [-max_degrees, max_degrees] (see ``rotate``).

    Args:
      images: [B, H, W, C], uint8 or float in [0, 1].
      key: PRNG key.
      max_degrees: largest absolute angle in degrees; 0 returns the images unchanged.

    Returns:
      [B, H, W, C] float32 in [0, 1].
    """
    images = to_float(images)
    if max_degrees <= 0:
        return images
    degrees = jax.random.uniform(key, (images.shape[0],), RANDOM_DTYPE, -max_degrees, max_degrees)
    return rotate(images, jnp.deg2rad(degrees))


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


# --------------------------------------------------------------------------------------------
# Composed views


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
