"""The linear probe against scikit-learn's LogisticRegression on the same standardised inputs.

Tolerance: L-BFGS stops at a gradient norm of tol = 1e-6; with the objective's curvature at least
l2 = 1e-2 the weights are then within about tol / l2 = 1e-4 of the optimum. Measured (AMD EPYC
Zen 4, 2026-12-04, digits, 3/4 train), against scikit-learn's lbfgs at tol 1e-12 on the float64
standardised inputs: largest probability difference 1.6e-5 at tol 1e-6 (7e-5 at 1e-5, 1e-6 at
1e-7); the test allows 5e-4, 30 times the measurement.
"""

import numpy as np
import pytest
import scipy.special
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from jclust.metrics import linear_probe


@pytest.fixture(scope="module")
def digits_split():
    x, y = load_digits(return_X_y=True)
    train = np.arange(len(x)) % 4 != 0
    return x[train].astype(np.float32), y[train], x[~train].astype(np.float32), y[~train]


def test_matches_scikit_learn_logistic_regression(digits_split):
    train_x, train_y, test_x, test_y = digits_split
    l2 = 1e-2
    out = linear_probe(train_x, train_y, test_x, test_y, l2=l2, tol=1e-6)
    assert out.converged
    standardise = lambda x: (x - out.mean) / out.scale  # noqa: E731
    reference = LogisticRegression(C=1 / (len(train_x) * l2), tol=1e-12, max_iter=10_000).fit(
        standardise(train_x).astype(np.float64), train_y)
    assert out.accuracy == pytest.approx(reference.score(standardise(test_x), test_y))
    ours = scipy.special.softmax(standardise(test_x) @ out.weights + out.biases, axis=1)
    theirs = reference.predict_proba(standardise(test_x))
    assert np.max(np.abs(ours - theirs)) < 5e-4
    assert 0.9 < out.accuracy <= out.train_accuracy  # digits are linearly separable, nearly


def test_constant_features_and_bad_input():
    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    x[:, 1] = 5.0  # a constant feature: scale 1, no division by zero
    y = (x[:, 0] > 0).astype(int)
    out = linear_probe(x, y, x, y)
    assert out.scale[1] == 1.0 and out.accuracy > 0.9
    with pytest.raises(ValueError, match="train_x"):
        linear_probe(x, y[:-1], x, y)
    with pytest.raises(ValueError, match="C >= 2"):
        linear_probe(x, np.zeros(40, int), x, np.zeros(40, int))
