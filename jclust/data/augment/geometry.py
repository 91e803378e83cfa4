"""Geometric augmentations: random shift, random resized crop, flip and rotation."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jclust.data.augment.common import _between, _pair, _where_per_image, to_float
from jclust.precision import RANDOM_DTYPE, float_dtype

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
