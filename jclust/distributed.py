"""Multi-host JAX: starting the distributed runtime, and moving arrays between hosts and the mesh.

jclust runs as one process per host (JAX's multi-controller model: GPU clusters, TPU pods, or N
processes on one machine with CPU collectives over gloo). Every process runs the same program on
the same global mesh; the trainer differs between processes only in:

- which rows of each batch a process supplies (:func:`local_rows`, :func:`global_batch`): each
  process gathers and transfers only its own slice of every train and feature-pass batch;
- host-side clustering steps (k-means, merge scans, neighbour mining) see the whole data set's
  features: they are gathered to every process (:func:`fetch`), computed there, and process 0's
  result is broadcast (:func:`same_on_all`), so that replicated state cannot drift apart;
- only process 0 writes files other than checkpoints (:func:`is_primary`); Orbax checkpoints are
  written and restored by all processes together, each process its own shards.

With one process every function here is the identity or the plain single-host operation.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Starts JAX's distributed runtime; call once per process before any other JAX call.

    Args:
      coordinator_address: ``host:port`` of process 0, reachable from every process.
      num_processes: how many processes take part.
      process_id: this process's index, 0..num_processes-1.

    With all three None JAX detects the cluster from its environment (Cloud TPU pods, SLURM, Open
    MPI, Kubernetes). On CPU the collectives run over gloo (ENVIRONMENT.md §g); on GPU and TPU the
    setting is ignored.
    """
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)


def multiprocess() -> bool:
    """Whether more than one process takes part in the run."""
    return jax.process_count() > 1


def is_primary() -> bool:
    """Whether this is process 0 (the one that writes logs, metrics and exported files)."""
    return jax.process_index() == 0


def mesh_devices() -> np.ndarray:
    """All global devices, each process's devices contiguous (so its batch rows are contiguous)."""
    return np.array(sorted(jax.devices(), key=lambda d: (d.process_index, d.id)))


def local_rows(sharding: NamedSharding, global_size: int) -> tuple[int, int]:
    """(start, stop): the rows of a global batch of ``global_size`` split along its first axis by
    ``sharding`` that live on this process's devices.

    Raises:
      ValueError: the process's rows are not one contiguous block (a mesh not built by
        :func:`mesh_devices`).
    """
    index_map = sharding.addressable_devices_indices_map((global_size,))
    spans = sorted({(s[0].start or 0, global_size if s[0].stop is None else s[0].stop)
                    for s in index_map.values()})
    start, stop = spans[0][0], spans[-1][1]
    covered = sum(b - a for a, b in spans)
    if covered != stop - start:
        raise ValueError(f"this process's batch rows {spans} are not contiguous; build the mesh "
                         "from jclust.distributed.mesh_devices()")
    return start, stop


def global_batch(local, sharding: NamedSharding, global_size: int):
    """Assembles a batch-sharded global array (pytree) from each process's rows.

    Args:
      local: pytree of host arrays [stop - start, ...], this process's rows (:func:`local_rows`).
      sharding: the batch sharding (first axis split along the mesh).
      global_size: the global batch size.
    """
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(
            sharding, np.asarray(x), (global_size,) + np.shape(x)[1:]), local)


def fetch(tree):
    """Host numpy copies of a pytree of arrays, whole on every process.

    Leaves spread over other processes' devices are all-gathered; the rest are copied.
    """
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))
    return jax.tree.map(one, tree)


def same_on_all(tree):
    """Process 0's values of a pytree of host arrays, on every process (identity with one)."""
    if not multiprocess():
        return tree
    return jax.tree.map(np.asarray, multihost_utils.broadcast_one_to_all(tree))


def host_side(tree):
    """The inputs of a host-driven step (a recluster): as they are with one process; with several,
    whole host copies on every process (per-example leaves span all processes)."""
    return fetch(tree) if multiprocess() else tree


def agreed(tree):
    """Process 0's result of a host-driven step, on every process, so that replicated state cannot
    drift apart between processes (identity with one process)."""
    return same_on_all(fetch(tree)) if multiprocess() else tree


def barrier(name: str) -> None:
    """Waits until every process has reached the barrier ``name`` (no-op with one process)."""
    if multiprocess():
        multihost_utils.sync_global_devices(name)
