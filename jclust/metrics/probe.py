"""Linear probe: how linearly separable the classes are in a representation.

Multinomial logistic regression on features standardised with the training split's statistics,
fitted to convergence with L-BFGS (optax) in jax.numpy, scored on a held-out split. Labels are
used only here, to score a representation after the fact, never by a clustering method. The
objective is scikit-learn's ``LogisticRegression(C=1 / (N * l2))`` (mean cross-entropy plus
``l2 / 2 * |W|^2``, no penalty on the biases): the tests check the two agree.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


class ProbeOutput(NamedTuple):
    """A fitted probe.

    Attributes:
      accuracy: fraction of the held-out examples classified right.
      train_accuracy: the same on the training split.
      weights: [D, C] on standardised features; biases: [C].
      mean, scale: [D] the training split's standardisation (scale 1 where a feature is constant).
      iterations: L-BFGS iterations run; converged: whether the gradient norm reached ``tol``.
    """
    accuracy: float
    train_accuracy: float
    weights: np.ndarray
    biases: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    iterations: int
    converged: bool


def _objective(params, x, y, l2):
    weights, biases = params
    logits = jnp.matmul(x, weights, precision=jax.lax.Precision.HIGHEST) + biases
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return cross_entropy + 0.5 * l2 * jnp.sum(jnp.square(weights))


def _fit(x, y, l2, num_classes, max_iter, tol):
    objective = lambda params: _objective(params, x, y, l2)  # noqa: E731
    params = (jnp.zeros((x.shape[1], num_classes), x.dtype), jnp.zeros((num_classes,), x.dtype))
    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def step(carry):
        params, state, _, i = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(grad, state, params, value=value, grad=grad,
                                       value_fn=objective)
        return optax.apply_updates(params, updates), state, optax.tree.norm(grad), i + 1

    def running(carry):
        return (carry[2] > tol) & (carry[3] < max_iter)

    init = (params, solver.init(params), jnp.asarray(jnp.inf, x.dtype), jnp.asarray(0))
    params, _, grad_norm, iterations = jax.lax.while_loop(running, step, init)
    return params, grad_norm, iterations


def linear_probe(train_x, train_y, test_x, test_y, *, l2: float = 1e-4, max_iter: int = 500,
                 tol: float = 1e-5) -> ProbeOutput:
    """Fits a multinomial logistic regression on one split and scores it on another.

    Args:
      train_x: [N, D] features; train_y: [N] int labels in [0, C).
      test_x: [M, D]; test_y: [M] int labels.
      l2: weight of ``l2 / 2 * |W|^2`` beside the mean cross-entropy.
      max_iter: L-BFGS iterations at most.
      tol: stop once the gradient's norm is below this.

    Returns:
      :class:`ProbeOutput`.

    Raises:
      ValueError: shapes that do not match, fewer than 2 classes, or labels < 0.
    """
    train_x, test_x = np.asarray(train_x, np.float32), np.asarray(test_x, np.float32)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    if (train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]
            or train_y.shape != (len(train_x),) or test_y.shape != (len(test_x),)):
        raise ValueError(f"need train_x [N, D], train_y [N], test_x [M, D], test_y [M]; got "
                         f"{train_x.shape}, {train_y.shape}, {test_x.shape}, {test_y.shape}")
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    if num_classes < 2 or min(train_y.min(), test_y.min()) < 0:
        raise ValueError("labels must be 0..C-1 with C >= 2")
    mean = train_x.mean(0)
    scale = train_x.std(0)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    standardise = lambda x: (x - mean) / scale  # noqa: E731
    fit = jax.jit(_fit, static_argnums=(3, 4))
    (weights, biases), grad_norm, iterations = fit(
        jnp.asarray(standardise(train_x)), jnp.asarray(train_y, jnp.int32), l2, num_classes,
        max_iter, tol)
    weights, biases = np.asarray(weights), np.asarray(biases)
    predict = lambda x: np.argmax(standardise(x) @ weights + biases, axis=1)  # noqa: E731
    return ProbeOutput(accuracy=float(np.mean(predict(test_x) == test_y)),
                       train_accuracy=float(np.mean(predict(train_x) == train_y)),
                       weights=weights, biases=biases, mean=mean, scale=scale,
                       iterations=int(iterations), converged=bool(grad_norm <= tol))
