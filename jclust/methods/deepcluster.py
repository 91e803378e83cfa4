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

Evaluation with K = ``num_clusters`` (10 for Fashion-MNIST): at every reclustering, spherical
k-means with K clusters on the same whitened, L2-normalised features; before an evaluation
without a reclustering (the final one), PCA and these centroids are refitted on the current
features.

Assignment rule: the example's backbone features are whitened and L2-normalised with the PCA of
the last reclustering and go to the evaluation centroid of largest cosine similarity; confidence
is that cosine similarity.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jclust import cluster as jcluster
from jclust import metrics as jmetrics
from jclust import models, optim
from jclust.config_lib import ConfigError, check_ranges
from jclust.data import augment, samplers
from jclust.methods import losses
from jclust.methods.base import DataSpec, Method, Phase, SamplePlan
from jclust.precision import cast_floats, float_dtype

ASSIGNMENT_RULE = ("features whitened and L2-normalised by the PCA of the latest evaluation, then "
                   "the evaluation centroid (spherical k-means, K = num_clusters) of largest cosine "
                   "similarity; confidence = that cosine similarity")
SAMPLING = ("uniform", "reweight", "none")


class DeepClusterState(NamedTuple):
    """Clustering state of DeepCluster (all of it is checkpointed).

    Attributes:
      pseudo_labels: [N] int32 training pseudo-labels (-1 before the first clustering).
      class_weights: [train_clusters] float32 loss weight of each pseudo-class (ones unless
        ``sampling="reweight"``).
      order: [N] int32 example order of the current epochs (uniform sampling over pseudo-labels,
        or a seeded permutation).
      pca_mean: [D] float32; pca_projection: [D, pca_dim] float32, whitening folded in.
      eval_centroids: [num_clusters, pca_dim] float32 unit rows.
    """
    pseudo_labels: jax.Array
    class_weights: jax.Array
    order: jax.Array
    pca_mean: jax.Array
    pca_projection: jax.Array
    eval_centroids: jax.Array


def make(config, data_spec: DataSpec) -> Method:
    """Builds DeepCluster v1 for ``config`` (sections ``model``, ``optim``, ``deepcluster``)."""
    dc = config.deepcluster
    n = data_spec.num_examples
    k_eval = config.num_clusters
    k_train = dc.train_clusters
    if config.model.name not in ("small_cnn", "resnet18"):
        raise ConfigError(f"config.model.name={config.model.name!r}: DeepCluster needs 'small_cnn' "
                          "or 'resnet18'")
    backbone = models.make_backbone(config.model)
    feature_dim = backbone.feature_dim
    check_ranges(config, {"deepcluster.train_clusters": 1 <= k_train <= n,
                         "num_clusters": 1 <= k_eval <= n,
                         "deepcluster.pca_dim": dc.pca_dim >= 1 and dc.pca_dim <= feature_dim,
                         "deepcluster.kmeans_iters": dc.kmeans_iters >= 1,
                         "deepcluster.recluster_epochs": dc.recluster_epochs >= 1,
                         "deepcluster.collapse_fraction": 0 < dc.collapse_fraction <= 1,
                         "optim.epochs": config.optim.epochs >= 1,
                         "batch_size": config.batch_size <= n},
                 context=f"N = {n} examples, representation size {feature_dim}")
    if dc.sampling not in SAMPLING:
        raise ConfigError(f"config.deepcluster.sampling={dc.sampling!r}; use one of {SAMPLING}")
    if not data_spec.is_image:
        raise ConfigError("DeepCluster trains a CNN on images; the data are feature vectors")
    head = models.nn.Dense(k_train, kernel_init=models.nn.initializers.normal(dc.head_init_std))
    steps_per_epoch = n // config.batch_size
    num_steps = config.optim.epochs * steps_per_epoch
    height, width = data_spec.input_shape[:2]

    def init(rng, x):
        k1, k2 = jax.random.split(rng)
        backbone_params, backbone_state = backbone.init(k1, prepare(x))
        params = {"backbone": backbone_params,
                  "head": head.init(k2, jnp.zeros((1, feature_dim)))["params"]}
        state = DeepClusterState(
            pseudo_labels=jnp.full((n,), -1, jnp.int32),
            class_weights=jnp.ones((k_train,), float_dtype()),
            order=jnp.arange(n, dtype=jnp.int32),
            pca_mean=jnp.zeros((feature_dim,), float_dtype()),
            pca_projection=jnp.zeros((feature_dim, dc.pca_dim), float_dtype()),
            eval_centroids=jnp.zeros((k_eval, dc.pca_dim), float_dtype()))
        return params, {"backbone": backbone_state}, state

    def view(x, rng):
        return augment.augment_view(x, rng, out_size=(height, width), scale=tuple(dc.crop_scale),
                                    flip=dc.flip, max_degrees=dc.rotation_degrees,
                                    color=data_spec.input_shape[-1] == 3)

    def prepare(x):
        # Sobel: grayscale + gradients, so that colour cannot be used to find trivial clusters.
        return models.sobel_filter(x) if dc.sobel else x

    def loss_fn(params, model_state, cluster, batch, rng):
        h, backbone_state = backbone.apply(params["backbone"], model_state["backbone"],
                                           prepare(view(batch["x"], rng)), train=True)
        logits = head.apply({"params": params["head"]}, h)
        labels = cluster.pseudo_labels[batch["index"]]
        weights = cluster.class_weights[labels] if dc.sampling == "reweight" else None
        loss = losses.cross_entropy(logits, labels, weights)
        accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(float_dtype()))
        return loss, ({"backbone": backbone_state}, {"pseudo_label_acc": accuracy})

    def embed(params, model_state, x):
        return backbone.apply(params["backbone"], model_state["backbone"], prepare(x),
                              train=False)[0]

    def assign(params, cluster, feats):
        z = jcluster.whiten(feats, cluster.pca_mean, cluster.pca_projection)
        sims = z @ cluster.eval_centroids.T
        return jnp.argmax(sims, -1).astype(jnp.int32), jnp.max(sims, -1)

    def whitening(feats):
        mean, projection = jcluster.fit_whitening(feats, dc.pca_dim)
        return mean, projection, jcluster.whiten(jnp.asarray(feats), mean, projection)

    def fit_evaluation(params, cluster, feats, *, key):
        mean, projection, z = whitening(feats)
        evaluation = jcluster.kmeans(z, k_eval, key=key, n_init=dc.eval_n_init, spherical=True)
        return cluster._replace(pca_mean=mean, pca_projection=projection,
                                eval_centroids=evaluation.centroids)

    def recluster(params, cluster, context):
        feats, key = context.features, context.key
        k_pca, k_train_km, k_eval_km, k_head, k_order = jax.random.split(key, 5)
        mean, projection, z = whitening(feats)
        km = jcluster.kmeans(z, k_train, key=k_train_km, init="random", max_iter=dc.kmeans_iters,
                             tol=0.0, empty_policy="split")
        evaluation = jcluster.kmeans(z, k_eval, key=k_eval_km, n_init=dc.eval_n_init,
                                     spherical=True)
        labels = np.asarray(km.labels)
        sizes = np.bincount(labels, minlength=k_train)
        rng = np.random.default_rng(np.asarray(jax.random.key_data(k_order)).ravel().tolist())
        if dc.sampling == "uniform":
            order = samplers.uniform_over_labels(labels, n, rng)
        else:
            order = rng.permutation(n)
        weights = (1.0 / np.maximum(sizes, 1)) * (n / max(int(np.sum(sizes > 0)), 1))
        info = {"pseudo_clusters_used": int(np.sum(sizes > 0)),
                "pseudo_size_min": int(sizes.min()), "pseudo_size_max": int(sizes.max()),
                "pseudo_size_entropy": jmetrics.cluster_sizes(labels, k_train)["size_entropy"],
                "kmeans_splits": int(km.n_empty_repaired)}
        old = np.asarray(cluster.pseudo_labels)
        if old.min() >= 0:
            info["pseudo_nmi_previous"] = float(jmetrics.nmi(old, labels))
        if sizes.max() >= dc.collapse_fraction * n:
            info["warning"] = (
                f"pseudo-label collapse: {int(sizes.max())} of {n} examples in one cluster "
                f"({int(np.sum(sizes > 0))} of {k_train} clusters used); training goes on. "
                "Remedies: deepcluster.sampling='uniform', a lower optim.learning_rate, "
                "more deepcluster.recluster_epochs")
        head_params = head.init(k_head, jnp.zeros((1, feature_dim)))["params"]
        params = {**params, "head": cast_floats(head_params)}
        cluster = DeepClusterState(
            pseudo_labels=jnp.asarray(labels, jnp.int32),
            class_weights=jnp.asarray(weights, float_dtype()),
            order=jnp.asarray(order, jnp.int32), pca_mean=mean, pca_projection=projection,
            eval_centroids=evaluation.centroids)
        return params, cluster, info

    # DeepCluster's SGD: the backbone with weight decay and momentum, the head without either.
    label_tx = optim.make(config.optim, num_steps, rest="backbone",
                          groups={"head": optim.Group(weight_decay=False, momentum=False)})
    phases = (Phase(name="deepcluster", num_steps=num_steps,
                    tx=label_tx, loss_fn=loss_fn,
                    recluster_every=dc.recluster_epochs * steps_per_epoch,
                    recluster_at_start=True),)
    return Method(init=init, phases=phases, embed=embed, assign=assign, recluster=recluster,
                  done=lambda cluster: False, assignment_rule=ASSIGNMENT_RULE,
                  sampler=lambda cluster: SamplePlan(order=cluster.order),
                  training_labels=lambda cluster: cluster.pseudo_labels,
                  fit_evaluation=fit_evaluation,
                  example_axes=DeepClusterState(pseudo_labels=0, class_weights=None, order=None,
                                                pca_mean=None, pca_projection=None,
                                                eval_centroids=None))
