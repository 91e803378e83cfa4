"""ODC, Online Deep Clustering (Zhan et al., CVPR 2020): pseudo-labels that evolve every step.

Model: SmallCNN backbone -> non-linear neck (Dense-ReLU-Dropout-Dense-ReLU) -> feature f [D]
-> linear head with ``odc.train_clusters`` outputs.

State (``ODCState``, checkpointed): a samples memory (L2-normalised features F [N, D] and labels
l [N]) and a centroids memory C [K, D] (means of the unit rows of F, not re-normalised).

Initialisation (``recluster`` at the start of training): features of the whole data set (no
augmentation, evaluation mode), L2-normalised, fill F; k-means with K = ``odc.train_clusters``
(random data points as initial centroids, ``odc.kmeans_iters`` Lloyd iterations, empty clusters
split as in faiss) fills l; C = cluster means of F; the head is re-initialised (N(0, 0.01²)).

Every iteration, in the reference code's order:
  1. loss: cross-entropy of the head on an augmented view against l[index], each example weighted
     by w_l[index] with w_k = (n_k + 1e-5)^(-1/2) / sum_k' (n_k' + 1e-5)^(-1/2) from the label
     counts n_k (the mean is sum_i w_i CE_i / sum_i w_i, as PyTorch's weighted cross-entropy);
     gradient step.
  2. samples memory at the batch: F_i <- normalise((1 - m) F_i + m f_i / |f_i|), m =
     ``odc.memory_momentum`` (f from step 1's forward pass: augmented view, training mode).
  3. batch re-assignment: l_i <- argmax_k <C_k, F_i> (dot product, unnormalised centroids).
  4. every ``odc.centroid_update_every`` iterations: all centroids recomputed from F and l (an
     empty cluster keeps its centroid).
  5. small clusters (fewer than ``odc.min_cluster_size`` members, at most a quarter of the mean
     cluster size, :func:`min_cluster_floor`): their members move to the
     nearest centroid (dot product) among the other clusters; then, for each of these now empty
     clusters e in index order, the currently largest cluster j is split in two by 2-means on
     its memory features (Euclidean, see ``bisect``): the part holding j's lowest-index member
     keeps label j, the other part takes label e, and C_j, C_e become the means of their parts.
  6. the next iteration's loss weights follow from the new label counts.
All of it runs inside the jitted train step with fixed shapes (the trainer's ``cluster_update``
hook); step 5 costs O(N K) only at iterations that have a small cluster.

Evaluation with K = ``num_clusters``: at the start and every ``odc.eval_epochs`` epochs (when the
memories are also reported), the trainer's k-means probe (:func:`jclust.methods.evaluation.
kmeans_probe`): the unit neck features of the whole data set PCA-whitened to ``odc.eval_pca_dim``
dimensions and L2-normalised (DeepCluster v1's rule; 0 skips the whitening), clustered by spherical
k-means (the memories are left alone).

Deviations from the reference (ResNet-50 on ImageNet): no BatchNorm in the neck (its running
statistics, momentum 0.001, would not settle in a few thousand steps); a 2-means split started
from the principal direction instead of scikit-learn's k-means++ restarts.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jclust import cluster as jcluster
from jclust import models, optim
from jclust.cluster.splits import centroids_from_memory, fix_small_clusters
from jclust.config_lib import ConfigError
from jclust.data import augment
from jclust.methods import losses
from jclust.methods.base import Batch, DataSpec, Method, Phase
from jclust.methods.common import check_cnn_config, labels_report, steps_per_epoch
from jclust.methods.evaluation import kmeans_probe
from jclust.precision import cast_floats, float_dtype

ASSIGNMENT_RULE = ("L2-normalised neck features (evaluation mode), whitened and L2-normalised by "
                   "the PCA of the latest evaluation (odc.eval_pca_dim; none if 0), go to the "
                   "evaluation centroid of largest cosine similarity; the evaluation centroids "
                   "come from spherical k-means (K = num_clusters) on the whole data set's "
                   "whitened features; confidence = that cosine similarity")

# The odc config keys that make() takes as they are.
PLAIN_KEYS = ("train_clusters", "feature_dim", "neck_hidden", "neck_dropout", "memory_momentum",
              "min_cluster_size", "centroid_update_every", "reweight_power", "head_init_std",
              "kmeans_iters", "split_iters", "eval_pca_dim", "eval_n_init", "flip",
              "rotation_degrees")
_PRECISION = jax.lax.Precision.HIGHEST  # full float32 dot products also on GPU/TPU


class ODCState(NamedTuple):
    """Clustering state of ODC (all of it is checkpointed).

    Attributes:
      features: [N, D] float32 samples memory, unit rows (zeros before initialisation).
      labels: [N] int32 samples-memory pseudo-labels in [0, K).
      centroids: [K, D] float32 centroids memory (means of unit rows).
      iteration: [] int32 ODC iterations since the memories were initialised.
      recluster_labels: [N] int32 the memory labels at the last recluster (for the NMI
        between successive ones).
    """
    features: jax.Array
    labels: jax.Array
    centroids: jax.Array
    iteration: jax.Array
    recluster_labels: jax.Array


def normalize_rows(x: jax.Array) -> jax.Array:
    """Rows scaled to unit L2 norm, x / (|x| + 1e-10) as in the reference. x: [n, D]."""
    return x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + 1e-10)


def loss_weights(labels: jax.Array, num_clusters: int, power: float = 0.5) -> jax.Array:
    """Class weights w_k ∝ (n_k + 1e-5)^(-power), summing to one.

    Args:
      labels: [N] int pseudo-labels in [0, num_clusters).
      num_clusters: K.
      power: 0.5 in ODC.

    Returns:
      [K] float32.
    """
    counts = jnp.bincount(labels, length=num_clusters).astype(float_dtype())
    inverse = (counts + 1e-5) ** (-power)
    return inverse / jnp.sum(inverse)


def update_memory(memory: jax.Array, index: jax.Array, features: jax.Array,
                  momentum: float) -> jax.Array:
    """Momentum update of the samples memory at ``index``.

    F_i <- normalise((1 - m) F_i + m normalise(f_i)); ``momentum`` m is the weight of the new
    feature, as in the reference. memory: [N, D], index: [B] (distinct), features: [B, D].
    Returns the new memory [N, D].
    """
    mixed = (1.0 - momentum) * memory[index] + momentum * normalize_rows(features)
    return memory.at[index].set(normalize_rows(mixed))


def nearest_centroid(features: jax.Array, centroids: jax.Array) -> jax.Array:
    """argmax_k <centroids_k, features_i> (dot product). [B, D], [K, D] -> [B] int32."""
    sims = jnp.dot(features, centroids.T, precision=_PRECISION)
    return jnp.argmax(sims, axis=-1).astype(jnp.int32)


def advance_memories(cluster: ODCState, batch: Batch, features: jax.Array, key: jax.Array, *,
                     momentum: float, centroid_update_every: int, min_cluster_size: int,
                     split_iters: int) -> tuple[ODCState, dict]:
    """One ODC iteration of the memories (the step's ``cluster_update``).

    The batch's features [B, D] enter the samples memory at ``batch["index"]`` by momentum; its rows
    take the label of their nearest centroid; every ``centroid_update_every`` iterations the
    centroids become the memory's cluster means; clusters under ``min_cluster_size`` are
    dissolved and refilled by splits (:func:`fix_small_clusters`, ``key`` its fallback).

    Returns:
      (the new state, metrics: the batch's label change, small clusters, min/max memory sizes).
    """
    index = batch["index"]
    memory = update_memory(cluster.features, index, features, momentum)
    new = nearest_centroid(memory[index], cluster.centroids)
    changed = jnp.mean((new != cluster.labels[index]).astype(float_dtype()))
    labels = cluster.labels.at[index].set(new)
    iteration = cluster.iteration + 1
    centroids = jax.lax.cond(iteration % centroid_update_every == 0,
                             centroids_from_memory, lambda m, l, c: c,
                             memory, labels, cluster.centroids)
    labels, centroids, n_small = fix_small_clusters(
        memory, labels, centroids, key, min_size=min_cluster_size, iters=split_iters)
    sizes = jnp.bincount(labels, length=cluster.centroids.shape[0])
    metrics = {"memory_label_change": changed, "small_clusters": n_small,
               "memory_cluster_size_min": jnp.min(sizes),
               "memory_cluster_size_max": jnp.max(sizes)}
    return cluster._replace(features=memory, labels=labels, centroids=centroids,
                            iteration=iteration), metrics


def initial_memories(cluster: ODCState, z: jax.Array, key: jax.Array, *,
                     kmeans_iters: int) -> tuple[ODCState, int]:
    """The memories' start: the unit features z [N, D] as the samples memory, labelled by
    k-means (random initial centroids, ``kmeans_iters`` iterations, empty clusters split), the
    centroids their clusters' means. Returns (state, number of empty clusters repaired)."""
    km = jcluster.kmeans(z, cluster.centroids.shape[0], key=key, init="random",
                         max_iter=kmeans_iters, tol=0.0, empty_policy="split")
    return cluster._replace(features=z, labels=km.labels,
                            centroids=centroids_from_memory(z, km.labels, km.centroids),
                            iteration=jnp.zeros((), jnp.int32)), int(km.n_empty_repaired)


def make(*, backbone: models.Backbone, image_shape: Sequence[int], num_examples: int,
         num_clusters: int, tx: optax.GradientTransformation, num_steps: int,
         recluster_every: int, train_clusters: int = 100, feature_dim: int = 64,
         neck_hidden: int = 128, neck_dropout: float = 0.5, memory_momentum: float = 0.5,
         min_cluster_size: int = 20, centroid_update_every: int = 10,
         reweight_power: float = 0.5, head_init_std: float = 0.01, kmeans_iters: int = 20,
         split_iters: int = 20, eval_pca_dim: int = 32, eval_n_init: int = 10,
         crop_scale: tuple[float, float] = (0.5, 1.0), flip: bool = True,
         rotation_degrees: float = 0.0) -> Method:
    """ODC on ``backbone`` with ``tx`` (params "backbone", "neck", "head") for ``num_steps``
    steps, memories reported every ``recluster_every``; the rest: ``odc`` keys (docs/methods.md)."""
    n, k_train = num_examples, train_clusters
    neck = models.NonLinearNeck(hidden=neck_hidden, features=feature_dim, dropout=neck_dropout)
    head = models.nn.Dense(k_train, kernel_init=models.nn.initializers.normal(head_init_std))

    def init_head(key):
        return cast_floats(head.init(key, jnp.zeros((1, feature_dim)))["params"])

    def init(rng, x):
        k_backbone, k_neck, k_head = jax.random.split(rng, 3)
        backbone_params, backbone_state = backbone.init(k_backbone, x)
        params = {"backbone": backbone_params, "head": init_head(k_head),
                  "neck": neck.init(k_neck, jnp.zeros((1, backbone.feature_dim)))["params"]}
        state = ODCState(features=jnp.zeros((n, feature_dim), float_dtype()),
                         labels=jnp.zeros((n,), jnp.int32),
                         centroids=jnp.zeros((k_train, feature_dim), float_dtype()),
                         iteration=jnp.zeros((), jnp.int32),
                         recluster_labels=jnp.zeros((n,), jnp.int32))
        return params, {"backbone": backbone_state}, state

    def features(params, model_state, x, dropout_rng=None):
        """Neck features [B, D] and the new model state; training mode iff dropout_rng is given."""
        train = dropout_rng is not None
        h, backbone_state = backbone.apply(params["backbone"], model_state["backbone"], x, train)
        if not train:
            return neck.apply({"params": params["neck"]}, h), model_state
        f = neck.apply({"params": params["neck"]}, h, train=True, rngs={"dropout": dropout_rng})
        return f, {"backbone": backbone_state}

    def loss_fn(params, model_state, cluster, batch, rng):
        view_rng, dropout_rng = jax.random.split(rng)
        x = augment.augment_view(batch["x"], view_rng, out_size=tuple(image_shape[:2]),
                                 scale=tuple(crop_scale), flip=flip, max_degrees=rotation_degrees,
                                 color=image_shape[-1] == 3)
        f, model_state = features(params, model_state, x, dropout_rng)
        logits = head.apply({"params": params["head"]}, f)
        labels = cluster.labels[batch["index"]]
        weights = loss_weights(cluster.labels, k_train, reweight_power)[labels]
        loss = losses.cross_entropy(logits, labels, weights)
        accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(float_dtype()))
        return loss, (model_state, {"pseudo_label_acc": accuracy}, f)

    def embed(params, model_state, x):
        return normalize_rows(features(params, model_state, x)[0])

    def recluster(params, cluster, context):
        k_init, _, k_head = jax.random.split(context.key, 3)  # the second was the evaluation's
        z = normalize_rows(jnp.asarray(context.features, float_dtype()))
        info, previous = {}, np.asarray(cluster.recluster_labels)
        if context.first:
            cluster, info["kmeans_splits"] = initial_memories(cluster, z, k_init,
                                                              kmeans_iters=kmeans_iters)
            params, previous = {**params, "head": init_head(k_head)}, None
        labels = np.asarray(cluster.labels)
        info.update(labels_report(labels, k_train, prefix="memory", previous=previous))
        return params, cluster._replace(recluster_labels=jnp.asarray(labels, jnp.int32)), info

    phases = (Phase(name="odc", num_steps=num_steps, tx=tx, loss_fn=loss_fn,
                    recluster_every=recluster_every, recluster_at_start=True,
                    cluster_update=functools.partial(
                        advance_memories, momentum=memory_momentum, split_iters=split_iters,
                        centroid_update_every=centroid_update_every,
                        min_cluster_size=min_cluster_size)),)
    return Method(init=init, phases=phases, embed=embed, assign=None, recluster=recluster,
                  done=lambda cluster: False, assignment_rule=ASSIGNMENT_RULE,
                  training_labels=lambda params, cluster, features: cluster.labels,
                  evaluation=kmeans_probe(num_clusters, pca_dim=eval_pca_dim, n_init=eval_n_init,
                                          prepare=normalize_rows),
                  example_axes=ODCState(features=0, labels=0, centroids=None, iteration=None,
                                        recluster_labels=0))


def min_cluster_floor(min_cluster_size: int, num_examples: int, train_clusters: int) -> int:
    """The floor below which a cluster is dissolved: ``odc.min_cluster_size``, but at most a
    quarter of the mean cluster size N / K (at least 1), so that the floor scales down with a
    small data set instead of dissolving most clusters (Fashion-MNIST, K = 100: 20 of ~700; 3,000
    images: 7 of 30)."""
    return max(1, min(min_cluster_size, num_examples // (4 * train_clusters)))


def from_config(config: ml_collections.ConfigDict, data_spec: DataSpec) -> Method:
    """ODC as ``config`` sets it (sections ``model``, ``optim``, ``odc``)."""
    oc, n = config.odc, data_spec.num_examples
    if oc.train_clusters > n or config.num_clusters > n:
        raise ConfigError(f"config.odc.train_clusters={oc.train_clusters} / config.num_clusters="
                          f"{config.num_clusters}: more clusters than the {n} examples")
    check_cnn_config(config, data_spec, "ODC", {
        "odc.train_clusters": oc.train_clusters >= 2,
        "odc.min_cluster_size": oc.min_cluster_size >= 1, "odc.feature_dim": oc.feature_dim >= 1,
        "odc.neck_hidden": oc.neck_hidden >= 1, "odc.neck_dropout": 0.0 <= oc.neck_dropout < 1.0,
        "odc.memory_momentum": 0.0 < oc.memory_momentum <= 1.0,
        "odc.centroid_update_every": oc.centroid_update_every >= 1,
        "odc.reweight_power": oc.reweight_power >= 0.0, "odc.kmeans_iters": oc.kmeans_iters >= 1,
        "odc.split_iters": oc.split_iters >= 1, "odc.eval_n_init": oc.eval_n_init >= 1,
        "odc.eval_pca_dim": 0 <= oc.eval_pca_dim <= oc.feature_dim,
        "odc.eval_epochs": oc.eval_epochs >= 1,
        "optim.lr_decay_fraction": 0.0 <= config.optim.lr_decay_fraction <= 1.0})
    epoch = steps_per_epoch(config, data_spec)
    num_steps = config.optim.epochs * epoch
    # The head has no momentum (reference: paramwise momentum 0 for ``head.``).
    tx = optim.make(config.optim, num_steps, rest="body",
                    groups={"head": optim.Group(momentum=False)})
    plain = {key: oc[key] for key in PLAIN_KEYS}
    plain["min_cluster_size"] = min_cluster_floor(oc.min_cluster_size, n, oc.train_clusters)
    return make(backbone=models.make_backbone(config.model), image_shape=data_spec.input_shape,
                num_examples=n, num_clusters=config.num_clusters, tx=tx, num_steps=num_steps,
                recluster_every=oc.eval_epochs * epoch, crop_scale=tuple(oc.crop_scale), **plain)
