"""Optimisers built from a config section (``name``, ``learning_rate``, ``momentum``)."""

from __future__ import annotations

import optax

OPTIMIZERS = ("adam", "sgd")


def make_optimizer(name: str, learning_rate: float, momentum: float = 0.0) -> optax.GradientTransformation:
    """Returns the optax transformation for ``name`` in {"adam", "sgd"}.

    Args:
      name: "adam" (betas 0.9/0.999, eps 1e-8, optax's and torch's defaults) or "sgd"
        (heavy-ball momentum).
      learning_rate: the step size.
      momentum: SGD momentum (ignored by Adam); 0 disables it.
    """
    if name == "adam":
        return optax.adam(learning_rate)
    if name == "sgd":
        return optax.sgd(learning_rate, momentum=momentum or None)
    from jclust.config_lib import ConfigError
    raise ConfigError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
