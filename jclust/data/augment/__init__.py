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

The ops live in ``geometry`` (shift, crop, flip, rotation), ``photometric`` (colour, grayscale,
blur) and ``views`` (the composed views), on the helpers of ``common``; the public names are all
here.
"""

from jclust.data.augment.common import to_float
from jclust.data.augment.geometry import (crop_and_resize, random_flip, random_resized_crop,
                                          random_rotation, random_shift, rotate,
                                          sample_crop_boxes)
from jclust.data.augment.photometric import (LUMA_WEIGHTS, adjust_brightness, adjust_contrast,
                                             adjust_hue, adjust_saturation, blur, color_jitter,
                                             default_kernel_size, gaussian_blur, hsv_to_rgb,
                                             random_grayscale, rgb_to_grayscale, rgb_to_hsv)
from jclust.data.augment.views import augment_view, multi_crop

__all__ = ["LUMA_WEIGHTS", "adjust_brightness", "adjust_contrast", "adjust_hue",
           "adjust_saturation", "augment_view", "blur", "color_jitter", "crop_and_resize",
           "default_kernel_size", "gaussian_blur", "hsv_to_rgb", "multi_crop", "random_flip",
           "random_grayscale", "random_resized_crop", "random_rotation", "random_shift",
           "rgb_to_grayscale", "rgb_to_hsv", "rotate", "sample_crop_boxes", "to_float"]
