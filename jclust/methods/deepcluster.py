"""DeepCluster v1 (Caron et al., 2018): k-means pseudo-labels on PCA-whitened features.

Every ``deepcluster.recluster_epochs`` epochs (and before the first step):
  1. a feature pass over the whole data set without augmentation (the backbone's representation);
  2. PCA to ``pca_dim`` with whitening, then L2 normalisation of every row;
  3. k-means with ``train_clusters`` clusters (random data points as initial centroids, a new key
     every time, ``kmeans_iters`` Lloyd iterations, empty clusters split from a non-empty one as
     in faiss) gives every example a pseudo-label;
  4. the classifier head is re-initialised (N(0, 0.01²) weights, zero bias: cluster ids are
     permuted between clusterings) and the epoch order samples every non-empty pseudo-class
     equally often (``sampling="uniform"``; or ``"reweight"``: plain shuffling with the loss
     weighted by 1/|class|; or ``"none"``).
Between reclusterings the backbone and head minimise the cross-entropy of the pseudo-labels on
augmented views. The head has its own SGD without momentum (so a re-initialised head inherits no
stale momentum); the backbone uses SGD with momentum and weight decay.

Evaluation with K = ``num_clusters`` (10 for Fashion-MNIST): the trainer's k-means probe
(:func:`jclust.methods.evaluation.kmeans_probe`), fitted before every evaluation: PCA-whitening of
the backbone features to ``pca_dim`` (as for the pseudo-labels), L2 normalisation, spherical
k-means with K clusters (``eval_n_init`` restarts).

Assignment rule: the example's backbone features are whitened and L2-normalised with the PCA of
the latest evaluation and go to the evaluation centroid of largest cosine similarity; confidence
is that cosine similarity.
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
from jclust.config_lib import ConfigError, check_ranges
from jclust.data import samplers
from jclust.methods import losses
from jclust.methods.base import DataSpec, Method, Phase, SamplePlan
from jclust.methods.common import (augmented_logits, check_cnn_config, init_backbone_and_head,
                                   labels_report, steps_per_epoch)
from jclust.methods.evaluation import kmeans_probe
from jclust.precision import cast_floats, float_dtype

ASSIGNMENT_RULE = ("backbone features whitened and L2-normalised by the PCA of the latest "
                   "evaluation, then the evaluation centroid (spherical k-means, K = num_clusters) "
                   "of largest cosine similarity; confidence = that cosine similarity")
SAMPLING = ("uniform", "reweight", "none")


class DeepClusterState(NamedTuple):
    """Clustering state of DeepCluster (all of it is checkpointed).

    Attributes:
      pseudo_labels: [N] int32 training pseudo-labels (-1 before the first clustering).
      class_weights: [train_clusters] float32 loss weight of each pseudo-class (ones unless
        ``sampling="reweight"``).
      order: [N] int32 example order of the current epochs (uniform sampling over pseudo-labels,
        or a seeded permutation).
    """
    pseudo_labels: jax.Array
    class_weights: jax.Array
    order: jax.Array


def epoch_plan(labels: np.ndarray, previous: np.ndarray, num_labels: int, key: jax.Array, *,
               sampling: str, collapse_fraction: float, splits: int
               ) -> tuple[np.ndarray, np.ndarray, dict]:
    """What a reclustering's pseudo-labels set for the epochs until the next one.

    Args:
      labels: [N] the new pseudo-labels, in [0, num_labels).
      previous: [N] the pseudo-labels they replace (-1 before the first clustering).
      num_labels: the number of pseudo-classes.
      key: the key of the epoch order.
      sampling: "uniform" (every non-empty pseudo-class equally often), "reweight" or "none"
        (a seeded permutation).
      collapse_fraction: warn when one pseudo-class holds this fraction of N or more.
      splits: the k-means' repaired empty clusters, reported.

    Returns:
      (order [N], class weights [num_labels], info): the weights are 1/|class|, scaled so that an
      average example weighs 1; info reports the sizes, the NMI with ``previous`` and a
      "warning" on collapse.
    """
    n = labels.shape[0]
    sizes = np.bincount(labels, minlength=num_labels)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    if sampling == "uniform":
        order = samplers.uniform_over_labels(labels, n, rng)
    else:
        order = rng.permutation(n)
    weights = (1.0 / np.maximum(sizes, 1)) * (n / max(int(np.sum(sizes > 0)), 1))
    info = labels_report(labels, num_labels, prefix="pseudo", previous=previous,
                         collapse_fraction=collapse_fraction,
                         remedies="deepcluster.sampling='uniform', a lower optim.learning_rate, "
                                  "more deepcluster.recluster_epochs")
    info["kmeans_splits"] = splits
    return order, weights, info


def make(*, backbone: models.Backbone, image_shape: Sequence[int], num_examples: int,
         num_clusters: int, tx: optax.GradientTransformation, num_steps: int,
         recluster_every: int, train_clusters: int = 100, pca_dim: int = 32,
         kmeans_iters: int = 20, sampling: str = "uniform", head_init_std: float = 0.01,
         sobel: bool = False, crop_scale: tuple[float, float] = (0.5, 1.0), flip: bool = True,
         rotation_degrees: float = 0.0, collapse_fraction: float = 0.5,
         eval_n_init: int = 10) -> Method:
    """DeepCluster v1 on ``backbone`` with ``tx`` (over params "backbone" and "head") for
    ``num_steps`` steps, reclustered every ``recluster_every`` steps and at the start. The other
    arguments are the ``deepcluster`` config keys of the same names (docs/methods.md)."""
    n, feature_dim = num_examples, backbone.feature_dim
    head = models.nn.Dense(train_clusters, kernel_init=models.nn.initializers.normal(head_init_std))

    def init(rng, x):
        params, model_state = init_backbone_and_head(rng, backbone, head, prepare(x))
        state = DeepClusterState(
            pseudo_labels=jnp.full((n,), -1, jnp.int32),
            class_weights=jnp.ones((train_clusters,), float_dtype()),
            order=jnp.arange(n, dtype=jnp.int32))
        return params, model_state, state

    def prepare(x):
        # Sobel: grayscale + gradients, so that colour cannot be used to find trivial clusters.
        return models.sobel_filter(x) if sobel else x

    def loss_fn(params, model_state, cluster, batch, rng):
        logits, model_state = augmented_logits(
            backbone, head, params, model_state, batch["x"], rng, image_shape=image_shape,
            crop_scale=crop_scale, flip=flip, rotation_degrees=rotation_degrees, prepare=prepare)
        labels = cluster.pseudo_labels[batch["index"]]
        weights = cluster.class_weights[labels] if sampling == "reweight" else None
        loss = losses.cross_entropy(logits, labels, weights)
        accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(float_dtype()))
        return loss, (model_state, {"pseudo_label_acc": accuracy})

    def embed(params, model_state, x):
        return backbone.apply(params["backbone"], model_state["backbone"], prepare(x),
                              train=False)[0]

    def recluster(params, cluster, context):
        # Five keys (two unused), as when the evaluation was fitted here: the same draws.
        _, k_train_km, _, k_head, k_order = jax.random.split(context.key, 5)
        mean, projection = jcluster.fit_whitening(context.features, pca_dim)
        z = jcluster.whiten(jnp.asarray(context.features), mean, projection)
        km = jcluster.kmeans(z, train_clusters, key=k_train_km, init="random",
                             max_iter=kmeans_iters, tol=0.0, empty_policy="split")
        labels = np.asarray(km.labels)
        order, weights, info = epoch_plan(labels, np.asarray(cluster.pseudo_labels),
                                          train_clusters, k_order, sampling=sampling,
                                          collapse_fraction=collapse_fraction,
                                          splits=int(km.n_empty_repaired))
        head_params = head.init(k_head, jnp.zeros((1, feature_dim)))["params"]
        cluster = DeepClusterState(pseudo_labels=jnp.asarray(labels, jnp.int32),
                                   class_weights=jnp.asarray(weights, float_dtype()),
                                   order=jnp.asarray(order, jnp.int32))
        return {**params, "head": cast_floats(head_params)}, cluster, info

    phases = (Phase(name="deepcluster", num_steps=num_steps, tx=tx, loss_fn=loss_fn,
                    recluster_every=recluster_every, recluster_at_start=True),)
    return Method(init=init, phases=phases, embed=embed, assign=None, recluster=recluster,
                  done=lambda cluster: False, assignment_rule=ASSIGNMENT_RULE,
                  sampler=lambda cluster: SamplePlan(order=cluster.order),
                  training_labels=lambda params, cluster, features: cluster.pseudo_labels,
                  evaluation=kmeans_probe(num_clusters, pca_dim=pca_dim, n_init=eval_n_init),
                  example_axes=DeepClusterState(pseudo_labels=0, class_weights=None, order=None))


def from_config(config: ml_collections.ConfigDict, data_spec: DataSpec) -> Method:
    """DeepCluster v1 as ``config`` sets it (sections ``model``, ``optim``, ``deepcluster``)."""
    dc = config.deepcluster
    if dc.sampling not in SAMPLING:
        raise ConfigError(f"config.deepcluster.sampling={dc.sampling!r}; use one of {SAMPLING}")
    check_cnn_config(config, data_spec, "DeepCluster", {
        "deepcluster.train_clusters": 1 <= dc.train_clusters <= data_spec.num_examples,
        "deepcluster.kmeans_iters": dc.kmeans_iters >= 1,
        "deepcluster.recluster_epochs": dc.recluster_epochs >= 1,
        "deepcluster.collapse_fraction": 0 < dc.collapse_fraction <= 1})
    backbone = models.make_backbone(config.model)
    check_ranges(config, {"deepcluster.pca_dim": 1 <= dc.pca_dim <= backbone.feature_dim},
                 f"representation size {backbone.feature_dim}")
    epoch = steps_per_epoch(config, data_spec)
    num_steps = config.optim.epochs * epoch
    # DeepCluster's SGD: the backbone with weight decay and momentum, the head without either.
    tx = optim.make(config.optim, num_steps, rest="backbone",
                    groups={"head": optim.Group(weight_decay=False, momentum=False)})
    return make(backbone=backbone, image_shape=data_spec.input_shape,
                num_examples=data_spec.num_examples, num_clusters=config.num_clusters, tx=tx,
                num_steps=num_steps, recluster_every=dc.recluster_epochs * epoch,
                train_clusters=dc.train_clusters, pca_dim=dc.pca_dim,
                kmeans_iters=dc.kmeans_iters, sampling=dc.sampling,
                head_init_std=dc.head_init_std, sobel=dc.sobel, crop_scale=tuple(dc.crop_scale),
                flip=dc.flip, rotation_degrees=dc.rotation_degrees,
                collapse_fraction=dc.collapse_fraction, eval_n_init=dc.eval_n_init)
