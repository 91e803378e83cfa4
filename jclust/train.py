"""The trainer: one loop for every method, importable from notebooks and tests.

``train_and_evaluate(config, workdir)`` loads the data, builds the method, and runs its phases:
a jitted, state-donating train step data-parallel over a 1-D ``data`` mesh of all devices, the
method's periodic whole-data-set recluster step on a feature pass, evaluations appended to
``WORKDIR/metrics.jsonl``, and Orbax checkpoints of the whole state. Re-running with the same
workdir resumes from the newest readable checkpoint.

Order inside one iteration (it makes resume exact): train step ``s -> s+1`` (with the phase's
per-step ``cluster_update``, if any, inside it); if a recluster is due at ``s+1``, run it;
evaluate if due; save if due. So the checkpoint of step ``s`` always includes every recluster of
steps <= s, and the data order and rngs are functions of the step alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jclust import checkpointing
from jclust import config_lib
from jclust import data as jdata
from jclust import distributed
from jclust import methods as jmethods
from jclust import metrics as jmetrics
from jclust import precision
from jclust import preemption
from jclust import writers

VERSION = 1


class NonFiniteLossError(FloatingPointError):
    """The loss (or the parameters) became NaN or infinite; training stopped."""


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
    """
    step: jax.Array
    rng: jax.Array
    params: Any
    model_state: Any
    opt_states: tuple
    cluster: Any


# --------------------------------------------------------------------------------------------
# Data


ENCODED_FEATURES = "encoder_features.npy"


def load_dataset(config: ml_collections.ConfigDict, cache_dir: str | None = None) -> jdata.Dataset:
    """Loads ``config.data.source`` (applying ``data.limit`` and ``data.encoder_workdir``).

    Args:
      config: the run's config.
      cache_dir: the run's workdir; with ``data.encoder_workdir``, features already encoded for
        this run are read from ``cache_dir/encoder_features.npy`` instead of being recomputed (a
        resumed run must see the same features even if the encoder run has moved on).
    """
    image_shape = tuple(config.data.image_shape)
    if config.data.encoder_workdir:
        encoder = _encoder_run_info(config.data.encoder_workdir)
        image_shape = tuple(encoder["data_spec"]["input_shape"])
    dataset = jdata.load(config.data.source, image_shape=image_shape,
                         data_dir=config.data.data_dir or None)
    if config.data.limit and config.data.limit < dataset.num_examples:
        dataset = dataset.subset(np.arange(config.data.limit))
    if config.data.encoder_workdir:
        cached = os.path.join(cache_dir, ENCODED_FEATURES) if cache_dir else None
        if cached and os.path.exists(cached):
            try:
                features = np.load(cached, allow_pickle=False)
            except (OSError, ValueError, EOFError) as err:
                raise jdata.DataError(f"{cached} is damaged ({type(err).__name__}: {err}); move "
                                      "it away to encode the data again") from None
            if features.shape[0] != dataset.num_examples:
                raise jdata.DataError(f"{cached} holds {features.shape[0]} encoded examples but the "
                                      f"data has {dataset.num_examples}; use a new workdir")
            dataset = dataclasses.replace(dataset, inputs=features,
                                          source=f"{dataset.source} encoded by {config.data.encoder_workdir}")
        else:
            dataset = encode_dataset(dataset, config.data.encoder_workdir,
                                     batch_size=config.eval_batch_size)
    return dataset


def data_spec_of(dataset: jdata.Dataset) -> jmethods.DataSpec:
    """What a method may know about a data set: N, per-example shape, images or features."""
    return jmethods.DataSpec(num_examples=dataset.num_examples,
                             input_shape=tuple(int(s) for s in dataset.input_shape),
                             is_image=dataset.is_image)


def epoch_order(num_examples: int, epoch: int, seed: int, shuffle: bool) -> np.ndarray:
    """The example order of one epoch: a permutation seeded by (seed, epoch), or 0..N-1."""
    if not shuffle:
        return np.arange(num_examples)
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


class BatchSchedule:
    """Maps a global step to the example indices of its batch (drops the last partial batch)."""

    def __init__(self, num_examples: int, batch_size: int, seed: int, shuffle: bool):
        self.num_examples, self.batch_size = num_examples, batch_size
        self.seed, self.shuffle = seed, shuffle
        self.steps_per_epoch = num_examples // batch_size
        self._epoch_length = self.steps_per_epoch * batch_size
        self._cache = (None, None)
        self._order, self._order_epoch = None, 0

    def set_order(self, order: np.ndarray | None, epoch: int = 0) -> None:
        """Uses ``order`` (example indices, at least one epoch long), set during ``epoch``, from
        now on, or the seeded permutations again for None.

        The rest of ``epoch`` reads the first epoch-long slice of ``order`` as given; a later
        epoch ``epoch + r`` reads the ``r``-th slice while ``order`` is long enough (a method that
        orders several epochs itself, JULE's grouped batches), and after that the order through
        that epoch's seeded permutation, so that an order kept for several epochs (DeepCluster
        with ``recluster_epochs`` > 1) does not repeat the same batches.
        """
        if order is not None and order.shape[0] < self._epoch_length:
            raise ValueError(f"an example order of {order.shape[0]} indices is shorter than an "
                             f"epoch ({self.steps_per_epoch} x {self.batch_size})")
        self._order, self._order_epoch = order, epoch
        self._cache = (None, None)

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, batch offset within the epoch) of ``step``."""
        return divmod(step, self.steps_per_epoch)

    def indices(self, step: int) -> np.ndarray:
        """Example indices [batch_size] of train step ``step``."""
        epoch, offset = self.position(step)
        if self._cache[0] != epoch:
            if self._order is None:
                order = epoch_order(self.num_examples, epoch, self.seed, self.shuffle)
            elif (epoch >= self._order_epoch and
                  (epoch - self._order_epoch + 1) * self._epoch_length <= self._order.shape[0]):
                start = (epoch - self._order_epoch) * self._epoch_length
                order = self._order[start:start + self._epoch_length]
            else:
                order = self._order[epoch_order(self._order.shape[0], epoch, self.seed,
                                                self.shuffle)]
            self._cache = (epoch, order)
        return self._cache[1][offset * self.batch_size:(offset + 1) * self.batch_size]


def draw_neighbours(table: np.ndarray, indices: np.ndarray, seed: int, step: int) -> np.ndarray:
    """One neighbour per example, uniform over its valid (>= 0) entries; itself if it has none.

    Args:
      table: [N, M] int, each example's neighbours, -1 where none.
      indices: [B] example indices of the batch.
      seed, step: seed the draw, so a resumed run draws what the uninterrupted one did.

    Returns:
      [B] int32 example indices.
    """
    rows = table[indices]
    valid = rows >= 0
    counts = valid.sum(axis=1)
    u = np.random.default_rng([seed, step, 0x4E4E]).random(len(indices))
    pick = np.minimum((u * np.maximum(counts, 1)).astype(np.int64), np.maximum(counts - 1, 0))
    # The pick-th valid entry of each row: valid entries keep their order after a stable sort.
    order = np.argsort(~valid, axis=1, kind="stable")
    chosen = rows[np.arange(len(indices)), order[np.arange(len(indices)), pick]]
    return np.where(counts > 0, chosen, indices).astype(np.int32)


# --------------------------------------------------------------------------------------------
# Devices


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
                      opt_states=replicated, cluster=cluster)


def sharding_summary(method: jmethods.Method, mesh: Mesh, state) -> str | None:
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


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


# --------------------------------------------------------------------------------------------
# Steps


# fold_in constant giving a phase's ``cluster_update`` a key independent of its loss's.
CLUSTER_UPDATE_STREAM = 0xC1A5


def make_train_step(method: jmethods.Method, phase_index: int):
    """The pure train step of one phase: ``(state, batch) -> (state, metrics)``.

    Order: the phase's ``prepare_params`` (if any); loss and gradients on the current state;
    optimiser update; then, if the phase has a ``cluster_update``, the new clustering state from
    the loss's outputs.
    """
    phase = method.phases[phase_index]

    def train_step(state: TrainState, batch: dict):
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


class Runner:
    """Compiled functions of one run bound to a mesh: train steps, feature and assignment passes."""

    def __init__(self, method: jmethods.Method, mesh: Mesh, eval_batch_size: int,
                 num_examples: int):
        self.method, self.mesh = method, mesh
        self.replicated = NamedSharding(mesh, P())
        self.batch_sharding = NamedSharding(mesh, P("data"))
        self.state_sharding = state_sharding(method, mesh, num_examples)
        self.eval_batch_size = _round_up(eval_batch_size, mesh.size)
        self.train_steps = [
            jax.jit(make_train_step(method, i),
                    in_shardings=(self.state_sharding, self.batch_sharding),
                    out_shardings=(self.state_sharding, self.replicated), donate_argnums=0)
            for i in range(len(method.phases))]
        self._embed = jax.jit(method.embed, in_shardings=(self.replicated, self.replicated,
                                                          self.batch_sharding),
                              out_shardings=self.batch_sharding)
        self._assign = jax.jit(method.assign,
                               in_shardings=(self.replicated, self.state_sharding.cluster,
                                             self.batch_sharding),
                               out_shardings=(self.batch_sharding, self.batch_sharding))

    def place(self, state: TrainState) -> TrainState:
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

    def features(self, state: TrainState, inputs: np.ndarray) -> np.ndarray:
        """Embeds every example in index order. inputs: [N, ...] -> [N, D] float32 (host, whole
        on every process)."""
        out = []
        for start, stop, x in self._padded_batches(inputs):
            out.append(distributed.fetch(self._embed(state.params, state.model_state, x))[:stop - start])
        return np.concatenate(out)

    def assign(self, state: TrainState, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Applies the method's assignment rule. features: [N, D] -> labels [N], confidence [N]."""
        labels, confidence = [], []
        for start, stop, f in self._padded_batches(features):
            lab, conf = distributed.fetch(self._assign(state.params, state.cluster, f))
            labels.append(lab[:stop - start])
            confidence.append(conf[:stop - start])
        return np.concatenate(labels), np.concatenate(confidence)


# --------------------------------------------------------------------------------------------
# State


def init_state(method: jmethods.Method, seed: int, sample_x: np.ndarray) -> TrainState:
    """Creates the initial TrainState. sample_x: [B, ...] a batch of inputs (shapes only)."""
    rng = jax.random.PRNGKey(seed)
    init_rng, run_rng = jax.random.split(rng)
    # Flax creates float32 parameters whatever the x64 mode: cast (identity in float32 mode).
    params, model_state, cluster = precision.cast_floats(
        method.init(init_rng, jnp.asarray(sample_x)))
    opt_states = tuple(phase.tx.init(params) for phase in method.phases)
    return TrainState(step=jnp.zeros((), jnp.int32), rng=run_rng, params=params,
                      model_state=model_state, opt_states=opt_states, cluster=cluster)


def phase_bounds(method: jmethods.Method) -> list[tuple[int, int]]:
    """[(first step, end step)] of each phase in global steps."""
    bounds, start = [], 0
    for phase in method.phases:
        bounds.append((start, start + phase.num_steps))
        start += phase.num_steps
    return bounds


def phase_at(bounds, step: int) -> int:
    """Index of the phase that runs train step ``step`` (the last phase once training is over)."""
    for i, (_, end) in enumerate(bounds):
        if step < end:
            return i
    return len(bounds) - 1


def recluster_due(method: jmethods.Method, bounds, step: int) -> tuple[bool, bool]:
    """(due, first): whether the method's recluster runs at ``step`` and if it opens a phase."""
    if method.recluster is None or step >= bounds[-1][1]:
        return False, False
    i = phase_at(bounds, step)
    phase, (start, _) = method.phases[i], bounds[i]
    if step == start and phase.recluster_at_start:
        return True, True
    if phase.recluster_every and step > start and (step - start) % phase.recluster_every == 0:
        return True, False
    return False, False


def last_recluster_step(method: jmethods.Method, bounds, step: int) -> int:
    """The latest step <= ``step`` at which the method's recluster ran (0 if none did)."""
    # A linear scan: called once per resume, and recluster_due is the one definition of "due".
    for s in range(step, -1, -1):
        if recluster_due(method, bounds, s)[0]:
            return s
    return 0


# --------------------------------------------------------------------------------------------
# Run bookkeeping


RUN_INFO = "run.json"
_DATA_SPEC_TYPES = {"num_examples": int, "input_shape": list, "is_image": bool}


def read_run_info(workdir: str) -> dict:
    """Reads ``WORKDIR/run.json`` (config and data spec of a run).

    Raises:
      FileNotFoundError: there is no run.json.
      ConfigError: it is unreadable, not JSON, or lacks the config or a data spec entry.
    """
    path = os.path.join(workdir, RUN_INFO)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{workdir} is not a jclust workdir (no run.json); train there first")
    fix = "restore it from a copy, or train in a new workdir"
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError) as err:  # ValueError: not JSON (a truncated file), not UTF-8
        raise config_lib.ConfigError(f"{path} is damaged or unreadable ({type(err).__name__}: "
                                     f"{err}); {fix}") from None
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict):
        raise config_lib.ConfigError(f"{path} holds no config; {fix}")
    spec = info.get("data_spec")
    bad = [key for key, kind in _DATA_SPEC_TYPES.items()
           if not isinstance(spec, dict) or not isinstance(spec.get(key), kind)]
    if bad:
        raise config_lib.ConfigError(f"{path} lacks a valid data_spec ({', '.join(bad)}); {fix}")
    return info


def _encoder_run_info(encoder_workdir: str) -> dict:
    try:
        return read_run_info(encoder_workdir)
    except (FileNotFoundError, config_lib.ConfigError) as err:
        raise jdata.DataError(f"config.data.encoder_workdir={encoder_workdir!r}: {err}") from None


def _data_spec_from_info(info: dict) -> jmethods.DataSpec:
    spec = info["data_spec"]
    return jmethods.DataSpec(num_examples=spec["num_examples"],
                             input_shape=tuple(spec["input_shape"]), is_image=spec["is_image"])


def _jsonable(config: ml_collections.ConfigDict) -> dict:
    """The config as run.json holds it (tuples become lists)."""
    return json.loads(json.dumps(config.to_dict(), default=list))


def _shown(value) -> str:
    return "(absent)" if value is None else json.dumps(value)


def check_resume(config: ml_collections.ConfigDict, workdir: str) -> tuple[list[str], dict | None]:
    """Compares ``config`` with the one ``WORKDIR/run.json`` records, before anything is restored.

    Only the keys of :func:`jclust.config_lib.resumable_keys` may differ from the config the
    workdir's checkpoints were trained with; a workdir without checkpoints starts over anyway.

    Returns:
      (the keys that changed, all resumable; the data spec the checkpoints were trained on, or
      None when there is nothing to resume).

    Raises:
      ConfigError: another key changed (naming the keys and their values), or run.json is damaged.
    """
    if not os.path.exists(os.path.join(workdir, RUN_INFO)):
        return [], None
    if not checkpointing.steps_on_disk(os.path.join(workdir, "checkpoints")):
        return [], None
    info = read_run_info(workdir)
    old, new = info["config"], _jsonable(config)
    changed = _config_diff(old, new)
    resumable = config_lib.resumable_keys(config)
    unsafe = sorted((k for k in changed if k not in resumable), key=lambda k: k != "method")
    if unsafe:
        values = "; ".join(f"{k}: {_shown(_get_dotted(old, k))} -> {_shown(_get_dotted(new, k))}"
                           for k in unsafe[:4])
        values += f"; and {len(unsafe) - 4} more" if len(unsafe) > 4 else ""
        newer = any(_get_dotted(old, k) is None for k in unsafe)
        raise config_lib.ConfigError(
            f"{workdir} holds checkpoints of another config ({values}); a resume may change only "
            f"logging, checkpointing, evaluation and the last phase's length: use a new workdir, "
            f"or restore the old values"
            + (" (a key absent from run.json is newer than the jclust that wrote it: add it there "
               "with the value the run was trained with)" if newer else ""))
    return changed, info["data_spec"]


def check_same_data(recorded: dict | None, spec: jmethods.DataSpec, workdir: str) -> None:
    """Raises a DataError when the data differs from what the workdir's checkpoints were trained
    on (``recorded``: run.json's data spec, None for nothing to resume)."""
    if recorded is None:
        return
    before = (recorded["num_examples"], tuple(recorded["input_shape"]), recorded["is_image"])
    now = (spec.num_examples, tuple(spec.input_shape), spec.is_image)
    if before != now:
        raise jdata.DataError(f"the data ({_describe_spec(*now)}) is not what {workdir} was "
                              f"trained on ({_describe_spec(*before)}); use a new workdir, or the "
                              "old data")


def _describe_spec(num_examples: int, input_shape: tuple, is_image: bool) -> str:
    return f"{num_examples} {'images' if is_image else 'feature vectors'} of shape {input_shape}"


def _get_dotted(tree: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def load_run(workdir: str):
    """Restores a trained run for inference.

    Returns:
      ``(config, method, state, data_spec)`` with the newest readable checkpoint's state.

    Raises:
      ConfigError: the run's saved config lacks a key this version of jclust reads.
    """
    info = read_run_info(workdir)
    config = ml_collections.ConfigDict(info["config"])
    spec = _data_spec_from_info(info)
    try:
        method = jmethods.make(config, spec)
    except AttributeError as err:
        if not isinstance(err.__context__, KeyError):  # not ConfigDict's missing-key error
            raise
        key = str(err).strip("'\"")
        raise config_lib.ConfigError(
            f"{workdir} was written by an older jclust: its saved config has no key {key!r} that "
            f"this version reads; add the key to {workdir}/run.json or train again") from None
    sample = np.zeros((1,) + spec.input_shape, np.uint8 if spec.is_image else np.float32)
    abstract = jax.eval_shape(lambda: init_state(method, config.seed, sample))
    shardings = jax.tree.broadcast(state_sharding(method, make_mesh(), spec.num_examples), abstract)
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


def encode_dataset(dataset: jdata.Dataset, encoder_workdir: str, batch_size: int = 2048) -> jdata.Dataset:
    """Replaces images by the frozen encoder features of a trained jclust run (DELIUS recipe).

    Args:
      dataset: images [N, H, W, C] of the shape the encoder was trained on.
      encoder_workdir: workdir of a finished or running jclust training.

    Returns:
      The same examples with ``inputs`` = features [N, D] float32.
    """
    try:
        _, method, state, spec = load_run(encoder_workdir)
    except (FileNotFoundError, config_lib.ConfigError, checkpointing.CheckpointError) as err:
        raise jdata.DataError(f"config.data.encoder_workdir={encoder_workdir!r}: {err}") from None
    if tuple(dataset.input_shape) != tuple(spec.input_shape):
        raise jdata.DataError(f"images of shape {tuple(dataset.input_shape)} do not match the shape "
                              f"the encoder in {encoder_workdir} was trained on ({spec.input_shape})")
    runner = Runner(method, make_mesh(), batch_size, spec.num_examples)
    state = runner.place(state)
    features = runner.features(state, dataset.inputs).astype(np.float32)
    return dataclasses.replace(dataset, inputs=features,
                               source=f"{dataset.source} encoded by {encoder_workdir}")


def _fmt_time(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def cluster_health(labels: np.ndarray, num_clusters: int) -> dict:
    """Cluster-size statistics of an assignment (:func:`jclust.metrics.cluster_sizes`)."""
    return jmetrics.cluster_sizes(labels, num_clusters)


def phase_params_path(workdir: str, phase_name: str) -> str:
    """Where the parameters at the end of a phase are exported: ``WORKDIR/params_<phase>.msgpack``."""
    return os.path.join(workdir, f"params_{phase_name}.msgpack")


def export_params(path: str, params) -> None:
    """Writes a params pytree as flax msgpack bytes (atomically)."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(flax.serialization.to_bytes(jax.device_get(params)))
    os.replace(tmp, path)


def import_params(path: str, like):
    """Reads params exported by :func:`export_params` into the structure of ``like``.

    Raises:
      ConfigError: the file is missing, unreadable, or its tree or shapes differ from ``like``.
    """
    if not os.path.isfile(path):
        raise config_lib.ConfigError(f"config.init_params={path!r}: no such file")
    try:
        with open(path, "rb") as f:
            loaded = flax.serialization.msgpack_restore(f.read())
        params = flax.serialization.from_state_dict(jax.device_get(like), loaded)
    except Exception as err:  # noqa: BLE001 - msgpack and flax raise many types for a bad file
        raise config_lib.ConfigError(f"config.init_params={path!r} cannot be used: "
                                     f"{type(err).__name__}: {str(err)[:300]}") from err
    for (where, a), b in zip(jax.tree_util.tree_leaves_with_path(like), jax.tree.leaves(params)):
        if np.shape(a) != np.shape(b):
            raise config_lib.ConfigError(
                f"config.init_params={path!r}: {jax.tree_util.keystr(where)} has shape "
                f"{np.shape(b)} but this model needs {np.shape(a)}")
    return jax.tree.map(lambda a, b: np.asarray(b, dtype=np.asarray(a).dtype), like, params)


ASSIGNMENTS = "assignments.npz"
PICTURES = "pictures"


def save_assignments(workdir: str, step: int, labels: np.ndarray, confidence: np.ndarray) -> None:
    """Writes the latest evaluation's assignment (atomically) to ``WORKDIR/assignments.npz``.

    Arrays: ``step`` [], ``labels`` int32 [N] and ``confidence`` float32 [N], in example order.
    """
    path = os.path.join(workdir, ASSIGNMENTS)
    tmp = path + ".tmp.npz"
    np.savez(tmp, step=np.int64(step), labels=labels.astype(np.int32),
             confidence=confidence.astype(np.float32))
    os.replace(tmp, path)


def write_pictures(workdir: str, config: ml_collections.ConfigDict, dataset: jdata.Dataset,
                   features: np.ndarray, labels: np.ndarray, confidence: np.ndarray,
                   writer: writers.RunWriter) -> None:
    """Overwrites ``WORKDIR/pictures/*.png`` with the current state of the run.

    Pictures: ``clusters.png`` (most confident images per cluster; image data only),
    ``confusion.png`` (labels only), ``embedding.png`` (2-D projection of features [N, D]) and
    ``curves.png`` (losses and metrics so far).
    """
    from jclust import viz
    out = os.path.join(workdir, PICTURES)
    k = config.num_clusters
    step = writer.evals[-1]["step"] if writer.evals else 0
    title = f"{config.method} on {dataset.source}, step {step}"
    if dataset.is_image:
        viz.cluster_grid(dataset.inputs, labels, confidence, os.path.join(out, "clusters.png"),
                         num_clusters=k, class_labels=dataset.labels,
                         class_names=dataset.class_names, title=title)
    if dataset.labels is not None:
        viz.confusion_matrix(dataset.labels, labels, os.path.join(out, "confusion.png"),
                             num_clusters=k, class_names=dataset.class_names, title=title)
    viz.embedding_projection(features, labels, os.path.join(out, "embedding.png"),
                             method=config.pictures.projection, max_points=config.pictures.max_points,
                             seed=config.seed, title=title)
    viz.training_curves(writer.evals, writer.train_records, os.path.join(out, "curves.png"),
                        title=f"{config.method} on {dataset.source}")


# --------------------------------------------------------------------------------------------
# The loop


def _kept_checkpoint(last_saved: int, workdir: str) -> str:
    """What a run stopped by a non-finite value leaves to resume from."""
    if last_saved < 0:
        return ("No checkpoint was written yet, so there is nothing to resume: fix the cause "
                "(e.g. a lower learning rate, the data) and start again")
    return f"The last good checkpoint (step {last_saved}) is left intact in {workdir}/checkpoints"


def _config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _config_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(prefix + key)
    return keys


@preemption.stop_politely
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, stdout=None) -> dict:
    """Trains ``config`` in ``workdir`` (resuming if it holds a checkpoint) and evaluates.

    Args:
      config: a method config (see ``configs/``); validated before anything is written.
      workdir: directory for checkpoints, ``run.json`` and ``metrics.jsonl``.
      stdout: where progress goes (default sys.stdout).

    Returns:
      The final evaluation record (``step``, and ``acc``/``nmi``/``ari`` when labels exist).

    Raises:
      preemption.Stopped: SIGTERM or SIGINT arrived; a checkpoint of the step it names was saved
        (see :mod:`jclust.preemption`; the handlers are installed only during this call).
    """
    out = stdout or sys.stdout

    primary = distributed.is_primary()  # only process 0 prints and writes files (not checkpoints)

    def say(text):
        if primary:
            print(text, file=out, flush=True)

    config_lib.validate(config)
    config_lib.check_output_dir(workdir, "workdir")
    changed, trained_on = check_resume(config, workdir)  # before any restore or write
    dataset = load_dataset(config, cache_dir=workdir)
    spec = data_spec_of(dataset)
    check_same_data(trained_on, spec, workdir)
    mesh = make_mesh()
    if config.batch_size % mesh.size:
        raise config_lib.ConfigError(f"config.batch_size={config.batch_size} must be divisible by "
                                     f"the number of devices ({mesh.size})")
    method = jmethods.make(config, spec)
    bounds = phase_bounds(method)
    total_steps = bounds[-1][1]
    schedule = BatchSchedule(spec.num_examples, config.batch_size, config.seed, config.data.shuffle)
    runner = Runner(method, mesh, config.eval_batch_size, spec.num_examples)

    state = init_state(method, config.seed, dataset.inputs[:config.batch_size])
    initial_params = import_params(config.init_params, state.params) if config.init_params else None
    state = runner.place(state)

    # Nothing is written before this point: bad input fails above with the workdir untouched.
    os.makedirs(workdir, exist_ok=True)
    distributed.barrier("jclust:workdir")
    run_info = {"config": _jsonable(config), "data_spec": json.loads(json.dumps(spec._asdict())),
                "version": VERSION, "source": dataset.source}
    info_path = os.path.join(workdir, RUN_INFO)
    encoded_path = os.path.join(workdir, ENCODED_FEATURES)

    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                      keep=config.keep_checkpoints, warn=say)
    try:
        restored = ckpt.restore_latest(state)
    except checkpointing.CheckpointError as err:
        if changed:
            raise checkpointing.CheckpointError(
                f"{err}. Config keys changed since this workdir was started: "
                f"{', '.join(changed)}") from err
        if not os.path.exists(info_path):
            raise checkpointing.CheckpointError(
                f"{err}. The workdir has no run.json to say which config its checkpoints were "
                "trained with; if not with this one, use a new workdir") from err
        raise
    # run.json describes what the checkpoints hold: write it only once they are known to match.
    if primary:
        with open(info_path, "w") as f:
            json.dump(run_info, f, indent=1)
    if primary and config.data.encoder_workdir and not os.path.exists(encoded_path):
        # Freeze the encoder's features with the run, so that a resume trains on the same ones.
        np.save(encoded_path, dataset.inputs)
    last_saved = -1
    if restored is not None:
        state = runner.place(restored[0])
        last_saved = int(state.step)
        say(f"resumed from checkpoint step {last_saved}")
        if changed:
            say(f"note: config keys changed since this workdir was started: {', '.join(changed)}")
    # Records newer than the restored state came from a run killed before its next checkpoint.
    writer = writers.RunWriter(workdir, last_saved, tensorboard=config.tensorboard, write=primary)
    last_record = writer.evals[-1] if writer.evals else {}
    evals_done = 0

    say(f"jclust {config.method}: {jdata.describe(dataset)}; {mesh.size} device(s) "
        f"({jax.default_backend()}); {total_steps} steps at most in phases "
        + ", ".join(f"{p.name}={p.num_steps}" for p in method.phases))
    say(f"assignment rule: {method.assignment_rule}")
    placement = sharding_summary(method, mesh, state)
    if placement:
        say(placement)
    if dataset.labels is None:
        say("note: the data has no labels, so ACC/NMI/ARI are skipped (training is unaffected)")

    previous_labels = None
    warned = False  # whether the method's step warning was printed
    pending = []  # (step, metrics) still on device; fetched at log/save/eval time
    fetched = []  # metrics fetched to the host since the last log line

    def meta_for(step):
        epoch, offset = schedule.position(step)
        return {"step": step, "epoch": epoch, "batch_in_epoch": offset, "version": VERSION,
                "phase": method.phases[phase_at(bounds, step)].name,
                "config": json.loads(config.to_json_best_effort())}

    def flush():
        """Fetches buffered step metrics into ``fetched``; raises if a loss became non-finite."""
        if not pending:
            return
        values = jax.device_get([m for _, m in pending])
        steps = [s for s, _ in pending]
        pending.clear()
        for s, m in zip(steps, values):
            for key, value in m.items():
                if not np.all(np.isfinite(value)):
                    raise NonFiniteLossError(
                        f"{key} became {float(value)} at step {s + 1} (phase "
                        f"{method.phases[phase_at(bounds, s)].name}); stopped. "
                        + _kept_checkpoint(last_saved, workdir))
        fetched.extend(values)

    def log_means():
        """Means of the step metrics since the last log line."""
        flush()
        means = {k: float(np.mean([m[k] for m in fetched if k in m])) for k in fetched[-1]} if fetched else {}
        fetched.clear()
        return means

    def evaluate(state, step, features, extra):
        nonlocal previous_labels, evals_done
        labels, confidence = runner.assign(state, features)
        record = {"step": step, "phase": method.phases[phase_at(bounds, max(step - 1, 0))].name}
        if dataset.labels is not None:
            record.update(jmetrics.evaluate(dataset.labels, labels))
        if dataset.labels is not None and method.training_labels is not None:
            pseudo = distributed.fetch(method.training_labels(state.cluster))
            if pseudo.min() >= 0:
                record["pseudo_purity"] = float(jmetrics.purity(dataset.labels, pseudo))
                record["pseudo_nmi"] = float(jmetrics.nmi(dataset.labels, pseudo))
        record.update(cluster_health(labels, config.num_clusters))
        record["mean_confidence"] = float(np.mean(confidence))
        if previous_labels is not None:
            record["nmi_previous"] = float(jmetrics.nmi(previous_labels, labels))
        previous_labels = labels
        record.update(extra)
        record["time"] = time.time()
        writer.write_eval(record)
        if primary:
            save_assignments(workdir, step, labels, confidence)
        evals_done += 1
        final = step >= total_steps or method.done(state.cluster)
        if primary and config.pictures.every_evals and (final or evals_done % config.pictures.every_evals == 0):
            write_pictures(workdir, config, dataset, features, labels, confidence, writer)
        shown = ", ".join(f"{k}={record[k]:.4f}" for k in ("acc", "nmi", "ari") if k in record)
        say(f"  eval step {step}: {shown}{', ' if shown else ''}clusters used "
            f"{record['clusters_used']}/{config.num_clusters} ({record['empty_clusters']} empty), "
            f"sizes {record['cluster_size_min']}..{record['cluster_size_max']}, size entropy "
            f"{record['size_entropy']:.3f}"
            + (f", NMI with previous {record['nmi_previous']:.3f}" if "nmi_previous" in record else "")
            + (f"; pseudo-labels: purity {record['pseudo_purity']:.4f}, NMI {record['pseudo_nmi']:.4f}"
               if "pseudo_purity" in record else ""))
        return record

    # Read from the state from the start (all -1 before any mining: each example its own
    # neighbour), so that every batch has the same structure and the step compiles once.
    neighbour_table = (None if method.neighbours is None
                       else distributed.fetch(method.neighbours(state.cluster)))

    def use_method_order(state, set_at):
        """Reads the method's example order and neighbours, set by the recluster at ``set_at``."""
        nonlocal neighbour_table
        if method.example_order is not None:
            # Host copies first: an order may be computed with numpy from per-example leaves
            # (JULE's grouped batches), which several processes each hold only a part of.
            cluster = distributed.fetch(state.cluster) if distributed.multiprocess() else state.cluster
            schedule.set_order(distributed.fetch(method.example_order(cluster)),
                               epoch=schedule.position(set_at)[0])
        if method.neighbours is not None:
            neighbour_table = distributed.fetch(method.neighbours(state.cluster))

    def host_side(params, cluster):
        """The inputs of a host-driven clustering step: as they are with one process; with
        several, whole host copies on every process (per-example leaves span all processes)."""
        if not distributed.multiprocess():
            return params, cluster
        return distributed.fetch((params, cluster))

    def agreed(params, cluster):
        """Process 0's result of a host-driven clustering step, on every process, so that
        replicated state cannot drift apart between processes (identity with one process)."""
        if not distributed.multiprocess():
            return params, cluster
        return distributed.same_on_all(distributed.fetch((params, cluster)))

    def recluster_and_eval(state, step, force_eval, allow_recluster=True):
        """Runs the recluster and/or evaluation due at ``step``; returns (state, record|None)."""
        due, first = recluster_due(method, bounds, step) if allow_recluster else (False, False)
        # An evaluation needs a usable assignment rule: not in phases without one (pretraining).
        can_eval = method.phases[phase_at(bounds, step)].evaluate or step >= total_steps
        eval_due = can_eval and (force_eval or due or (
            config.eval_every_steps and step % config.eval_every_steps == 0))
        if not (due or eval_due):
            return state, None
        flush()  # never cluster or evaluate parameters that already went NaN
        features = runner.features(state, dataset.inputs)
        extra = {}
        if due:
            key = jax.random.fold_in(jax.random.fold_in(state.rng, step), 0x5EED)
            more = {"inputs": dataset.inputs} if method.recluster_inputs else {}
            params, cluster = host_side(state.params, state.cluster)
            params, cluster, extra = method.recluster(
                params, cluster, features, phase=phase_at(bounds, step), first=first,
                key=key, **more)
            params, cluster = agreed(params, cluster)
            state = runner.place(state.replace(params=params, cluster=cluster))
            use_method_order(state, step)
            if "warning" in extra:
                say(f"warning at step {step}: {extra['warning']}")
        elif eval_due and method.fit_evaluation is not None:
            key = jax.random.fold_in(jax.random.fold_in(state.rng, step), 0xE7A1)
            params, cluster = host_side(state.params, state.cluster)
            cluster = method.fit_evaluation(params, cluster, features, key=key)
            _, cluster = agreed(None, cluster)
            state = runner.place(state.replace(cluster=cluster))
        return state, evaluate(state, step, features, extra) if eval_due else None

    def save(state, step):
        nonlocal last_saved
        flush()
        finite = all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state.params)
                     if jnp.issubdtype(x.dtype, jnp.floating))
        if not finite:
            raise NonFiniteLossError(f"parameters became non-finite by step {step}; stopped. "
                                     + _kept_checkpoint(last_saved, workdir))
        ckpt.save(step, state, meta_for(step))
        writer.flush()
        last_saved = step

    step = int(state.step)
    if restored is not None:
        use_method_order(state, last_recluster_step(method, bounds, step))
    if restored is None and initial_params is not None:
        state = runner.place(state.replace(params=initial_params))
        say(f"parameters initialised from {config.init_params}")
    if restored is None:
        state, record = recluster_and_eval(state, step, force_eval=False)
        last_record = record or last_record

    rows = runner.batch_rows(config.batch_size)
    t_log, step_log = time.time(), step
    t_start, step_start = t_log, step
    done = method.done(state.cluster)
    # A stop signal is honoured where a checkpoint of `step` is complete: here (one that arrived
    # during start-up or the initial recluster) and at the end of every iteration.
    stop = preemption.active()
    stopped = stop.should_stop()
    try:
        while step < total_steps and not done and not stopped:
            phase_index = phase_at(bounds, step)
            idx = schedule.indices(step)
            mine = idx[rows[0]:rows[1]]  # the rows of the batch this process supplies
            batch = {"x": dataset.inputs[mine], "index": mine.astype(np.int32)}
            if neighbour_table is not None:
                nbr = draw_neighbours(neighbour_table, idx, config.seed, step)[rows[0]:rows[1]]
                batch.update(neighbour_x=dataset.inputs[nbr], neighbour_index=nbr)
            batch = runner.put_batch(batch, config.batch_size)
            state, metrics = runner.train_steps[phase_index](state, batch)
            pending.append((step, metrics))
            step += 1

            phase_end = step == bounds[phase_index][1]
            if phase_end:
                flush()
                if primary:
                    export_params(phase_params_path(workdir, method.phases[phase_index].name),
                                  state.params)
            state, record = recluster_and_eval(state, step, force_eval=phase_end)
            if record is not None:
                last_record = record
                done = method.done(state.cluster)  # only a recluster can change it

            if step % config.log_every_steps == 0 or phase_end or done:
                means = log_means()
                now = time.time()
                rate = (step - step_log) / max(now - t_log, 1e-9)
                overall = (step - step_start) / max(now - t_start, 1e-9)
                writer.write_train({"step": step, "phase": method.phases[phase_index].name,
                                    **means, "steps_per_s": rate, "time": now})
                say(f"[{method.phases[phase_index].name}] step {step}/{total_steps} "
                    + " ".join(f"{k}={v:.5g}" for k, v in means.items())
                    + f" | {rate:.1f} steps/s, {rate * config.batch_size:.0f} ex/s, "
                    f"ETA <= {_fmt_time((total_steps - step) / max(overall, 1e-9))}")
                warning = method.step_warning(means) if method.step_warning and means else None
                if warning and not warned:
                    warned = True  # once a run: the condition tends to persist
                    say(f"warning at step {step}: {warning}")
                t_log, step_log = now, step
            if step % config.checkpoint_every_steps == 0 or phase_end or done:
                save(state, step)
            stopped = stop.should_stop()
        if last_saved != step:
            save(state, step)
        if not stopped and (not last_record or last_record.get("step") != step):
            _, last_record = recluster_and_eval(state, step, force_eval=True, allow_recluster=False)
        # Every process leaves together: one that exits while process 0 is still writing its
        # files could see the coordination service go away under it.
        distributed.barrier("jclust:done")
    finally:
        ckpt.close()
        writer.close()
    if stopped:
        say(preemption.stop_line(stop.signal_name, step))
        raise stop.stopped(step)
    if done:
        say(f"stopped at step {step}: the method's convergence criterion was met")
    summary = ", ".join(f"{k.upper()}={last_record[k]:.4f}" for k in ("acc", "nmi", "ari")
                        if k in last_record)
    summary = summary or f"clusters used {last_record.get('clusters_used')}/{config.num_clusters}"
    say(f"final (step {step}): {summary}; wall time {_fmt_time(time.time() - t_start)}")
    return last_record
