"""Inference with a run: compiled feature and assignment passes over a mesh, and loading a
trained run from its workdir. Used by the trainer's evaluations and by :mod:`jclust.predict`.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jclust import checkpointing
from jclust import config_lib
from jclust import distributed
from jclust import methods as jmethods
from jclust import state as jstate
from jclust import workdir as jworkdir


def round_up(value: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= ``value``."""
    return -(-value // multiple) * multiple


def assign_fn(method: jmethods.Method):
    """The method's assignment rule as one function ``(params, cluster, eval, features [B, D]) ->
    (labels [B], confidence [B])``: its ``evaluation``'s when it has one, else its ``assign``."""
    if method.evaluation is not None:
        return lambda params, cluster, fitted, features: method.evaluation.assign(fitted, features)
    return lambda params, cluster, fitted, features: method.assign(params, cluster, features)


class Runner:
    """A run's compiled feature and assignment passes bound to a mesh, and the placement of its
    states and batches on that mesh."""

    def __init__(self, method: jmethods.Method, mesh: Mesh, eval_batch_size: int,
                 num_examples: int):
        self.method, self.mesh = method, mesh
        self.replicated = NamedSharding(mesh, P())
        self.batch_sharding = NamedSharding(mesh, P("data"))
        self.state_sharding = jstate.state_sharding(method, mesh, num_examples)
        self.eval_batch_size = round_up(eval_batch_size, mesh.size)
        self._embed = jax.jit(method.embed, in_shardings=(self.replicated, self.replicated,
                                                          self.batch_sharding),
                              out_shardings=self.batch_sharding)
        self._assign = jax.jit(assign_fn(method),
                               in_shardings=(self.replicated, self.state_sharding.cluster,
                                             self.replicated, self.batch_sharding),
                               out_shardings=(self.batch_sharding, self.batch_sharding))

    def place(self, state: jstate.TrainState) -> jstate.TrainState:
        """Puts a state (host or device arrays) on the mesh with :attr:`state_sharding`.

        With several processes every process must pass the same values; arrays on this process's
        devices only are copied to the host first (the mesh spans other processes' devices).
        """
        if distributed.multiprocess():
            state = jax.tree.map(
                lambda x: np.asarray(x) if not isinstance(x, jax.Array) or x.is_fully_addressable
                else x, state)
        return jax.device_put(state, self.state_sharding)

    def batch_rows(self, batch_size: int) -> tuple[int, int]:
        """(start, stop): the rows of a global batch of ``batch_size`` this process supplies."""
        return distributed.local_rows(self.batch_sharding, batch_size)

    def put_batch(self, batch: dict, batch_size: int | None = None) -> dict:
        """Assembles the global batch of ``batch_size`` on the mesh, split along the batch axis,
        from this process's rows ``batch_rows(batch_size)`` (host arrays). Default size: the
        rows given times the number of processes (the whole batch with one process)."""
        if batch_size is None:
            batch_size = np.shape(jax.tree.leaves(batch)[0])[0] * jax.process_count()
        return distributed.global_batch(batch, self.batch_sharding, batch_size)

    def _padded_batches(self, array: np.ndarray):
        n, size = array.shape[0], self.eval_batch_size
        lo, hi = self.batch_rows(size)
        for start in range(0, n, size):
            # Only this process's rows are read; the last batch is padded so that one compiled
            # shape serves all.
            chunk = array[start + lo:min(start + hi, n)]
            if chunk.shape[0] < hi - lo:
                pad = np.zeros((hi - lo - chunk.shape[0],) + array.shape[1:], array.dtype)
                chunk = np.concatenate([chunk, pad])
            yield start, min(start + size, n), self.put_batch(chunk, size)

    def features(self, state: jstate.TrainState, inputs: np.ndarray) -> np.ndarray:
        """Embeds every example in index order. inputs: [N, ...] -> [N, D] float32 (host, whole
        on every process)."""
        out = []
        for start, stop, x in self._padded_batches(inputs):
            out.append(distributed.fetch(self._embed(state.params, state.model_state, x))[:stop - start])
        return np.concatenate(out)

    def assign(self, state: jstate.TrainState, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Applies the method's assignment rule. features: [N, D] -> labels [N], confidence [N]."""
        labels, confidence = [], []
        for start, stop, f in self._padded_batches(features):
            lab, conf = distributed.fetch(self._assign(state.params, state.cluster, state.eval, f))
            labels.append(lab[:stop - start])
            confidence.append(conf[:stop - start])
        return np.concatenate(labels), np.concatenate(confidence)


def load_run(workdir: str) -> tuple[ml_collections.ConfigDict, jmethods.Method, jstate.TrainState,
                                   jmethods.DataSpec]:
    """Restores a trained run for inference.

    Returns:
      ``(config, method, state, data_spec)`` with the newest readable checkpoint's state.

    Raises:
      ConfigError: the run's saved config lacks a key this version of jclust reads.
    """
    info = jworkdir.read_run_info(workdir)
    jworkdir.check_checkpoint_layout(info, workdir)
    config = ml_collections.ConfigDict(info["config"])
    spec = jworkdir.data_spec_from_info(info)
    try:
        method = jmethods.from_config(config, spec)
    except AttributeError as err:
        if not isinstance(err.__context__, KeyError):  # not ConfigDict's missing-key error
            raise
        key = str(err).strip("'\"")
        raise config_lib.ConfigError(
            f"{workdir} was written by an older jclust: its saved config has no key {key!r} that "
            f"this version reads; add the key to {workdir}/run.json or train again") from None
    sample = np.zeros((1,) + spec.input_shape, np.uint8 if spec.is_image else np.float32)
    abstract = jax.eval_shape(lambda: jstate.init_state(method, config.seed, sample))
    sharding = jstate.state_sharding(method, jstate.make_mesh(), spec.num_examples)
    shardings = jax.tree.broadcast(sharding, abstract)
    target = jax.tree.map(lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                                   sharding=sharding),
                          abstract, shardings)
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                      keep=config.keep_checkpoints, read_only=True)
    try:
        restored = ckpt.restore_latest(target)
    finally:
        ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints")
    return config, method, restored[0], spec


def similarity_features(method: jmethods.Method, state: jstate.TrainState,
                        features: np.ndarray) -> np.ndarray:
    """The space the method's similarity is the cosine in (``Method.similarity``, with what the
    state's last evaluation fitted) of a feature pass [N, D]; the features themselves for a
    method without one."""
    if method.similarity is None:
        return features
    return np.asarray(method.similarity(state.eval, features), np.float32)
