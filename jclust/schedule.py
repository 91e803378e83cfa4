"""Which examples each train step reads, and when phases, reclusterings and their orders apply.

Everything here is a function of the global step (and the run's seed), never of wall time or of
how the run was interrupted: that is what makes resume exact.
"""

from __future__ import annotations

import numpy as np

from jclust import distributed
from jclust import methods as jmethods


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
        if self.steps_per_epoch == 0:  # fewer examples than a batch: only a method without
            return 0, step             # training steps runs on them (methods check batch_size)
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



class Sampler:
    """The examples of every train step: the schedule's batch and, for a method with a
    neighbour table, one neighbour of each example, following the method's ``SamplePlan``, which
    its reclusterings set."""

    def __init__(self, method: jmethods.Method, schedule: BatchSchedule, seed: int, cluster):
        self.method, self.schedule, self.seed = method, schedule, seed
        # The neighbour table from the start (all -1 before any mining: each example its own
        # neighbour), so that every batch has the same structure and the step compiles once.
        plan = self._plan(cluster)
        self.neighbour_table = (None if plan is None or plan.neighbours is None
                                else distributed.fetch(plan.neighbours))

    def _plan(self, cluster) -> jmethods.SamplePlan | None:
        if self.method.sampler is None:
            return None
        # Host copies first: a plan may be computed with numpy from per-example leaves (JULE's
        # grouped batches), which several processes each hold only a part of.
        return self.method.sampler(distributed.fetch(cluster) if distributed.multiprocess()
                                   else cluster)

    def follow(self, cluster, set_at: int) -> None:
        """Reads the method's sample plan from ``cluster``, the clustering state the recluster at
        step ``set_at`` produced."""
        plan = self._plan(cluster)
        if plan is None:
            return
        if plan.order is not None:
            self.schedule.set_order(distributed.fetch(plan.order),
                                    epoch=self.schedule.position(set_at)[0])
        if plan.neighbours is not None:
            self.neighbour_table = distributed.fetch(plan.neighbours)

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(example indices [B], one drawn neighbour of each [B] or None) of train step ``step``."""
        indices = self.schedule.indices(step)
        if self.neighbour_table is None:
            return indices, None
        return indices, draw_neighbours(self.neighbour_table, indices, self.seed, step)
