import jax
import numpy as np

from jclust.data import augment


def test_random_shift_matches_numpy_translation():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 255, size=(5, 6, 7, 2), dtype=np.uint8)
    key = jax.random.PRNGKey(3)
    out = np.asarray(jax.jit(augment.random_shift, static_argnums=2)(images, key, 2))
    offsets = np.asarray(jax.random.randint(key, (5, 2), 0, 5)) - 2
    for image, result, (dy, dx) in zip(images, out, offsets):
        expected = np.zeros_like(image)
        # Content moves by (-dy, -dx): output[i, j] = input[i + dy, j + dx] where inside.
        for i in range(6):
            for j in range(7):
                if 0 <= i + dy < 6 and 0 <= j + dx < 7:
                    expected[i, j] = image[i + dy, j + dx]
        np.testing.assert_array_equal(result, expected)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(augment.random_shift(images, key, 0), images)
