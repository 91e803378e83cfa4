"""Optimisers built from a config section: :func:`make` builds every method's ``optim`` section
(``optimizer``, ``learning_rate``, ``momentum``, ``weight_decay``, ``lr_schedule``), with
per-group rules (:class:`Group`: no momentum on a head, frozen prototypes) in one place."""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine", "inverse", "step")


def make_schedule(name: str, learning_rate: float, num_steps: int = 0, *,
                  decay_factor: float = 1.0, decay_fraction: float = 1.0,
                  warmup_steps: int = 0) -> optax.Schedule | float:
    """Returns the learning rate (a float) or an optax schedule of the step.

    Args:
      name: "constant", "cosine" (from ``learning_rate`` down to 0 at ``num_steps``), "inverse"
        (Caffe's "inv" policy as JULE uses it: ``learning_rate * (1 + 1e-4 t) ** -0.75``) or
        "step" (times ``decay_factor`` from step ``int(decay_fraction * num_steps)`` on, as ODC;
        a factor of 1 is the constant rate).
      learning_rate: the peak step size.
      num_steps: the length of the phase the schedule runs over (cosine and step).
      decay_factor, decay_fraction: the step schedule's drop and where it falls.
      warmup_steps: the rate of step t is multiplied by min(1, (t + 1) / warmup_steps), a linear
        warm-up over a fixed number of steps whatever the data's size (0: none).
    """
    from jclust.config_lib import ConfigError
    if warmup_steps < 0:
        raise ConfigError(f"config.optim.warmup_steps must be >= 0, got {warmup_steps}")
    schedule = _schedule(name, learning_rate, num_steps, decay_factor, decay_fraction)
    if not warmup_steps:
        return schedule

    def warmed_up(step):
        rate = schedule(step) if callable(schedule) else schedule
        return rate * jnp.minimum(1.0, (step + 1) / warmup_steps)
    return warmed_up


def input_power_scale(x: jax.Array, max_power: float) -> jax.Array:
    """Normalised SGD, as normalised LMS: the factor min(1, ``max_power`` / P) for a loss, where
    P is the batch's mean squared norm of its examples (x [B, ...] float, each example
    flattened), held out of the gradient.

    SGD's stable rate falls as the inputs' power grows (the first layer's curvature grows with
    E||x||^2), so a rate tuned on one kind of data diverges on brighter or wider inputs; with the
    factor a step's size falls as 1/P once P passes ``max_power``. Below it the factor is exactly
    1 (the loss and its gradient unchanged); ``max_power`` 0 turns it off.
    """
    if max_power <= 0:
        return jnp.ones((), x.dtype)
    power = jnp.mean(jnp.sum(jnp.square(x.reshape(x.shape[0], -1)), axis=-1))
    return jax.lax.stop_gradient(jnp.minimum(1.0, max_power / power))


def input_power_cap(optimizer: str, max_power: float) -> float:
    """The ``max_power`` of :func:`input_power_scale` for a section's ``optimizer``: as set for
    SGD, 0 (off) for Adam, whose steps do not scale with the gradient."""
    return max_power if optimizer == "sgd" else 0.0


def _schedule(name: str, learning_rate: float, num_steps: int, decay_factor: float,
              decay_fraction: float) -> optax.Schedule | float:
    from jclust.config_lib import ConfigError
    if name == "constant" or (name == "step" and decay_factor == 1.0):
        return learning_rate
    if name == "step":
        return optax.piecewise_constant_schedule(
            learning_rate, {int(decay_fraction * num_steps): decay_factor})
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
    """Returns the optax transformation for ``name`` in {"adam", "sgd"} (DEC's two sections,
    which have no weight decay; every ``optim`` section goes through :func:`make`).

    Args:
      name: "adam" (betas 0.9/0.999, eps 1e-8, optax's and torch's defaults) or "sgd"
        (heavy-ball momentum).
      learning_rate: the (peak) step size.
      momentum: SGD momentum (ignored by Adam); 0 disables it.
      schedule: "constant" or "cosine" (see :func:`make_schedule`).
      num_steps: number of steps of the phase, for the schedule.
    """
    return _optimizer(name, make_schedule(schedule, learning_rate, num_steps), momentum)


def _optimizer(name: str, learning_rate: optax.ScalarOrSchedule,
               momentum: float) -> optax.GradientTransformation:
    if name == "adam":
        return optax.adam(learning_rate)
    if name == "sgd":
        return optax.sgd(learning_rate, momentum=momentum or None)
    from jclust.config_lib import ConfigError
    raise ConfigError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")


class Group(NamedTuple):
    """How one top-level part of the parameters trains, relative to the section's optimiser.

    Attributes:
      weight_decay: whether the section's weight decay applies (decoupled, before the optimiser).
      momentum: whether the section's momentum applies (SGD).
      frozen_steps: None: trained throughout; -1: never updated (no decay, no momentum);
        N >= 0: no update before step N (the part's own count), then as the rest.
    """
    weight_decay: bool = True
    momentum: bool = True
    frozen_steps: int | None = None


def make(section: Any, num_steps: int, groups: Mapping[str, Group] | None = None,
         rest: str = "train") -> optax.GradientTransformation:
    """The optimiser of a phase from a config's ``optim`` section.

    Each group trains as ``chain(add_decayed_weights(weight_decay), optimizer(schedule,
    momentum))`` with the :class:`Group`'s exceptions.

    Args:
      section: ``learning_rate`` and optionally ``optimizer`` (default "sgd"), ``momentum`` (0),
        ``weight_decay`` (0), ``lr_schedule`` ("constant"), ``lr_decay_factor`` and
        ``lr_decay_fraction`` (the "step" schedule's), ``warmup_steps`` (0).
      num_steps: the phase's length, for the schedule.
      groups: top-level parameter parts (keys of the params dict) that train by other rules;
        each part is its own ``optax.multi_transform`` label. None: one rule for all parameters.
      rest: the label of every other part.
    """
    from jclust.config_lib import ConfigError
    if section.get("lr_schedule") != "step" and section.get("lr_decay_factor", 1.0) != 1.0:
        raise ConfigError("config.optim.lr_decay_factor applies to lr_schedule='step' only; set "
                          "optim.lr_schedule=step or the factor to 1")
    schedule = make_schedule(section.get("lr_schedule", "constant"), section.learning_rate,
                             num_steps, decay_factor=section.get("lr_decay_factor", 1.0),
                             decay_fraction=section.get("lr_decay_fraction", 1.0),
                             warmup_steps=section.get("warmup_steps", 0))
    name = section.get("optimizer", "sgd")

    def transform(group: Group) -> optax.GradientTransformation:
        if group.frozen_steps == -1:
            return optax.set_to_zero()
        momentum = section.get("momentum", 0.0) if group.momentum else 0.0
        tx = _optimizer(name, schedule, momentum)
        if group.weight_decay:
            tx = optax.chain(optax.add_decayed_weights(section.get("weight_decay", 0.0)), tx)
        if group.frozen_steps is not None:
            frozen_steps = group.frozen_steps
            return optax.conditionally_mask(tx, lambda count: count >= frozen_steps)
        return tx

    if groups is None:
        return transform(Group())
    transforms = {rest: transform(Group()), **{part: transform(g) for part, g in groups.items()}}
    return optax.multi_transform(
        transforms, lambda params: {part: jax.tree.map(lambda _: part if part in groups else rest,
                                                       params[part]) for part in params})
