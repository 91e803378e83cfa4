"""Tests for jclust.models.hog: skimage.feature.hog reproduced, and the HOG-LDA whitening checked
against a float64 NumPy/SciPy reference."""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import skimage.data
from skimage.feature import hog as skimage_hog

from jclust.models import hog as H
from tests.conftest import x64_mode

# Tolerance of jclust's HOG against skimage's, relative to the largest feature of skimage's
# vector. Measured over the cases of test_matches_skimage (camera crops, a Fashion-MNIST-like
# image, orientations 6/9/18, every block norm; AMD EPYC, 2 cores): float32 jclust vs skimage
# <= 2.6e-7, float64 jclust (x64 mode) vs skimage <= 1.0e-7 (skimage sums its cells in a C float,
# so it is float32-rounded itself), float32 vs float64 jclust <= 2.3e-7. The bins are decided
# exactly for 8-bit images (test_orientation_bins_of_every_8bit_gradient), so what is left is
# rounding of a few float32 operations per feature; held to 3e-6, ~10x the largest drift.
RTOL = 3e-6


def _pair(v):
    return (v, v) if isinstance(v, int) else v


def _skimage(image, *, pixels_per_cell, cells_per_block, orientations=9, block_norm="L2-Hys",
             channel_axis=None):
    return skimage_hog(image, orientations=orientations, pixels_per_cell=_pair(pixels_per_cell),
                       cells_per_block=_pair(cells_per_block), block_norm=block_norm,
                       feature_vector=True, channel_axis=channel_axis)


def _fashion_like(seed=0):
    """A 28 x 28 uint8 image like Fashion-MNIST's: an object of random pixels on a 0 background."""
    rng = np.random.default_rng(seed)
    image = np.zeros((28, 28), np.uint8)
    image[3:25, 6:22] = rng.integers(0, 256, (22, 16))
    image[10:14, 2:26] = rng.integers(100, 256, (4, 24))
    return image


_CAMERA = skimage.data.camera()
CASES = {
    "camera64_cell8_block2": (_CAMERA[100:164, 200:264], 8, 2),
    "camera28_cell4_block2": (_CAMERA[300:328, 50:78], 4, 2),
    "camera64_cell7x6_block3": (_CAMERA[200:264, 300:364], (7, 6), 3),
    "camera30x37_cell3x5_block2x3": (_CAMERA[20:50, 400:437], (3, 5), (2, 3)),
    "fashion_like_cell4_block2": (_fashion_like(), 4, 2),
}


def _assert_close(got, want, rtol=RTOL):
    scale = np.abs(want).max()
    np.testing.assert_allclose(np.asarray(got, np.float64) / scale, want / scale, rtol=0, atol=rtol)


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_skimage(case):
    image, cell, block = CASES[case]
    for orientations, norms in ((9, H.BLOCK_NORMS), (6, ("L2-Hys",)), (18, ("L1",))):
        for norm in norms:
            kwargs = dict(pixels_per_cell=cell, cells_per_block=block,
                          orientations=orientations, block_norm=norm)
            want = _skimage(image, **kwargs)
            got = H.hog(image[None], **kwargs)
            assert got.shape == (1,) + want.shape and got.dtype == np.float32
            _assert_close(got[0], want)


def test_matches_skimage_in_float64_and_on_float_images():
    image, cell, block = CASES["camera28_cell4_block2"]
    with x64_mode():
        got = H.hog(image[None], pixels_per_cell=cell, cells_per_block=block)
    assert got.dtype == np.float64
    _assert_close(got[0], _skimage(image, pixels_per_cell=cell, cells_per_block=block))
    # Float pixels are used as given (no rescaling), as skimage does; random values stay ~1e-6
    # degrees away from the bin edges with probability ~1 - 1e-4 per image.
    noise = np.random.default_rng(1).random((32, 32))
    _assert_close(H.hog(noise[None].astype(np.float32), pixels_per_cell=4, cells_per_block=2)[0],
                  _skimage(noise.astype(np.float32), pixels_per_cell=4, cells_per_block=2))


def test_colour_takes_the_channel_of_largest_gradient():
    image = skimage.data.astronaut()[100:164, 150:214]
    for norm in ("L2-Hys", "L1-sqrt"):
        want = _skimage(image, pixels_per_cell=8, cells_per_block=2, block_norm=norm,
                        channel_axis=-1)
        _assert_close(H.hog(image[None], pixels_per_cell=8, block_norm=norm)[0], want)
    grey = _CAMERA[:40, :40]
    np.testing.assert_array_equal(H.hog(grey[None, ..., None]), H.hog(grey[None]))


def test_orientation_bins_of_every_8bit_gradient():
    """Every gradient pair of an 8-bit image, in float32, lands in skimage's bin: float64 degrees
    ``rad2deg(atan2(g_row, g_col)) % 180`` against skimage's float32 edges. Exceptions: 25, 31 and
    35 orientations, where 10 of the 261,121 pairs lie within float32 rounding (~1e-5 degrees) of
    an edge (9 and 18 bins: no pair within 6e-4 degrees of an edge but 0, 45, 90, 135, set exactly)."""
    g = np.arange(-255.0, 256.0)
    g_row, g_col = np.meshgrid(g, g, indexing="ij")
    degrees = np.rad2deg(np.arctan2(g_row, g_col)) % 180
    rows, cols = jnp.asarray(g_row, jnp.float32), jnp.asarray(g_col, jnp.float32)
    for orientations in (1, 2, 3, 4, 6, 8, 9, 12, 16, 18, 20, 24, 36):
        want = np.sum(degrees[..., None] >= H._bin_edges(orientations), axis=-1)
        got = np.asarray(H.orientation_bins(rows, cols, orientations))
        np.testing.assert_array_equal(got, want, err_msg=f"{orientations} orientations")


def _numpy_cells(image, cell, orientations):
    """skimage's cell grid (its _hoghistogram), in float64 NumPy."""
    x = image.astype(np.float64)
    g_row, g_col = np.zeros_like(x), np.zeros_like(x)
    g_row[1:-1], g_col[:, 1:-1] = x[2:] - x[:-2], x[:, 2:] - x[:, :-2]
    bins = np.sum((np.rad2deg(np.arctan2(g_row, g_col)) % 180)[..., None]
                  >= H._bin_edges(orientations), axis=-1)
    ny, nx = x.shape[0] // cell, x.shape[1] // cell
    votes = np.hypot(g_row, g_col)[..., None] * (bins[..., None] == np.arange(orientations))
    return votes[:ny * cell, :nx * cell].reshape(ny, cell, nx, cell, -1).mean(axis=(1, 3))


def test_cell_histograms_and_their_blocks():
    image = CASES["camera30x37_cell3x5_block2x3"][0]
    cells = H.cell_histograms(image[None], pixels_per_cell=3, orientations=7)
    assert cells.shape == (1, 10, 12, 7)
    want = _numpy_cells(image, 3, 7)
    _assert_close(cells[0], want)
    blocks = H.normalize_blocks(jnp.asarray(cells), cells_per_block=2, block_norm="L2")
    np.testing.assert_allclose(np.asarray(blocks).reshape(-1),
                               H.hog(image[None], pixels_per_cell=3, orientations=7,
                                     block_norm="L2")[0], rtol=1e-6, atol=1e-7)


def test_batched_equals_per_image():
    images = np.stack([_fashion_like(seed) for seed in range(5)])
    batched = H.hog(images, batch_size=2)  # two full batches and a padded one
    for i, image in enumerate(images):
        np.testing.assert_allclose(batched[i], H.hog(image[None])[0], rtol=1e-6, atol=1e-7)


def test_rejects_bad_arguments():
    image = np.zeros((1, 28, 28), np.uint8)
    with pytest.raises(ValueError, match="too small"):
        H.hog(image, pixels_per_cell=8, cells_per_block=4)
    with pytest.raises(ValueError, match="block_norm"):
        H.hog(image, block_norm="L3")
    with pytest.raises(ValueError, match="images must be"):
        H.hog(np.zeros((28, 28)))
    assert H.default_config(28, 28).pixels_per_cell == 4
    assert H.default_config(96, 64).pixels_per_cell == 8


def _correlated(n=3000, d=24, seed=0):
    """HOG-scaled features (entries ~0.1) with a spread of variances."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) * np.linspace(0.3, 0.01, d)[:, None]
    return (rng.normal(size=(n, d)) @ mixing + 0.1).astype(np.float32)


def test_whitening_matches_a_float64_reference():
    x = _correlated()
    ridge = 0.02
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=0)
    cov = (x64 - mean).T @ (x64 - mean) / len(x64)
    chol = scipy.linalg.cholesky(cov + ridge * np.eye(cov.shape[0]), lower=True)
    whitened_ref = scipy.linalg.solve_triangular(chol, (x64 - mean).T, lower=True).T

    fitted = H.fit_hog_whitening(x, ridge=ridge, chunk_size=700)  # 5 chunks, the last padded
    np.testing.assert_allclose(fitted.mean, mean, rtol=0, atol=1e-6 * np.abs(mean).max())
    np.testing.assert_allclose(fitted.chol, chol, rtol=0, atol=1e-5 * np.abs(chol).max())
    whitened = H.apply_hog_whitening(fitted, x, chunk_size=1000)
    np.testing.assert_allclose(whitened, whitened_ref, rtol=0, atol=1e-4)

    # Mean 0 and covariance I minus the ridge's share: L^-1 cov L^-T = I - ridge L^-1 L^-T.
    inv = scipy.linalg.solve_triangular(chol, np.eye(len(chol)), lower=True)
    expected_cov = np.eye(len(chol)) - ridge * inv @ inv.T
    w64 = whitened.astype(np.float64)
    np.testing.assert_allclose(w64.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(w64.T @ w64 / len(w64), expected_cov, atol=1e-4)
    assert np.abs(expected_cov - np.eye(len(chol))).max() > 0.1  # the ridge matters here

    one_chunk = H.fit_hog_whitening(x, ridge=ridge)
    pooled = H.fit_hog_whitening([x[:1234], x[1234:]], ridge=ridge, chunk_size=500)
    for other in (one_chunk, pooled):
        np.testing.assert_allclose(other.chol, fitted.chol, rtol=0, atol=1e-5 * np.abs(chol).max())


def test_whitening_rejects_bad_input():
    with pytest.raises(ValueError, match="positive definite"):
        H.fit_hog_whitening(np.ones((10, 3), np.float32), ridge=0.0)
    with pytest.raises(ValueError, match="at least 2"):
        H.fit_hog_whitening(np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        H.apply_hog_whitening(H.fit_hog_whitening(_correlated(d=4)), np.ones((2, 5)))


def test_features_with_mirror_and_max_similarity():
    images = np.stack([_fashion_like(seed) for seed in range(40)])
    out = H.hog_features_with_mirror(images, ridge=0.05)
    plain, mirrored = H.hog(images), H.hog(images[:, :, ::-1])
    np.testing.assert_allclose(out.whitening.chol,
                               H.fit_hog_whitening([plain, mirrored], ridge=0.05).chol, atol=1e-6)
    np.testing.assert_allclose(out.features, H.apply_hog_whitening(out.whitening, plain), atol=1e-6)
    np.testing.assert_allclose(out.mirrored, H.apply_hog_whitening(out.whitening, mirrored),
                               atol=1e-6)
    # An image and its mirror: the mirror matches i's mirrored features exactly.
    pair = H.hog_features_with_mirror(np.stack([images[0], images[0, :, ::-1]]),
                                      whitening=out.whitening)
    np.testing.assert_allclose(pair.features[1], out.mirrored[0], atol=1e-5)
    q, m = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (pair.features, pair.mirrored))
    sim, flip = H.mirrored_max_similarity(q, q, m)
    np.testing.assert_allclose(sim, np.maximum(q @ q.T, q @ m.T), rtol=1e-5)
    assert bool(flip[0, 1]) and bool(flip[1, 0]) and not bool(flip[0, 0])
