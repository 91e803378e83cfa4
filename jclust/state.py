"""The training state, where it lives on the devices, and the pure jitted train step.

A ``TrainState`` is an immutable pytree saved whole by Orbax. Everything in it is replicated over
the 1-D ``data`` mesh except the clustering state's per-example leaves (``Method.example_axes``),
which are split along ``data``. The train step is a pure function of (state, batch): its rng is
``fold_in(state.rng, state.step)``, so a resumed run draws what the uninterrupted one did.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jclust import distributed
from jclust import methods as jmethods
from jclust import precision


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training; an immutable pytree saved whole by Orbax.

    Attributes:
      step: scalar int32, number of train steps done.
      rng: [2] uint32, the run's base key; per-step keys are ``fold_in(rng, step)``.
      params: trainable parameters (network, centroids, prototypes...).
      model_state: non-trainable network state (e.g. batch statistics).
      opt_states: one optimiser state per phase.
      cluster: the method's clustering state.
      eval: what the method's ``evaluation`` rule fitted at the last evaluation (``{}`` for a
        method without one), replicated.
    """
    step: jax.Array
    rng: jax.Array
    params: Any
    model_state: Any
    opt_states: tuple
    cluster: Any
    eval: Any


TrainStep = Callable[[TrainState, dict], tuple[TrainState, dict]]


def init_state(method: jmethods.Method, seed: int, sample_x: np.ndarray) -> TrainState:
    """Creates the initial TrainState. sample_x: [B, ...] a batch of inputs (shapes only)."""
    rng = jax.random.PRNGKey(seed)
    init_rng, run_rng = jax.random.split(rng)
    # Flax creates float32 parameters whatever the x64 mode: cast (identity in float32 mode).
    params, model_state, cluster = precision.cast_floats(
        method.init(init_rng, jnp.asarray(sample_x)))
    opt_states = tuple(phase.tx.init(params) for phase in method.phases)
    evaluation = {}
    if method.evaluation is not None:
        features = jax.eval_shape(method.embed, params, model_state, jnp.asarray(sample_x))
        evaluation = precision.cast_floats(method.evaluation.init(features.shape[-1]))
    return TrainState(step=jnp.zeros((), jnp.int32), rng=run_rng, params=params,
                      model_state=model_state, opt_states=opt_states, cluster=cluster,
                      eval=evaluation)


def make_mesh() -> Mesh:
    """A 1-D ``data`` mesh over all devices of all processes (Auto axis type: ENVIRONMENT.md §d),
    each process's devices contiguous."""
    return Mesh(distributed.mesh_devices(), ("data",))


def state_sharding(method: jmethods.Method, mesh: Mesh, num_examples: int) -> TrainState:
    """Where each part of the TrainState lives: a pytree prefix of NamedShardings.

    Everything is replicated except the clustering state's per-example leaves (``method.
    example_axes``), which are split along ``data`` over their example axis, so that memories and
    pseudo-labels of N examples cost N/devices per device. When N is not a multiple of the number
    of devices they stay replicated (see :func:`sharding_summary`).
    """
    replicated = NamedSharding(mesh, P())
    cluster = replicated
    if method.example_axes is not None and num_examples % mesh.size == 0:
        cluster = jax.tree.map(
            lambda axis: replicated if axis is None
            else NamedSharding(mesh, P(*([None] * axis), "data")),
            method.example_axes, is_leaf=lambda x: x is None)
    return TrainState(step=replicated, rng=replicated, params=replicated, model_state=replicated,
                      opt_states=replicated, cluster=cluster, eval=replicated)


def sharding_summary(method: jmethods.Method, mesh: Mesh, state: TrainState) -> str | None:
    """One log line saying which per-example clustering state is sharded (None if there is none)."""
    if method.example_axes is None:
        return None
    per_example = [
        f"{jax.tree_util.keystr(path)} {list(leaf.shape)}"
        for (path, axis), leaf in zip(
            jax.tree_util.tree_leaves_with_path(method.example_axes, is_leaf=lambda x: x is None),
            jax.tree.leaves(state.cluster))
        if axis is not None]
    sharded = any(isinstance(x, jax.Array) and not x.sharding.is_fully_replicated
                  for x in jax.tree.leaves(state.cluster))
    if sharded:
        return (f"per-example clustering state sharded along data over {mesh.size} devices: "
                + ", ".join(per_example))
    if mesh.size > 1:
        return ("per-example clustering state replicated (the number of examples is not a "
                f"multiple of the {mesh.size} devices): " + ", ".join(per_example))
    return None


# fold_in constant giving a phase's ``cluster_update`` a key independent of its loss's.
CLUSTER_UPDATE_STREAM = 0xC1A5


def make_train_step(method: jmethods.Method, phase_index: int) -> TrainStep:
    """The pure train step of one phase: ``(state, batch) -> (state, metrics)``.

    Order: the phase's ``prepare_params`` (if any); loss and gradients on the current state;
    optimiser update; then, if the phase has a ``cluster_update``, the new clustering state from
    the loss's outputs.
    """
    phase = method.phases[phase_index]

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)
        params = state.params
        if phase.prepare_params is not None:
            params = phase.prepare_params(params)

        def loss_fn(params):
            return phase.loss_fn(params, state.model_state, state.cluster, batch, rng)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = phase.tx.update(grads, state.opt_states[phase_index], params)
        params = optax.apply_updates(params, updates)
        opt_states = tuple(opt_state if i == phase_index else s
                           for i, s in enumerate(state.opt_states))
        if phase.cluster_update is None:
            (model_state, aux_metrics), cluster, cluster_metrics = aux, state.cluster, {}
        else:
            model_state, aux_metrics, outputs = aux
            cluster, cluster_metrics = phase.cluster_update(
                state.cluster, batch, jax.lax.stop_gradient(outputs),
                jax.random.fold_in(rng, CLUSTER_UPDATE_STREAM))
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux_metrics,
                   **cluster_metrics}
        new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                                  opt_states=opt_states, cluster=cluster)
        return new_state, metrics

    return train_step


def jit_train_steps(method: jmethods.Method, mesh: Mesh, num_examples: int) -> list[TrainStep]:
    """Each phase's train step compiled for ``mesh``: the state donated and kept in its
    :func:`state_sharding`, the batch split along ``data``, the metrics replicated."""
    sharding = state_sharding(method, mesh, num_examples)
    batch, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    return [jax.jit(make_train_step(method, i), in_shardings=(sharding, batch),
                    out_shardings=(sharding, replicated), donate_argnums=0)
            for i in range(len(method.phases))]
