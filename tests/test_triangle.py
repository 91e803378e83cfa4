"""Triangle encoding (Coates, Lee & Ng 2011) by hand, against a float64 NumPy reference, jitted
and not.

Tolerance: the reference is computed in float64 from the same float32 inputs; the largest
relative drift measured (AMD EPYC Zen 4, 2026-12-04; max |got - want| / max |want|) was 1.7e-7
for 1280-d non-negative features with k-means centroids (some examples are their own cluster's
centroid: distance 0); RTOL = 5e-6 is 30 times that. The expanded distance
|x|^2 - 2x.c + |c|^2 fails it (9e-4: cancellation at small distances).
"""

import chex
import jax
import numpy as np
import pytest
from absl.testing import absltest

from jclust.cluster import centroid_distances, kmeans, triangle_encode

RTOL = 5e-6


def numpy_triangle(x, centroids):
    """f_k = max(0, mean_j z_j - z_k), z_k = ||x - c_k||, in float64."""
    x, centroids = np.asarray(x, np.float64), np.asarray(centroids, np.float64)
    z = np.sqrt(((x[:, None, :] - centroids[None]) ** 2).sum(-1))
    return np.maximum(z.mean(1, keepdims=True) - z, 0.0)


def relative_drift(got, want):
    return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want)))


def test_hand_computed_one_dimension():
    # x = 0 against centroids at -1, 2 and 6: z = (1, 2, 6), mean 3 -> codes (2, 1, 0).
    codes = triangle_encode(np.zeros((1, 1), np.float32), np.array([[-1.0], [2.0], [6.0]],
                                                                     np.float32))
    np.testing.assert_allclose(codes, [[2.0, 1.0, 0.0]], atol=1e-6)
    # Equidistant centroids: every z equals the mean, the code is all zeros.
    codes = triangle_encode(np.zeros((1, 2), np.float32),
                            np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], np.float32))
    np.testing.assert_allclose(codes, 0.0, atol=1e-6)


def test_zeros_and_the_mean_property():
    """sum_k (mean z - z_k) = 0: the positive codes sum to the total of the negative parts, and
    every centroid farther than the mean distance is coded 0."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8)).astype(np.float32)
    centroids = rng.normal(size=(12, 8)).astype(np.float32)
    codes = np.asarray(triangle_encode(x, centroids), np.float64)
    z = np.asarray(centroid_distances(x, centroids), np.float64)
    unclipped = z.mean(1, keepdims=True) - z
    np.testing.assert_allclose(unclipped.sum(1), 0.0, atol=1e-5)
    assert np.all(codes[z > z.mean(1, keepdims=True)] == 0.0)
    np.testing.assert_allclose(codes.sum(1), np.maximum(-unclipped, 0).sum(1), rtol=1e-5)
    assert np.all((codes > 0).sum(1) <= 11)  # never all K positive (K - 1 at most)


def test_bad_shapes_are_errors():
    with pytest.raises(ValueError, match="same D|centroids"):
        triangle_encode(np.zeros((3, 4), np.float32), np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="K >= 2"):
        triangle_encode(np.zeros((3, 4), np.float32), np.zeros((1, 4), np.float32))


class TriangleVariants(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_the_float64_reference_on_k_means_centroids(self):
        rng = np.random.default_rng(1)
        x = np.abs(rng.normal(size=(300, 1280))).astype(np.float32)  # ReLU-like deep features
        centroids = kmeans(x, 16, key=jax.random.PRNGKey(0), n_init=1,
                           max_iter=20).centroids
        codes = self.variant(triangle_encode)(x, centroids)
        chex.assert_shape(codes, (300, 16))
        assert relative_drift(codes, numpy_triangle(x, centroids)) <= RTOL


if __name__ == "__main__":
    absltest.main()


# The method: k-means codebooks per layer, fused triangle codes, K clusters (no training step).


def _triangle_config(source, **overrides):
    from jclust import config_lib
    from tests.conftest import ROOT
    import os
    config = config_lib.load_config(os.path.join(ROOT, "configs", f"triangle.py:npz:{source}"))
    return config_lib.apply_overrides(config, {"triangle.layer_widths": (32, 32),
                                               "triangle.codebook_sizes": (16, 24), **overrides})


def test_method_end_to_end_its_fused_codes_and_predict(digits_features, tmp_path):
    from jclust import inference, predict, train
    from jclust.methods import triangle
    path, x, y = digits_features
    workdir = str(tmp_path / "run")
    final = train.train_and_evaluate(_triangle_config(path), workdir)
    assert final["step"] == 0 and final["acc"] > 0.5  # 10 digit classes, chance 0.1
    _, method, state, _ = inference.load_run(workdir)
    fitted = jax.device_get(state.eval)
    np.testing.assert_allclose(fitted.mean, x.mean(0), rtol=1e-5, atol=1e-4)
    assert [c.shape for c in fitted.codebooks] == [(16, 32), (24, 32)]
    # The fused code again in float64 NumPy from the fitted codebooks: blocks of unit norm.
    standard = (x - fitted.mean) / fitted.scale
    blocks = [numpy_triangle(standard[:, s], c) for s, c in
              zip(triangle.layer_slices((32, 32)), fitted.codebooks)]
    codes = np.concatenate([b / np.linalg.norm(b, axis=1, keepdims=True) for b in blocks], 1)
    ours = np.asarray(triangle.fused_codes(fitted, x, (32, 32)), np.float64)
    assert relative_drift(ours, codes) <= RTOL
    np.testing.assert_allclose(np.linalg.norm(ours[:, :16], axis=1), 1.0, rtol=1e-5)
    # The assignment is the nearest centroid by cosine; predict reproduces the evaluation.
    labels = np.argmax(codes / np.linalg.norm(codes, axis=1, keepdims=True)
                       @ np.asarray(fitted.centroids, np.float64).T, axis=1)
    prediction = predict.predict(workdir, f"npz:{path}")
    assert np.mean(prediction.labels == labels) > 0.999  # ties at float32 rounding, if any
    assert prediction.summary["acc"] == pytest.approx(final["acc"])
    # The method's similarity (scored by the similarity benchmark) is the cosine of those codes.
    predictor = predict.Predictor.from_workdir(workdir)
    data, _ = predict.load_data(predictor, f"npz:{path}")
    np.testing.assert_allclose(predictor.similarity_data(data), ours, rtol=0, atol=1e-6)


@pytest.mark.parametrize("overrides,match", [
    ({"triangle.layer_widths": (30, 30)}, "sum to 60"),
    ({"triangle.codebook_sizes": (16,)}, "one size >= 2 per layer"),
    ({"triangle.codebook_sizes": (16, 1)}, "one size >= 2 per layer"),
    ({"triangle.codebook_sizes": (16, 5000)}, "more centroids than"),
    ({"triangle.n_init": 0}, "n_init must be >= 1"),
])
def test_bad_triangle_configs_are_config_errors(digits_features, tmp_path, overrides, match):
    from jclust import config_lib, train
    with pytest.raises(config_lib.ConfigError, match=match):
        train.train_and_evaluate(_triangle_config(digits_features[0], **overrides),
                                 str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_images_are_refused_with_the_fix(tmp_path):
    from jclust import config_lib, train
    config = _triangle_config("unused", **{"data.source": "digits", "data.image_shape": (8, 8, 1)})
    with pytest.raises(config_lib.ConfigError, match="data.backbone"):
        train.train_and_evaluate(config, str(tmp_path / "run"))
