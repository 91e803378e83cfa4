"""The contract between a clustering method and the trainer.

A method is a factory, ``make(config, data_spec) -> Method``, that closes over its hyper-parameters
and returns a small tuple of pure functions, the way optax returns a GradientTransformation. The
trainer drives; the method never loops over data itself.

Where a tensor lives: if gradients flow to it, it is in ``params`` (DEC centroids, heads,
prototypes); if a clustering step writes it, it is in the method's ``cluster`` state (targets,
pseudo-labels, memories). Both are pytrees and are checkpointed together.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import optax

Params = Any
ModelState = Any
ClusterState = Any
Batch = dict  # {"x": [B, ...] uint8 or float32, "index": [B] int32}

# (params, model_state, cluster, batch, rng) -> (loss, (model_state, metrics dict of scalars))
LossFn = Callable[..., tuple]


class DataSpec(NamedTuple):
    """What a method may know about the data: sizes, never labels."""
    num_examples: int
    input_shape: tuple  # per example, e.g. (28, 28, 1) for images or (1024,) for features
    is_image: bool


class Phase(NamedTuple):
    """One stretch of training with its own loss and optimiser.

    Attributes:
      name: shown in logs ("pretrain", "cluster", ...).
      num_steps: the most steps this phase runs; ``Method.done`` may end it earlier.
      tx: the optimiser of this phase; its state is created fresh at the start of training and only
        advanced during this phase.
      loss_fn: ``(params, model_state, cluster, batch, rng) -> (loss, (model_state, metrics))``;
        with ``cluster_update`` set, ``-> (loss, (model_state, metrics, outputs))`` where
        ``outputs`` is any pytree of the forward pass that the update needs (e.g. the batch's
        features [B, D]); it is passed on without gradient.
      recluster_every: run ``Method.recluster`` every this many steps of the phase (0: never
        periodically).
      recluster_at_start: run ``Method.recluster`` once when the phase starts.
      evaluate: whether ``Method.assign`` means anything during this phase (False e.g. while an
        autoencoder is pretrained and no centroids exist yet); evaluations are skipped if not.
      cluster_update: ``(cluster, batch, outputs, rng) -> (cluster, metrics)``, or None. Runs
        inside the jitted train step, after the optimiser update, on the ``outputs`` of that
        step's ``loss_fn``; the returned clustering state replaces ``TrainState.cluster`` (so it
        is checkpointed like everything else) and its metrics (scalars) join the step's. ``rng``
        is a key of its own, derived from the step like the loss's. For clustering state that
        changes every step (ODC's memories); fixed shapes only.
      prepare_params: ``(params) -> params``, or None. Applied at the start of every train step of
        the phase; the loss, its gradients and the optimiser update all act on the result (SwAV's
        prototypes re-normalised in place before each iteration, without gradient).
    """
    name: str
    num_steps: int
    tx: optax.GradientTransformation
    loss_fn: LossFn
    recluster_every: int = 0
    recluster_at_start: bool = False
    evaluate: bool = True
    cluster_update: Callable | None = None
    prepare_params: Callable | None = None


class Method(NamedTuple):
    """The pure functions a clustering method hands to the trainer.

    Attributes:
      init: ``(rng, x [B, ...]) -> (params, model_state, cluster)``.
      phases: the phases in order.
      embed: ``(params, model_state, x [B, ...]) -> features [B, D]``; the representation the
        clustering acts on, computed in evaluation mode.
      assign: ``(params, cluster, features [B, D]) -> (labels [B] int32, confidence [B] float32)``;
        the one documented rule that sorts any example (also a single new one) into a cluster.
      recluster: ``(params, cluster, features [N, D], *, phase, first, key) -> (params, cluster,
        info)``; the periodic whole-data-set clustering step (host-driven, may call jitted
        primitives). ``first`` is True at the start of a phase. ``info`` holds python scalars
        for the log. None if the method has none.
      done: ``(cluster) -> bool``; True once the method's stopping criterion has been met.
      assignment_rule: one sentence describing ``assign``, printed and documented.
      example_order: ``(cluster) -> int [M]`` (M >= steps per epoch x batch), or None. When set,
        every epoch visits the examples in this order instead of a seeded permutation (e.g.
        DeepCluster's uniform sampling over pseudo-labels); an order of several epochs' length
        is read an epoch-long slice at a time (``schedule.BatchSchedule.set_order``). It must be a
        function of the clustering state (so that a resumed run sees the same order) and may
        change only at recluster steps.
      training_labels: ``(cluster) -> int [N]``, or None: the labels the method trains on when
        they are not the K = ``num_clusters`` assignment (DeepCluster's over-clustering
        pseudo-labels, -1 where none yet). Evaluations then also report their majority-vote
        purity and NMI against the ground truth.
      fit_evaluation: ``(params, cluster, features [N, D], *, key) -> cluster``, or None: refits
        what ``assign`` reads (e.g. evaluation centroids fitted by k-means on the features) on the
        current features. The trainer calls it before every evaluation that does not come with a
        recluster at the same step (the final one, ``eval_every_steps``), so that no evaluation
        applies centroids fitted on features that have changed since.
      example_axes: a pytree with the structure of the clustering state whose leaves are, for each
        leaf of the state, the axis (an int) that indexes the examples, or None; or None for no
        per-example state. Per-example leaves (memories, pseudo-labels, targets) are sharded along
        the mesh's ``data`` axis, so that each device holds 1/devices of them; the rest is
        replicated. Sharding changes where the numbers live, never what they are.
      step_warning: ``(means) -> str | None``, or None: called at every log line with the means
        of the step metrics since the previous one; a returned text is printed as a warning (the
        first one only, once a run), e.g. SwAV's collapse detection.
      neighbours: ``(cluster) -> int [N, M]``, or None: each example's M mined neighbours (-1
        where none). When set, every train batch also carries ``"neighbour_x"`` [B, ...] and
        ``"neighbour_index"`` [B]: for each example one of its neighbours drawn uniformly (a
        generator seeded by (seed, step), so a resumed run draws the same), or the example
        itself when its row holds none. Like ``example_order`` it lives in the clustering state
        and may change only at recluster steps.
      recluster_inputs: pass the raw inputs [N, ...] (host numpy) to ``recluster`` as the keyword
        ``inputs`` (e.g. to mine neighbours in pixel space).
    """
    init: Callable
    phases: tuple
    embed: Callable
    assign: Callable
    recluster: Callable | None
    done: Callable
    assignment_rule: str
    example_order: Callable | None = None
    training_labels: Callable | None = None
    fit_evaluation: Callable | None = None
    example_axes: Any = None
    step_warning: Callable | None = None
    neighbours: Callable | None = None
    recluster_inputs: bool = False
