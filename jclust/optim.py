"""Optimisers built from a config section (``optimizer``, ``learning_rate``, ``momentum``,
``lr_schedule``)."""

from __future__ import annotations

import optax

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine", "inverse")


def make_schedule(name: str, learning_rate: float, num_steps: int = 0) -> optax.Schedule | float:
    """Returns the learning rate (a float) or an optax schedule of the step.

    Args:
      name: "constant", "cosine" (from ``learning_rate`` down to 0 at ``num_steps``) or "inverse"
        (Caffe's "inv" policy as JULE uses it: ``learning_rate * (1 + 1e-4 t) ** -0.75``).
      learning_rate: the peak step size.
      num_steps: the length of the phase the schedule runs over (cosine only).
    """
    from jclust.config_lib import ConfigError
    if name == "constant":
        return learning_rate
    if name == "cosine":
        if num_steps <= 0:
            raise ConfigError("a cosine learning-rate schedule needs a phase with a known, "
                              "positive number of steps")
        return optax.cosine_decay_schedule(learning_rate, num_steps)
    if name == "inverse":
        return lambda step: learning_rate * (1.0 + 1e-4 * step) ** -0.75
    raise ConfigError(f"unknown lr_schedule {name!r}; known: {', '.join(SCHEDULES)}")


def make_optimizer(name: str, learning_rate: float, momentum: float = 0.0, *,
                   schedule: str = "constant", num_steps: int = 0) -> optax.GradientTransformation:
    """Returns the optax transformation for ``name`` in {"adam", "sgd"}.

    Args:
      name: "adam" (betas 0.9/0.999, eps 1e-8, optax's and torch's defaults) or "sgd"
        (heavy-ball momentum).
      learning_rate: the (peak) step size.
      momentum: SGD momentum (ignored by Adam); 0 disables it.
      schedule: "constant" or "cosine" (see :func:`make_schedule`).
      num_steps: number of steps of the phase, for the schedule.
    """
    lr = make_schedule(schedule, learning_rate, num_steps)
    if name == "adam":
        return optax.adam(lr)
    if name == "sgd":
        return optax.sgd(lr, momentum=momentum or None)
    from jclust.config_lib import ConfigError
    raise ConfigError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
