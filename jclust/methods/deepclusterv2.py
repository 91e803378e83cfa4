"""DeepCluster-v2 (Caron et al., 2020, appendix of the SwAV paper): spherical k-means on a memory
bank of projected features, prototypes set from the centroids.

Model: backbone -> projection head Dense-ReLU-Dense -> L2-normalised z [B, F]; H prototype heads,
each a bias-free [K_h, F] matrix of unit rows (``params["prototypes"][h]``).

State: a memory bank [N, 2, F] holding, for every example, the z of its two augmented views as
last seen; the current assignments [H, N].

Every ``recluster_epochs`` epochs (and before the first step):
  1. the first time, the memory is filled with the z of the un-augmented images (both slots);
  2. for head h, spherical k-means with K_h clusters on memory slot h mod 2: K_h random memory
     rows as initial centroids (a new key each time), ``kmeans_iters`` iterations, an empty
     cluster keeps its previous centroid (``empty_policy="keep"``, as in the reference), then
     one final assignment;
  3. the centroids become head h's prototypes and the assignments its targets.
Every step, for both views v and every head h, the loss is the cross-entropy of
softmax(<z_v, c^h_k> / temperature) against the example's assignment a^h_i, averaged over views
and heads; then the batch's z of both views overwrite its memory slots (``Phase.cluster_update``).
With ``freeze_prototypes`` (the reference's effective default) the prototypes get no updates, so
they always equal the last centroids; otherwise they are trained between reclusterings and reset
to the centroids at each.

Evaluation with K = ``num_clusters`` (``assignment``): the trainer's k-means probe
(:func:`jclust.methods.evaluation.kmeans_probe`), fitted before every evaluation, with K clusters
(``eval_n_init`` restarts): "projection", spherical k-means on the z of the un-augmented images;
"backbone", DeepCluster v1's rule on their backbone features h (PCA-whitened to
``eval_pca_dim``, L2-normalised); the feature pass then yields [z, h] concatenated.

Assignment rule: the evaluation centroid of largest cosine similarity with the example's z (or
whitened h); confidence = that cosine similarity.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jclust import cluster as jcluster
from jclust import models, optim
from jclust.cluster import l2_normalize
from jclust.config_lib import ConfigError
from jclust.data import augment
from jclust.methods.base import Batch, DataSpec, Method, Phase
from jclust.methods.common import check_cnn_config, labels_report, steps_per_epoch
from jclust.methods.evaluation import kmeans_probe, split_feature_probe
from jclust.models.neck import ProjectionHead
from jclust.precision import RANDOM_DTYPE, float_dtype

RULES = {
    "projection": ("the evaluation centroid (spherical k-means, K = num_clusters, on the projected, "
                   "L2-normalised features) of largest cosine similarity; confidence = that cosine "
                   "similarity"),
    "backbone": ("the backbone features, PCA-whitened (deepclusterv2.eval_pca_dim) and "
                 "L2-normalised by the PCA of the latest evaluation, go to the evaluation centroid "
                 "(spherical k-means, K = num_clusters, on the whole data set's whitened features) "
                 "of largest cosine similarity; confidence = that cosine similarity")}


class DeepClusterV2State(NamedTuple):
    """Clustering state of DeepCluster-v2 (all of it is checkpointed).

    Attributes:
      memory: [N, 2, F] float32 unit rows, the z of each example's two views as last seen.
      assignments: [H, N] int32 k-means assignment of each example for each head (-1 before the
        first clustering).
    """
    memory: jax.Array
    assignments: jax.Array


def prototype_loss(z: jax.Array, prototypes: jax.Array, targets: jax.Array,
                   temperature: float) -> jax.Array:
    """Mean cross-entropy of softmax(z . c_k / temperature) against the targets.

    Args:
      z: [V, B, F] unit rows (V views).
      prototypes: [H, K, F] unit rows (H heads).
      targets: [H, B] int32 cluster of each example for each head.
      temperature: softmax temperature.

    Returns:
      Scalar: the mean over views, heads and examples.
    """
    logits = jnp.einsum("vbf,hkf->vhbk", z, prototypes) / temperature
    labels = jnp.broadcast_to(targets[None], logits.shape[:-1])
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def update_memory(cluster: DeepClusterV2State, batch: Batch, outputs: jax.Array,
                  rng: jax.Array) -> tuple[DeepClusterV2State, dict]:
    """The step's ``cluster_update``: the batch's z of both views, ``outputs`` [B, 2, F],
    overwrite its memory rows."""
    del rng
    return cluster._replace(memory=cluster.memory.at[batch["index"]].set(outputs)), {}


def cluster_heads(memory: jax.Array, previous: jax.Array, num_prototypes: int, keys: jax.Array,
                  *, kmeans_iters: int, collapse_fraction: float
                  ) -> tuple[jax.Array, jax.Array, dict]:
    """The reclustering of every head: spherical k-means on memory slot h mod 2.

    Args:
      memory: [N, 2, F] unit rows.
      previous: [H, N] int32 the assignments being replaced (-1 before the first clustering).
      num_prototypes: K, each head's clusters.
      keys: [H] keys, one per head (its random initial centroids).
      kmeans_iters: Lloyd iterations; an empty cluster keeps its previous centroid.
      collapse_fraction: warn when head 0's largest cluster holds this fraction of N or more.

    Returns:
      (prototypes [H, K, F], assignments [H, N] int32, info): each head's clusters used, and
      head 0's :func:`jclust.methods.common.labels_report` (sizes, NMI with its previous
      assignment, a "warning" on collapse).
    """
    prototypes, assignments, info = [], [], {}
    for h in range(keys.shape[0]):
        km = jcluster.kmeans(memory[:, h % 2], num_prototypes, key=keys[h], init="random",
                             max_iter=kmeans_iters, tol=0.0, spherical=True, empty_policy="keep")
        prototypes.append(km.centroids)
        assignments.append(km.labels)
        info[f"head{h}_clusters_used"] = int(np.unique(np.asarray(km.labels)).size)
    assignments = jnp.stack(assignments).astype(jnp.int32)
    info.update(labels_report(
        np.asarray(assignments[0]), num_prototypes, prefix="pseudo",
        previous=np.asarray(previous[0]), collapse_fraction=collapse_fraction,
        what="assignment", remedies="a higher deepclusterv2.temperature, a lower "
                                    "optim.learning_rate, more prototypes"))
    return jnp.stack(prototypes), assignments, info


def make(*, backbone: models.Backbone, image_shape: Sequence[int], num_examples: int,
         num_clusters: int, tx: optax.GradientTransformation, num_steps: int,
         recluster_every: int, num_heads: int = 3, prototypes: int = 100, feature_dim: int = 64,
         projection_hidden: int = 128, temperature: float = 0.1, kmeans_iters: int = 10,
         crop_scale: tuple[float, float] = (0.2, 1.0), flip: bool = True,
         collapse_fraction: float = 0.5, assignment: str = "projection", eval_pca_dim: int = 32,
         eval_n_init: int = 10) -> Method:
    """DeepCluster-v2 on ``backbone`` with ``tx`` for ``num_steps`` steps, reclustered every
    ``recluster_every`` steps and at the start. The other arguments are the config keys of the same
    names (docs/methods.md); ``tx`` decides whether params["prototypes"] are trained."""
    projection = ProjectionHead(hidden=projection_hidden, out=feature_dim)

    def init(rng, x):
        k_backbone, k_projection, k_prototypes = jax.random.split(rng, 3)
        backbone_params, backbone_state = backbone.init(k_backbone, x)
        prototype_rows = jax.random.normal(k_prototypes, (num_heads, prototypes, feature_dim),
                                           RANDOM_DTYPE).astype(float_dtype())
        params = {"backbone": backbone_params,
                  "projection": projection.init(k_projection,
                                                jnp.zeros((1, backbone.feature_dim)))["params"],
                  "prototypes": l2_normalize(prototype_rows)}
        state = DeepClusterV2State(
            memory=jnp.zeros((num_examples, 2, feature_dim), float_dtype()),
            assignments=jnp.full((num_heads, num_examples), -1, jnp.int32))
        return params, {"backbone": backbone_state}, state

    def project(params, model_state, x, train):
        h, backbone_state = backbone.apply(params["backbone"], model_state["backbone"], x, train)
        return projection.apply({"params": params["projection"]}, h), h, {"backbone": backbone_state}

    def view(x, rng):
        return augment.augment_view(x, rng, out_size=tuple(image_shape[:2]),
                                    scale=tuple(crop_scale), flip=flip, color=image_shape[-1] == 3)

    def loss_fn(params, model_state, cluster, batch, rng):
        k1, k2 = jax.random.split(rng)
        # Both views in one forward pass (one set of batch statistics for a BatchNorm backbone).
        views = jnp.concatenate([view(batch["x"], k1), view(batch["x"], k2)])
        z, _, model_state = project(params, model_state, views, train=True)
        z = z.reshape(2, -1, z.shape[-1])
        targets = cluster.assignments[:, batch["index"]]  # [H, B]
        loss = prototype_loss(z, params["prototypes"], targets, temperature)
        logits = jnp.einsum("vbf,hkf->vhbk", z, params["prototypes"])
        agreement = jnp.mean((jnp.argmax(logits, -1) == targets[None]).astype(float_dtype()))
        return loss, (model_state, {"assignment_acc": agreement}, jnp.swapaxes(z, 0, 1))

    def embed(params, model_state, x):
        z, h, _ = project(params, model_state, x, train=False)
        return z if assignment == "projection" else jnp.concatenate([z, h], -1)

    def recluster(params, cluster, context):
        feats = jnp.asarray(context.features)[:, :feature_dim]  # z
        memory = cluster.memory
        if context.first and int(jnp.max(cluster.assignments)) < 0:
            memory = jnp.stack([feats, feats], axis=1)
        # H + 1 keys, as when the evaluation was fitted here with the last: the same draws.
        keys = jax.random.split(context.key, num_heads + 1)
        centroids, assignments, info = cluster_heads(
            memory, cluster.assignments, prototypes, keys[:-1], kmeans_iters=kmeans_iters,
            collapse_fraction=collapse_fraction)
        return ({**params, "prototypes": centroids},
                DeepClusterV2State(memory=memory, assignments=assignments), info)

    # z is already unit rows: the projection probe takes the feature pass as it is.
    evaluation = (kmeans_probe(num_clusters, n_init=eval_n_init) if assignment == "projection" else
                  split_feature_probe("backbone", num_clusters, feature_dim, pca_dim=eval_pca_dim,
                                      n_init=eval_n_init))
    phases = (Phase(name="deepclusterv2", num_steps=num_steps, tx=tx, loss_fn=loss_fn,
                    recluster_every=recluster_every, recluster_at_start=True,
                    cluster_update=update_memory),)
    return Method(init=init, phases=phases, embed=embed, assign=None, recluster=recluster,
                  done=lambda cluster: False, assignment_rule=RULES[assignment],
                  training_labels=lambda params, cluster, features: cluster.assignments[0],
                  evaluation=evaluation,
                  example_axes=DeepClusterV2State(memory=0, assignments=1))


def from_config(config: ml_collections.ConfigDict, data_spec: DataSpec) -> Method:
    """DeepCluster-v2 as ``config`` sets it (sections ``model``, ``optim``, ``deepclusterv2``)."""
    dc = config.deepclusterv2
    heads = tuple(int(k) for k in dc.prototypes)
    if not heads:
        raise ConfigError("config.deepclusterv2.prototypes must name at least one head, e.g. (100,)")
    if len(set(heads)) != 1:
        raise ConfigError(f"config.deepclusterv2.prototypes={heads}: every head needs the same "
                          "number of prototypes (they are stored as one [H, K, F] array)")
    check_cnn_config(config, data_spec, "DeepCluster-v2", {
        "deepclusterv2.prototypes": 1 <= heads[0] <= data_spec.num_examples,
        "deepclusterv2.feature_dim": dc.feature_dim >= 1,
        "deepclusterv2.temperature": dc.temperature > 0,
        "deepclusterv2.kmeans_iters": dc.kmeans_iters >= 1,
        "deepclusterv2.recluster_epochs": dc.recluster_epochs >= 1,
        "deepclusterv2.collapse_fraction": 0 < dc.collapse_fraction <= 1,
        "deepclusterv2.eval_pca_dim": dc.eval_pca_dim >= 1})
    if dc.assignment not in RULES:
        raise ConfigError(f"config.deepclusterv2.assignment={dc.assignment!r}: use 'projection' "
                          "(k-means on z) or 'backbone' (on the whitened backbone features)")
    backbone = models.make_backbone(config.model)
    if dc.assignment == "backbone" and dc.eval_pca_dim > backbone.feature_dim:
        raise ConfigError(f"config.deepclusterv2.eval_pca_dim={dc.eval_pca_dim} exceeds the "
                          f"backbone's {backbone.feature_dim} features")
    epoch = steps_per_epoch(config, data_spec)
    num_steps = config.optim.epochs * epoch
    frozen = optim.Group(frozen_steps=-1 if dc.freeze_prototypes else None)
    return make(backbone=backbone, image_shape=data_spec.input_shape,
                num_examples=data_spec.num_examples, num_clusters=config.num_clusters,
                tx=optim.make(config.optim, num_steps, groups={"prototypes": frozen}),
                num_steps=num_steps, recluster_every=dc.recluster_epochs * epoch,
                num_heads=len(heads), prototypes=heads[0], feature_dim=dc.feature_dim,
                projection_hidden=dc.projection_hidden, temperature=dc.temperature,
                kmeans_iters=dc.kmeans_iters, crop_scale=tuple(dc.crop_scale), flip=dc.flip,
                collapse_fraction=dc.collapse_fraction, assignment=dc.assignment,
                eval_pca_dim=dc.eval_pca_dim, eval_n_init=dc.eval_n_init)
