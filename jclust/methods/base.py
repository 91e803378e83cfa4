"""The contract between a clustering method and the trainer.

A method is a factory, ``make(config, data_spec) -> Method``, that closes over its hyper-parameters
and returns a small tuple of pure functions, the way optax returns a GradientTransformation. The
trainer drives; the method never loops over data itself. The signatures of those functions are
the Protocols below.

Where a tensor lives: if gradients flow to it, it is in ``params`` (DEC centroids, heads,
prototypes); if a clustering step writes it, it is in the method's ``cluster`` state (targets,
pseudo-labels, memories). Both are pytrees and are checkpointed together.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Protocol

import jax
import numpy as np
import optax

Params = Any
ModelState = Any
ClusterState = Any
Array = jax.Array | np.ndarray
Batch = dict  # {"x": [B, ...] uint8 or float32, "index": [B] int32}; see ``SamplePlan``


class DataSpec(NamedTuple):
    """What a method may know about the data: sizes, never labels."""
    num_examples: int
    input_shape: tuple  # per example, e.g. (28, 28, 1) for images or (1024,) for features
    is_image: bool


class ReclusterContext(NamedTuple):
    """What a recluster sees besides the state.

    Attributes:
      features: [N, D] the whole data set's ``embed`` features (device or host array).
      key: a PRNG key of its own, a function of the run's key and the step.
      phase: index of the phase the recluster runs in.
      first: True when it opens the phase (``Phase.recluster_at_start``).
      inputs: [N, ...] the raw inputs (host numpy), e.g. to mine neighbours in pixel space.
      embed: inputs [M, ...] -> their ``embed`` features [M, D] (host), as ``features`` were
        computed (the trainer's data-parallel feature pass), e.g. of mirrored images.
    """
    features: Array
    key: jax.Array
    phase: int = 0
    first: bool = True
    inputs: np.ndarray | None = None
    embed: Callable[[np.ndarray], np.ndarray] | None = None


class SamplePlan(NamedTuple):
    """How the trainer draws train batches, as the clustering state says (both optional).

    Attributes:
      order: int [M] (M >= steps per epoch x batch): every epoch visits the examples in this order
        instead of a seeded permutation (DeepCluster's uniform sampling over pseudo-labels, JULE's
        grouped batches); an order of several epochs' length is read an epoch-long slice at a time
        (``schedule.BatchSchedule.set_order``).
      neighbours: int [N, M], each example's M mined neighbours (-1 where none). Every train
        batch then also carries ``"neighbour_x"`` [B, ...] and ``"neighbour_index"`` [B]: for
        each example one of its neighbours drawn uniformly (a generator seeded by (seed, step),
        so a resumed run draws the same), or the example itself when its row holds none.
    """
    order: Array | None = None
    neighbours: Array | None = None


class Init(Protocol):
    def __call__(self, rng: jax.Array, x: jax.Array, /) -> tuple[Params, ModelState, ClusterState]:
        """x: [B, ...] a batch of inputs (shapes only) -> the initial (params, model_state,
        cluster)."""


class LossFn(Protocol):
    def __call__(self, params: Params, model_state: ModelState, cluster: ClusterState,
                 batch: Batch, rng: jax.Array, /) -> tuple[jax.Array, tuple]:
        """-> (scalar loss, (model_state, metrics)); metrics: a dict of scalars. With the phase's
        ``cluster_update`` set, -> (loss, (model_state, metrics, outputs))."""


class ClusterUpdate(Protocol):
    def __call__(self, cluster: ClusterState, batch: Batch, outputs: Any, rng: jax.Array, /
                 ) -> tuple[ClusterState, dict]:
        """-> (new clustering state, metrics dict of scalars); jitted, fixed shapes."""


class Embed(Protocol):
    def __call__(self, params: Params, model_state: ModelState, x: jax.Array, /) -> jax.Array:
        """x: [B, ...] -> features [B, D], in evaluation mode."""


class Assign(Protocol):
    def __call__(self, params: Params, cluster: ClusterState, features: jax.Array, /
                 ) -> tuple[jax.Array, jax.Array]:
        """features [B, D] -> (labels [B] int32, confidence [B] float)."""


class Recluster(Protocol):
    def __call__(self, params: Params, cluster: ClusterState, context: ReclusterContext, /
                 ) -> tuple[Params, ClusterState, dict]:
        """-> (params, cluster, info); info: python scalars for the log (a "warning" text is
        printed)."""


class Evaluation(NamedTuple):
    """An assignment rule fitted anew on the whole data set's features before every evaluation.

    The trainer owns it: it calls ``fit`` on the feature pass of every evaluation (with a key of
    its own, a function of the run's key and the step), keeps the result in ``TrainState.eval``
    (checkpointed, so that predict applies what the last evaluation fitted), and sorts examples
    with ``assign``. For methods whose own state is no clustering of K = ``num_clusters`` (over-
    clustering, memories, merges), e.g. :func:`jclust.methods.evaluation.kmeans_probe`.

    Attributes:
      init: ``(feature_dim) -> state``, a state of the fitted shapes (zeros), for the TrainState's
        structure before the first fit.
      fit: ``(features [N, D], cluster, key) -> state``, host-driven (may call jitted primitives);
        ``cluster`` is the method's clustering state (whole on this process), for rules that read
        it.
      assign: ``(state, features [B, D]) -> (labels [B] int32, confidence [B] float)``, jittable.
    """
    init: Callable[[int], Any]
    fit: Callable[[Array, ClusterState, jax.Array], Any]
    assign: Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]


class Phase(NamedTuple):
    """One stretch of training with its own loss and optimiser.

    Attributes:
      name: shown in logs ("pretrain", "cluster", ...).
      num_steps: the most steps this phase runs; ``Method.done`` may end it earlier.
      tx: the optimiser of this phase; its state is created fresh at the start of training and only
        advanced during this phase.
      loss_fn: see :class:`LossFn`; with ``cluster_update`` set it also returns ``outputs``, any
        pytree of the forward pass that the update needs (e.g. the batch's features [B, D]),
        passed on without gradient.
      recluster_every: run ``Method.recluster`` every this many steps of the phase (0: never
        periodically).
      recluster_at_start: run ``Method.recluster`` once when the phase starts.
      evaluate: whether ``Method.assign`` means anything during this phase (False e.g. while an
        autoencoder is pretrained and no centroids exist yet); evaluations are skipped if not.
      cluster_update: see :class:`ClusterUpdate`, or None. Runs inside the jitted train step,
        after the optimiser update, on the ``outputs`` of that step's ``loss_fn``; the returned
        clustering state replaces ``TrainState.cluster`` (so it is checkpointed like everything
        else) and its metrics join the step's. Its ``rng`` is a key of its own, derived from the
        step like the loss's. For clustering state that changes every step (ODC's memories).
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
    cluster_update: ClusterUpdate | None = None
    prepare_params: Callable[[Params], Params] | None = None


class Method(NamedTuple):
    """The pure functions a clustering method hands to the trainer.

    Attributes:
      init: see :class:`Init`.
      phases: the phases in order.
      embed: see :class:`Embed`; the representation the clustering acts on.
      assign: see :class:`Assign`; the one documented rule that sorts any example (also a single
        new one) into a cluster, read from the method's own state; or None when ``evaluation``
        is the rule.
      recluster: see :class:`Recluster`; the periodic whole-data-set clustering step
        (host-driven, may call jitted primitives), or None if the method has none.
      done: ``(cluster) -> bool``; True once the method's stopping criterion has been met.
      assignment_rule: one sentence describing ``assign``, printed and documented.
      example_axes: a pytree with the structure of the clustering state whose leaves are, for each
        leaf of the state, the axis (an int) that indexes the examples, or None; or None for no
        per-example state. Per-example leaves (memories, pseudo-labels, targets) are sharded along
        the mesh's ``data`` axis, so that each device holds 1/devices of them; the rest is
        replicated. Sharding changes where the numbers live, never what they are.
      sampler: ``(cluster) -> SamplePlan``, or None: how batches are drawn, read from the
        clustering state (host arrays) at the start and after every recluster, so that a resumed
        run draws what the uninterrupted one did. The order is taken only from a recluster's
        state; the neighbour table from the start (all -1 before any mining, so that every batch
        has the same structure and the step compiles once).
      training_labels: ``(params, cluster, features [N, D]) -> int [N]``, or None: the labels
        the method trains on when they are not the K = ``num_clusters`` assignment (DeepCluster's
        over-clustering pseudo-labels, -1 where none yet), read from host copies of the
        parameters, the clustering state and the evaluation's feature pass (host numpy). Evaluations then also report their majority-vote purity
        and NMI against the ground truth.
      evaluation: see :class:`Evaluation`, or None: the assignment rule the trainer fits before
        every evaluation, when ``assign`` is None.
      warnings: for each warning metric (a step metric named ``warn_<what>``), the text the
        trainer prints the first time the metric's mean over a log interval is > 0 (once a run):
        what it means and what to change.
      similarity: ``(evaluation state, features [N, D]) -> [N, D']``, the space in which the
        method's similarity between examples is the cosine, from what the last evaluation fitted
        (``TrainState.eval``; the triangle method's codebooks) or fitted on the features it is
        given (no labels; CliqueCNN's power-whitened PCA); or None: the cosine of the embedding
        itself. The similarity benchmark (training-time retrieval scores,
        ``benchmarks/similarity.py``) scores this space.
    """
    init: Init
    phases: tuple[Phase, ...]
    embed: Embed
    assign: Assign | None
    recluster: Recluster | None
    done: Callable[[ClusterState], bool]
    assignment_rule: str
    example_axes: Any = None
    sampler: Callable[[ClusterState], SamplePlan] | None = None
    training_labels: Callable[[Params, ClusterState, Array], Array] | None = None
    evaluation: Evaluation | None = None
    warnings: Mapping[str, str] = {}
    similarity: Callable[[Any, Array], Array] | None = None
