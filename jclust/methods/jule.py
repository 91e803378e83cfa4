"""JULE (Yang, Parikh, Batra, CVPR 2016): agglomerative clustering unrolled as a recurrent process,
jointly with a CNN.

Model: backbone -> Dense(``jule.embed_dim``) -> L2 normalisation (the reference: conv layers,
then Linear -> 160 -> L2-norm). The backbone ``jule_cnn`` (``jclust.models.JuleCNN``) is the
reference's MNIST network; ``small_cnn`` and ``resnet18`` work too.

State (``JuleState``, checkpointed): the current cluster of every example (compact labels
0..C-1), the cluster count C and the period; the evaluation centroids are the trainer's
(``TrainState.eval``), fitted before every evaluation.

Periods (``recluster`` every ``jule.epochs_per_period`` epochs, and at the start):
  * at the start: the initial over-clustering, the connected components of the 1-NN graph of the
    raw pixels or of the untrained network's embeddings (``jule.initial_space``;
    ``jclust.cluster.graph``);
  * at the end of every period, on fresh embeddings: the sample affinity graph (K_s =
    ``jule.neighbours``), GDL affinities between the current clusters, then
    min(ceil(eta C), C - target) merges of the merge scan (K_c = ``jule.cluster_neighbours``,
    lambda = ``jule.local_weight``; eta = ``jule.eta``, or ``jule.period_eta[p - 1]`` for the
    first passes p); training stops once C = ``num_clusters``.
Between them, the CNN trains on the weighted triplet loss of the current clusters
(``jclust.methods.jule_loss``), on random batches (the reference) or, with ``jule.batch_groups``
= g, on epochs built from runs of g examples of one cluster.

Coarse merges (``jule.coarse_linkage``): "gdl" merges by graph-degree linkage to the end, as
the reference does. "average" (the default) stops graph-degree linkage at
``jule.coarse_clusters`` clusters and makes the remaining merges by average linkage (cosine) of
the clusters' mean embeddings (``jclust.cluster.linkage``). On Fashion-MNIST, GDL's last merges
join the big clusters into one or two, both on pixels and on trained embeddings: the
|C|^2-normalised affinity favours whichever cluster borders the most (BENCHMARKS.md, JULE).

Evaluation and the assignment rule (``jule.evaluation``): "final_pass" (the reference) — a fresh
1-NN over-clustering of the final embeddings, agglomerated (eta per pass, no training, the same
coarse merges) to exactly ``num_clusters`` clusters; "spectral" — spectral clustering
(Ng-Jordan-Weiss) of a k-NN graph (``jule.spectral_neighbours``) of the final embeddings,
PCA-whitened and L2-normalised (the paper also clusters its learned features with other
algorithms, spectral clustering among them); "clusters" — the unrolled training's own clusters.
The clusters' mean embeddings (normalised) are the evaluation centroids, and an example goes to
the centroid of largest cosine similarity. Before the training clusters reach the target,
an evaluation only shows progress: its centroids are the means of the ``num_clusters`` largest
training clusters (the final pass costs minutes).

Initial over-clustering (``jule.initial_space``): "pixels" (the reference) builds the 1-NN graph
of the flattened inputs; "embedding" that of the untrained network's embeddings.

Deviations from the reference: the coarse merges above, and by default the initial
over-clustering of the embeddings rather than the pixels (measured in BENCHMARKS.md, JULE).
"""

from __future__ import annotations

import functools
import math
import time
from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jclust import cluster as jcluster
from jclust import models, optim
from jclust.cluster import graph as jgraph
from jclust.cluster import l2_normalize
from jclust.cluster import linkage
from jclust.config_lib import ConfigError
from jclust.data import augment, samplers
from jclust.methods.base import Array, DataSpec, Evaluation, Method, Phase, SamplePlan
from jclust.methods.common import check_cnn_config, steps_per_epoch
from jclust.methods.jule_loss import triplet_loss
from jclust.precision import float_dtype

# The jule config keys that make() takes as they are.
PLAIN_KEYS = ("epochs_per_period", "embed_dim", "neighbours", "cluster_neighbours", "local_weight",
              "eta", "margin", "gamma", "num_negatives", "merge_cache", "evaluation",
              "spectral_neighbours", "coarse_linkage", "coarse_clusters", "batch_groups",
              "initial_space", "flip")
ASSIGNMENT_RULE = ("the L2-normalised embedding goes to the nearest (cosine) of num_clusters "
                   "centroids: the mean embeddings of the clusters of JULE's final agglomerative "
                   "pass (1-NN over-clustering agglomerated to num_clusters), of spectral "
                   "clustering of the embeddings whitened, or of the training clusters "
                   "(jule.evaluation) at the latest evaluation; confidence = that cosine "
                   "similarity")


class JuleState(NamedTuple):
    """Clustering state of JULE (all of it is checkpointed).

    Attributes:
      labels: [N] int32 current cluster of every example, 0..C-1 (-1 before the first period).
      num_clusters: [] int32, C.
      period: [] int32, periods of merges done.
    """
    labels: jax.Array
    num_clusters: jax.Array
    period: jax.Array


def agglomerate(features, labels, target: int, *, neighbours: int, eta: float,
                cluster_neighbours: int, local_weight: float, cache_size: int,
                max_merges: int | None = None, coarse_linkage: str = "gdl",
                coarse_clusters: int = 0) -> tuple[np.ndarray, dict]:
    """Merges of JULE's merge scan on ``features`` starting from ``labels``.

    Args:
      features: [N, D] embeddings (L2-normalised inside the affinity graph).
      labels: [N] int, the current clusters 0..C-1, or None for the 1-NN over-clustering.
      target: the number of clusters to stop at.
      neighbours, cluster_neighbours, local_weight, cache_size: K_s, K_c, lambda, merge cache.
      eta: fraction of the clusters merged per pass.
      max_merges: None agglomerates (pass after pass) down to ``target``; an int does one pass
        of at most that many merges.
      coarse_linkage: "gdl" merges by graph-degree linkage to the end (the reference);
        "average" stops graph-degree linkage at ``coarse_clusters`` clusters and does the rest
        of the merges by average linkage (cosine) of the clusters' mean embeddings
        (:func:`jclust.cluster.linkage.average_linkage`).
      coarse_clusters: where "average" takes over.

    Returns:
      (labels [N] int32 compact, info of python scalars).
    """
    graph = jgraph.affinity_graph(features, neighbours)
    if labels is None:
        labels = jgraph.nearest_neighbour_clusters(graph.indices[:, 0])
    labels = np.asarray(labels, np.int32)
    c = int(labels.max()) + 1
    info = {"clusters_before": c, "sigma2": float(graph.sigma2)}
    if c <= target:
        return labels, {**info, "merges": 0}
    floor = max(target, coarse_clusters) if coarse_linkage == "average" else target
    state, active, merges, coarse = None, c, 0, 0
    while active > target:
        count = min(math.ceil(eta * active), active - target)
        if max_merges is not None:
            count = min(count, max_merges)
        by_graph = min(count, max(active - floor, 0))
        if by_graph:
            if state is None:
                a_us, _ = jgraph.gdl_affinity(graph, labels, active, symmetric=False)
                state = jgraph.merge_state(a_us, np.bincount(labels, minlength=active))
                del a_us
            state, _ = jgraph.merge_clusters(state, by_graph, num_neighbours=cluster_neighbours,
                                             local_weight=local_weight, cache_size=cache_size)
        if count > by_graph:
            if state is not None:
                labels, state = np.asarray(jgraph.resolve_labels(state.parent, labels)), None
            labels = coarse_merge(features, labels, active - count)
            coarse += count - by_graph
        active, merges = active - count, merges + count
        if max_merges is not None:
            break
    if state is not None:
        labels = np.asarray(jgraph.resolve_labels(state.parent, labels))
    return labels.astype(np.int32), {**info, "merges": merges, "coarse_merges": coarse}


def coarse_merge(features, labels, num_groups: int) -> np.ndarray:
    """Merges clusters into ``num_groups`` by average linkage (cosine) of their mean embeddings.

    Args:
      features: [N, D] embeddings (L2-normalised before averaging).
      labels: [N] int compact clusters 0..C-1.
      num_groups: G <= C.

    Returns:
      [N] int32 compact labels 0..G-1.
    """
    labels = np.asarray(labels)
    sums = _cluster_sums(l2_normalize(jnp.asarray(features)), labels)
    groups = linkage.average_linkage(jnp.asarray(sums, float_dtype()), num_groups).labels
    return np.asarray(groups)[labels].astype(np.int32)


def spectral_labels(features, count: int, *, key, num_neighbours: int) -> np.ndarray:
    """Spectral clustering (Ng-Jordan-Weiss) of the embeddings, PCA-whitened and L2-normalised.

    The JULE paper runs other clustering algorithms on its learned representations (spectral
    clustering among them); whitening first is N2D's manifold step, as DEC's spectral start does.

    Args:
      features: [N, E] embeddings.
      count: number of clusters.
      key: PRNG key (LOBPCG start, k-means restarts).
      num_neighbours: k of the k-NN graph.

    Returns:
      [N] int32 cluster of every example, 0..count-1.
    """
    x = jnp.asarray(features, float_dtype())
    _, whitened = jcluster.pca(x, x.shape[1], whiten=True, l2_normalize=True)
    return np.asarray(jcluster.spectral_clustering(whitened, count, key=key,
                                                   num_neighbours=num_neighbours).labels)


def cluster_centroids(features, labels, count: int) -> jax.Array:
    """Unit mean embeddings of the ``count`` largest clusters.

    Args:
      features: [N, E] embeddings.
      labels: [N] int cluster of every example, 0..C-1 (C >= ``count``).
      count: how many centroids.

    Returns:
      [count, E] float32 unit rows, largest cluster first.
    """
    labels = np.asarray(labels)
    sums = _cluster_sums(features, labels)
    largest = np.argsort(-np.bincount(labels, minlength=len(sums)), kind="stable")[:count]
    return l2_normalize(jnp.asarray(sums[largest], float_dtype()))


def _cluster_sums(features, labels: np.ndarray) -> np.ndarray:
    """[C, D] float64 sums of the [N, D] ``features`` of each cluster 0..C-1 of ``labels``."""
    sums = np.zeros((int(labels.max()) + 1, features.shape[1]), np.float64)
    np.add.at(sums, labels, np.asarray(features, np.float64))
    return sums


def period_pass(features: np.ndarray, labels: np.ndarray, period: int, inputs: np.ndarray, *,
                num_clusters: int, eta: float, period_eta: Sequence[float], initial_space: str,
                merge_kwargs: dict) -> tuple[np.ndarray, int, dict]:
    """One recluster of JULE's recurrent process: at the start (labels all -1) the initial
    over-clustering of the embeddings [N, E] (or of the pixels, ``initial_space="pixels"``);
    afterwards the next period's merges of the current clusters [N] towards ``num_clusters``, at
    the period's rate (``period_eta``, then ``eta``). Returns (labels [N], period, info)."""
    n = features.shape[0]
    if labels.min() < 0:
        space = features
        if initial_space == "pixels":
            space = np.asarray(inputs, np.float32).reshape(n, -1)
        new, info = agglomerate(space, None, n, **merge_kwargs)
        return new, 0, info
    period += 1
    rate = period_eta[period - 1] if period <= len(period_eta) else eta
    new, info = agglomerate(features, labels, num_clusters, max_merges=n,
                            **{**merge_kwargs, "eta": rate})
    info.update(eta=rate)
    return new, period, info


def evaluation_centroids(features: Array, cluster: JuleState, key: jax.Array, *,
                         num_clusters: int, evaluation: str, spectral_neighbours: int,
                         merge_kwargs: dict) -> jax.Array:
    """JULE's evaluation fit (``jule.evaluation``): the unit mean embeddings [num_clusters, E] of
    the clusters of a fresh final pass ("final_pass"), of spectral clustering ("spectral") or of
    the training's clusters ("clusters") of features [N, E]. Before the training's clusters reach
    ``num_clusters`` an evaluation only shows progress (the final pass would cost minutes at every
    period): the means of the largest training clusters."""
    features, labels = np.asarray(features), np.asarray(cluster.labels)
    if int(labels.max()) + 1 <= num_clusters:
        if evaluation == "final_pass":
            labels = agglomerate(features, None, num_clusters, **merge_kwargs)[0]
        elif evaluation == "spectral":
            labels = spectral_labels(features, num_clusters, key=key,
                                     num_neighbours=spectral_neighbours)
    return cluster_centroids(features, labels, num_clusters)


def centroid_assignment(centroids: jax.Array, features: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The assignment rule: centroids [K, E] unit rows, features [B, E] -> (the centroid of
    largest cosine [B] int32, that cosine [B])."""
    sims = l2_normalize(features) @ centroids.T
    return jnp.argmax(sims, -1).astype(jnp.int32), jnp.max(sims, -1)


def grouped_order(labels: np.ndarray, period: int, *, seed: int, batch_groups: int,
                  epochs: int, epoch_length: int) -> np.ndarray:
    """The example order of one period's ``epochs`` epochs, each ``epoch_length`` long, in
    batches of ``batch_groups`` clusters (:func:`jclust.data.samplers.grouped_by_label`); a
    function of the labels [N], the period and the seed, so that a resumed run re-creates it."""
    rngs = [np.random.default_rng([seed, period, e, 0x4A55]) for e in range(epochs)]
    return np.concatenate([samplers.grouped_by_label(labels, batch_groups, rng)[:epoch_length]
                           for rng in rngs])


def period_passes(num_examples: int, batch_size: int, period_steps: int) -> dict:
    """:func:`grouped_order`'s ``epochs`` and ``epoch_length`` for a period: the trainer reads an
    order pass by pass (whole batches of the N examples), and a period may span more passes than
    epochs (``config.min_epoch_examples``), each of which gets a grouped pass of its own."""
    pass_steps = max(num_examples // batch_size, 1)
    return {"epochs": -(-period_steps // pass_steps), "epoch_length": pass_steps * batch_size}


def make(*, backbone: models.Backbone, image_shape: Sequence[int], num_examples: int,
         num_clusters: int, tx: optax.GradientTransformation, num_steps: int,
         steps_per_epoch: int, batch_size: int, seed: int = 0, epochs_per_period: int = 2,
         embed_dim: int = 160, neighbours: int = 20, cluster_neighbours: int = 5,
         local_weight: float = 1.0, eta: float = 0.9, period_eta: Sequence[float] = (),
         margin: float = 0.2, gamma: float = 1.0, num_negatives: int = 20, merge_cache: int = 16,
         evaluation: str = "spectral", spectral_neighbours: int = 10,
         coarse_linkage: str = "average", coarse_clusters: int = 100, batch_groups: int = 0,
         initial_space: str = "embedding", augment_views: bool = False,
         crop_scale: tuple[float, float] = (0.6, 1.0), flip: bool = True) -> Method:
    """JULE on ``backbone`` with ``tx`` for at most ``num_steps`` steps (it stops at
    ``num_clusters`` clusters) of ``batch_size`` examples, ``steps_per_epoch`` an epoch; ``seed``
    sets the groups' order; ``augment_views`` is ``jule.augment``; the rest: docs/methods.md."""
    n, target = num_examples, num_clusters
    head = nn.Dense(embed_dim, kernel_init=nn.initializers.normal(0.01))
    merge_kwargs = dict(neighbours=neighbours, eta=eta, cluster_neighbours=cluster_neighbours,
                        local_weight=local_weight, cache_size=merge_cache,
                        coarse_linkage=coarse_linkage, coarse_clusters=coarse_clusters)

    def init(rng, x):
        k_backbone, k_head = jax.random.split(rng)
        backbone_params, backbone_state = backbone.init(k_backbone, x)
        params = {"backbone": backbone_params,
                  "head": head.init(k_head, jnp.zeros((1, backbone.feature_dim)))["params"]}
        state = JuleState(labels=jnp.full((n,), -1, jnp.int32),
                          num_clusters=jnp.zeros((), jnp.int32), period=jnp.zeros((), jnp.int32))
        return params, {"backbone": backbone_state}, state

    def embed_with_state(params, model_state, x, train):
        h, backbone_state = backbone.apply(params["backbone"], model_state["backbone"], x, train)
        return l2_normalize(head.apply({"params": params["head"]}, h)), {"backbone": backbone_state}

    def loss_fn(params, model_state, cluster, batch, rng):
        k_view, k_neg = jax.random.split(rng)
        x = batch["x"]
        if augment_views:
            x = augment.augment_view(x, k_view, out_size=tuple(image_shape[:2]),
                                     scale=tuple(crop_scale), flip=flip,
                                     color=image_shape[-1] == 3)
        z, model_state = embed_with_state(params, model_state, x, True)
        loss, count = triplet_loss(z, cluster.labels[batch["index"]], k_neg,
                                   num_negatives=num_negatives, gamma=gamma, margin=margin)
        return loss, (model_state, {"triplets": count.astype(float_dtype())})

    def embed(params, model_state, x):
        return embed_with_state(params, model_state, x, False)[0]

    def recluster(params, cluster, context):
        start = time.perf_counter()
        labels, period, info = period_pass(
            np.asarray(context.features), np.asarray(cluster.labels), int(cluster.period),
            context.inputs, num_clusters=target, eta=eta, period_eta=period_eta,
            initial_space=initial_space, merge_kwargs=merge_kwargs)
        count = int(labels.max()) + 1
        info.update(clusters=count, period=period, pass_seconds=time.perf_counter() - start,
                    largest_cluster=int(np.bincount(labels).max()))
        cluster = JuleState(labels=jnp.asarray(labels, jnp.int32),
                            num_clusters=jnp.asarray(count, jnp.int32),
                            period=jnp.asarray(period, jnp.int32))
        return params, cluster, info

    def sampler(cluster):
        return SamplePlan(order=grouped_order(
            np.asarray(cluster.labels), int(cluster.period), seed=seed, batch_groups=batch_groups,
            **period_passes(n, batch_size, epochs_per_period * steps_per_epoch)))

    phases = (Phase(name="jule", num_steps=num_steps, tx=tx, loss_fn=loss_fn,
                    recluster_every=epochs_per_period * steps_per_epoch, recluster_at_start=True),)
    return Method(init=init, phases=phases, embed=embed, assign=None, recluster=recluster,
                  done=lambda cluster: 0 < int(cluster.num_clusters) <= target,
                  assignment_rule=ASSIGNMENT_RULE,
                  training_labels=lambda params, cluster, features: cluster.labels,
                  evaluation=Evaluation(
                      init=lambda dim: jnp.zeros((target, dim), float_dtype()),
                      fit=functools.partial(evaluation_centroids, num_clusters=target,
                                            evaluation=evaluation, merge_kwargs=merge_kwargs,
                                            spectral_neighbours=spectral_neighbours),
                      assign=centroid_assignment),
                  sampler=sampler if batch_groups else None,
                  example_axes=JuleState(labels=0, num_clusters=None, period=None))


def from_config(config: ml_collections.ConfigDict, data_spec: DataSpec) -> Method:
    """JULE as ``config`` sets it (sections ``model``, ``optim``, ``jule``)."""
    jc, n = config.jule, data_spec.num_examples
    check_cnn_config(config, data_spec, "JULE", {
        "num_clusters": 2 <= config.num_clusters <= n, "jule.neighbours": 1 <= jc.neighbours < n,
        "jule.cluster_neighbours": jc.cluster_neighbours >= 1, "jule.eta": 0 < jc.eta <= 1,
        "jule.period_eta": all(0 < e <= 1 for e in jc.period_eta),
        "jule.epochs_per_period": jc.epochs_per_period >= 1, "jule.embed_dim": jc.embed_dim >= 1,
        "jule.margin": jc.margin >= 0, "jule.gamma": jc.gamma > 0,
        "jule.num_negatives": jc.num_negatives >= 1,
        "jule.merge_cache": jc.merge_cache >= jc.cluster_neighbours,
        "jule.evaluation": jc.evaluation in ("final_pass", "spectral", "clusters"),
        "jule.spectral_neighbours": 1 <= jc.spectral_neighbours < n,
        "jule.coarse_linkage": jc.coarse_linkage in ("gdl", "average"),
        "jule.coarse_clusters": jc.coarse_clusters >= 0,
        "jule.batch_groups": jc.batch_groups == 0 or jc.batch_groups >= 2,
        "jule.initial_space": jc.initial_space in ("embedding", "pixels"),
        "optim.epochs": config.optim.epochs >= jc.epochs_per_period},
        backbones=("small_cnn", "resnet18", "jule_cnn"))
    try:
        backbone = models.make_backbone(config.model, data_spec.input_shape)
    except ValueError as err:  # e.g. images too small for jule_cnn's unpadded convs
        raise ConfigError(f"config.model: {err}") from None
    epoch = steps_per_epoch(config, data_spec)
    return make(backbone=backbone, image_shape=data_spec.input_shape, num_examples=n,
                num_clusters=config.num_clusters, num_steps=config.optim.epochs * epoch,
                tx=optim.make(config.optim, config.optim.epochs * epoch), steps_per_epoch=epoch,
                batch_size=config.batch_size, seed=config.seed, augment_views=jc.augment,
                period_eta=tuple(jc.period_eta), crop_scale=tuple(jc.crop_scale),
                **{key: jc[key] for key in PLAIN_KEYS})
