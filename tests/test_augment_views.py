"""Augmentations for DeepCluster/ODC/SwAV views: shapes, rng behaviour, identities, oracles."""

import colorsys
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from jclust.data import augment

B, S = 4, 16  # batch and square side: keep compiles and runs tiny


def make_images(channels, batch=B, size=S, seed=0):
    shape = (batch, size, size, channels)
    return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def key(seed=0):
    return jax.random.PRNGKey(seed)


# Every random function with settings that make each step act on (almost) every image.
RANDOM_FNS = {
    "crop": functools.partial(augment.random_resized_crop, out_size=(12, 10)),
    "flip": augment.random_flip,
    "rotation": functools.partial(augment.random_rotation, max_degrees=30.0),
    "jitter": functools.partial(augment.color_jitter, p=1.0),
    "grayscale": functools.partial(augment.random_grayscale, p=0.5),
    "blur": functools.partial(augment.gaussian_blur, p=1.0),
    "view": functools.partial(augment.augment_view, out_size=(12, 12), scale=(0.2, 1.0),
                              max_degrees=10.0, blur_p=0.5),
}
OUT_SHAPES = {"crop": (12, 10), "view": (12, 12)}
# Jitted once here so that tests calling the same function with the same shapes share a compile.
JITTED = {name: jax.jit(fn) for name, fn in RANDOM_FNS.items()}


def jit_call(fn, *args, **static):
    """fn(*args, **static) under jit: one compile of the whole function, cheaper than eager ops."""
    return jax.jit(functools.partial(fn, **static))(*args)


def test_to_float():
    raw = np.array([[[[0], [255]], [[51], [102]]]], dtype=np.uint8)
    np.testing.assert_allclose(augment.to_float(raw)[0, :, :, 0], [[0, 1], [0.2, 0.4]], atol=1e-7)
    flipped = augment.random_flip(raw, key(), p=1.0)  # uint8 in, float32 in [0, 1] out
    assert flipped.dtype == jnp.float32
    np.testing.assert_allclose(flipped[0, :, :, 0], [[1, 0], [0.4, 0.2]], atol=1e-7)
    floats = make_images(3)
    out = augment.to_float(floats.astype(np.float64))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, floats)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(RANDOM_FNS))
def test_shape_dtype_range_under_jit(name, channels):
    out = np.asarray(JITTED[name](make_images(channels), key()))
    assert out.shape == (B, *OUT_SHAPES.get(name, (S, S)), channels)
    assert out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("name", sorted(RANDOM_FNS))
def test_rng_same_key_same_output_and_per_image_parameters(name):
    fn = JITTED[name]
    images = make_images(3)
    first, again, other = fn(images, key(1)), fn(images, key(1)), fn(images, key(2))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    # Copies of one image: independent per-image draws give distinct outputs.
    copies = np.repeat(make_images(3, batch=1), B, axis=0)
    distinct = {np.asarray(view).round(5).tobytes() for view in fn(copies, key(3))}
    assert len(distinct) > 1


def test_identity_settings():
    images = make_images(3)
    np.testing.assert_allclose(
        jit_call(augment.random_resized_crop, images, key(), out_size=(S, S), scale=(1, 1),
                 ratio=(1, 1)), images, atol=1e-5)
    np.testing.assert_array_equal(augment.random_flip(images, key(), p=0.0), images)
    np.testing.assert_array_equal(augment.random_rotation(images, key(), max_degrees=0.0), images)
    np.testing.assert_allclose(jit_call(augment.rotate, images, jnp.zeros(B)), images, atol=1e-6)
    np.testing.assert_array_equal(jit_call(augment.color_jitter, images, key(), p=0.0), images)
    np.testing.assert_array_equal(
        augment.color_jitter(images, key(), brightness=0, contrast=0, saturation=0, hue=0, p=1.0),
        images)
    np.testing.assert_array_equal(augment.random_grayscale(images, key(), p=0.0), images)
    np.testing.assert_array_equal(augment.gaussian_blur(images, key(), p=0.0), images)
    gray = make_images(1)
    np.testing.assert_array_equal(augment.random_grayscale(gray, key(), p=1.0), gray)


def test_flip_always_mirrors():
    images = make_images(3)
    np.testing.assert_array_equal(augment.random_flip(images, key(), p=1.0), images[:, :, ::-1])


def test_rotate_90_degrees_is_rot90():
    images = make_images(2)
    out = np.asarray(augment.rotate(images, jnp.full(B, np.pi / 2)))
    expected = np.rot90(images, k=1, axes=(1, 2))
    np.testing.assert_allclose(out[:, 1:-1, 1:-1], expected[:, 1:-1, 1:-1], atol=1e-5)
    np.testing.assert_allclose(out, expected, atol=1e-3)
    back = np.asarray(augment.rotate(images, jnp.full(B, -np.pi / 2)))
    np.testing.assert_allclose(back, np.rot90(images, k=-1, axes=(1, 2)), atol=1e-3)


def test_rotation_fills_corners_with_zero():
    ones = np.ones((1, S, S, 1), np.float32)
    out = np.asarray(augment.rotate(ones, jnp.array([np.pi / 4])))[0, :, :, 0]
    assert out[0, 0] == 0 and out[-1, -1] == 0
    np.testing.assert_allclose(out[S // 2, S // 2], 1.0, atol=1e-6)


def test_crop_boxes_follow_torchvision_rule():
    boxes = np.asarray(jit_call(augment.sample_crop_boxes, key(), batch_size=64,
                                image_size=(20, 30), scale=(0.1, 0.5), ratio=(0.5, 2.0)))
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 20).all() and (left + w <= 30).all()
    area = h * w / 600
    assert (area > 0.05).all() and (area < 0.6).all()  # scale range, widened by integer rounding
    assert len({tuple(b) for b in boxes}) > 32
    # No candidate can fit: the central fallback with the ratio clamped (torchvision's rule).
    fallback = np.asarray(jit_call(augment.sample_crop_boxes, key(), batch_size=3,
                                   image_size=(10, 20), scale=(1, 1), ratio=(1, 1)))
    np.testing.assert_array_equal(fallback, [[0, 5, 10, 10]] * 3)


def test_crop_and_resize_box_of_output_size_is_a_slice():
    images = make_images(3)
    boxes = jnp.array([[0, 0, 8, 8], [3, 5, 8, 8], [8, 8, 8, 8], [2, 7, 8, 8]])
    out = np.asarray(jit_call(augment.crop_and_resize, images, boxes, out_size=8))
    for image, result, (top, left, _, _) in zip(images, out, np.asarray(boxes)):
        np.testing.assert_allclose(result, image[top:top + 8, left:left + 8], atol=1e-5)


def test_hsv_matches_colorsys():
    pixels = np.concatenate([make_images(3, batch=1, size=5).reshape(-1, 3),
                             [[0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5], [1, 0, 0], [0.2, 0.6, 0.6],
                              [0.3, 0.3, 0.9]]]).astype(np.float32)
    hsv = np.asarray(augment.rgb_to_hsv(pixels))
    np.testing.assert_allclose(hsv, [colorsys.rgb_to_hsv(*p) for p in pixels], atol=1e-6)
    rgb = np.asarray(augment.hsv_to_rgb(jnp.asarray(hsv)))
    np.testing.assert_allclose(rgb, [colorsys.hsv_to_rgb(*p) for p in hsv], atol=1e-6)
    np.testing.assert_allclose(rgb, pixels, atol=1e-6)


def test_adjust_hue_against_colorsys():
    images = make_images(3, size=3)
    shifts = np.array([0.0, 0.1, -0.3, 0.5], np.float32)
    out = np.asarray(augment.adjust_hue(images, jnp.asarray(shifts)))
    np.testing.assert_allclose(out[0], images[0], atol=1e-6)
    for image, result, shift in zip(images, out, shifts):
        for pixel, got in zip(image.reshape(-1, 3), result.reshape(-1, 3)):
            h, s, v = colorsys.rgb_to_hsv(*pixel)
            np.testing.assert_allclose(got, colorsys.hsv_to_rgb((h + shift) % 1.0, s, v), atol=1e-5)


def test_brightness_contrast_saturation_by_hand():
    image = np.array([[[0.2], [0.4]], [[0.6], [1.0]]], np.float32)[None]  # mean 0.55
    np.testing.assert_allclose(augment.adjust_brightness(image, jnp.array([1.5]))[0, ..., 0],
                               [[0.3, 0.6], [0.9, 1.0]], atol=1e-6)  # 1.5 clips to 1
    np.testing.assert_allclose(augment.adjust_contrast(image, jnp.array([0.5]))[0, ..., 0],
                               [[0.375, 0.475], [0.575, 0.775]], atol=1e-6)
    np.testing.assert_allclose(augment.adjust_contrast(image, jnp.array([0.0]))[0, ..., 0],
                               np.full((2, 2), 0.55), atol=1e-6)
    rgb = np.array([[[[1.0, 0.5, 0.0]]]], np.float32)  # luma 0.299 + 0.2935 = 0.5925
    np.testing.assert_allclose(augment.rgb_to_grayscale(rgb)[0, 0, 0], [0.5925], atol=1e-6)
    np.testing.assert_allclose(augment.adjust_contrast(rgb, jnp.array([0.0]))[0, 0, 0],
                               [0.5925] * 3, atol=1e-6)
    np.testing.assert_allclose(augment.adjust_saturation(rgb, jnp.array([0.5]))[0, 0, 0],
                               [0.79625, 0.54625, 0.29625], atol=1e-6)


def test_grayscale_images_get_brightness_and_contrast_only():
    gray = make_images(1)
    out = augment.color_jitter(gray, key(), brightness=0, contrast=0, saturation=0.9, hue=0.5,
                               p=1.0)
    np.testing.assert_array_equal(out, gray)
    assert not np.allclose(augment.color_jitter(gray, key(), p=1.0), gray)


def test_random_grayscale_uses_luma():
    images = make_images(3)
    out = np.asarray(augment.random_grayscale(images, key(), p=1.0))
    luma = images @ np.array(augment.LUMA_WEIGHTS, np.float32)
    np.testing.assert_allclose(out, np.repeat(luma[..., None], 3, axis=-1), atol=1e-6)


def test_blur_matches_scipy_gaussian_filter():
    images = make_images(2)
    sigmas = np.array([0.5, 1.0, 1.5, 2.0], np.float32)
    out = np.asarray(jit_call(augment.blur, images, jnp.asarray(sigmas), kernel_size=9))
    for image, result, sigma in zip(images, out, sigmas):
        # scipy's "mirror" is numpy's (and torchvision's) "reflect"; radius 4 = kernel size 9.
        expected = scipy.ndimage.gaussian_filter(image, sigma=(sigma, sigma, 0), mode="mirror",
                                                 radius=(4, 4, 0))
        np.testing.assert_allclose(result, expected, atol=1e-5)
    constant = np.full((B, S, S, 3), 0.3, np.float32)
    np.testing.assert_allclose(jit_call(augment.gaussian_blur, constant, key(), p=1.0), constant,
                               atol=1e-6)
    assert augment.default_kernel_size(2.0, (28, 28)) == 13
    assert augment.default_kernel_size(2.0, (5, 5)) == 9
    with pytest.raises(ValueError, match="odd"):
        augment.blur(images, jnp.asarray(sigmas), kernel_size=4)


def test_multi_crop_views():
    images = (make_images(1, size=28) * 255).astype(np.uint8)
    views = jit_call(augment.multi_crop, images, key(), large_size=(16, 16), small_size=8,
                     num_large=2, num_small=2)
    assert [v.shape for v in views] == [(B, 16, 16, 1)] * 2 + [(B, 8, 8, 1)] * 2
    assert all(v.dtype == jnp.float32 for v in views)
    assert not np.allclose(views[0], views[1]) and not np.allclose(views[2], views[3])
    # The vmapped views are exactly the views augment_view makes with the split keys.
    first_small = jit_call(augment.augment_view, images, jax.random.split(key(), 4)[2],
                           out_size=8, scale=(0.05, 0.14))
    np.testing.assert_allclose(views[2], first_small, atol=1e-6)
    with pytest.raises(ValueError, match="small_size"):
        augment.multi_crop(images, key(), large_size=12, num_small=2)
