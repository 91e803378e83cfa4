"""SwAV (Caron et al., NeurIPS 2020): online Sinkhorn codes and swapped prediction, with multi-crop.

Model: backbone -> projection head Dense-ReLU-Dense -> L2-normalised z [B, F]; K prototypes, a
bias-free [K, F] matrix (``params["prototypes"]``) re-normalised to unit rows at the start of every
train step (``Phase.prepare_params``), so that scores <z, c_k> are cosines.

Every step, for a batch of images:
  1. multi-crop: ``2`` large views (the assignment crops) and ``num_small_crops`` small ones
     (``jclust.data.augment.multi_crop``); views of one resolution go through the network together;
  2. for each assignment crop s, codes q_s = Sinkhorn-Knopp(scores of crop s) over the global batch
     (``jclust.cluster.sinkhorn_knopp``, no gradient), with the queue's scores in front once the
     queue is full (only the batch's rows are kept); ``hard_codes`` rounds them to one-hot;
  3. loss = mean over s of the mean over every other crop v of the cross-entropy between q_s and
     softmax(scores of crop v / temperature) (the swapped prediction);
  4. the prototypes get no update during the first ``freeze_prototypes_steps`` (or ``_epochs``)
     steps;
  5. after the optimiser step, the queue (if any, from ``queue_start_epoch``) takes the batch's z of
     the assignment crops at its front and drops as many of its oldest rows (``cluster_update``).

Diagnostics every step: the loss over ln K (1 = uniform predictions: the collapse SwAV's README
describes), the codes' mean row entropy, the number of prototypes that win at least one example of
the batch (codes' argmax), and the features' std over the batch (0 when z collapses to a point).
When the loss sits at >= 0.99 ln K or fewer than ``collapse_prototype_fraction`` of the
prototypes are in use for ``collapse_patience_steps`` consecutive steps, the step metric
``warn_collapse`` is 1 and the trainer prints, once, the remedies that exist as config keys.

Assignment rule (``swav.assignment``): "prototypes" (the default when K = num_clusters): the
prototype of largest cosine with z, confidence = its softmax probability at the temperature;
"kmeans" (the default otherwise): the nearest of num_clusters centroids of spherical k-means on
the z of the un-augmented images, fitted before every evaluation; "backbone": DeepCluster v1's
rule on the backbone features h of the un-augmented images (PCA-whitened to
``swav.eval_pca_dim``, L2-normalised, spherical k-means with K = num_clusters), fitted before
every evaluation. With K != num_clusters the prototype argmax is also logged as an
over-clustering (purity and NMI). With "backbone" the feature pass yields [z, h] concatenated.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jclust import cluster as jcluster
from jclust import config_lib
from jclust import models, optim
from jclust.cluster import l2_normalize
from jclust.config_lib import ConfigError, check_ranges
from jclust.data import augment
from jclust.methods.base import DataSpec, Method, Phase
from jclust.models.neck import ProjectionHead
from jclust.precision import RANDOM_DTYPE, float_dtype

PROTOTYPES_RULE = ("the prototype of largest cosine similarity with the projected, L2-normalised "
                   "features; confidence = its softmax probability at the SwAV temperature")
KMEANS_RULE = ("the evaluation centroid (spherical k-means, K = num_clusters, on the projected, "
               "L2-normalised features) of largest cosine similarity; confidence = that cosine "
               "similarity")
BACKBONE_RULE = ("the backbone features, PCA-whitened (swav.eval_pca_dim) and L2-normalised by the "
                 "PCA of the latest evaluation, go to the evaluation centroid (spherical k-means, "
                 "K = num_clusters, on the whole data set's whitened features) of largest cosine "
                 "similarity; confidence = that cosine similarity")


class SwAVState(NamedTuple):
    """Clustering state of SwAV (all of it is checkpointed).

    Attributes:
      queue: [2, L, F] float32, per assignment crop the z of the last L examples, newest first
        (L = 0: no queue).
      queue_count: [] int32, rows pushed so far, capped at L (the queue is used once it is L).
      iteration: [] int32, train steps taken.
      collapse_steps: [] int32, consecutive steps that looked collapsed (see the module docstring).
      eval_mean: [D] float32, the "backbone" rule's PCA mean (D: backbone features; [F] zeros
        for the other rules).
      eval_projection: [D, P] float32, its projection with the whitening folded in ([F, F]
        identity for the other rules).
      eval_centroids: [num_clusters, P] float32 unit rows (the "kmeans" and "backbone" rules).
      prototype_labels: [N] int32 prototype argmax of every example at the last evaluation (-1
        before it).
    """
    queue: jax.Array
    queue_count: jax.Array
    iteration: jax.Array
    collapse_steps: jax.Array
    eval_mean: jax.Array
    eval_projection: jax.Array
    eval_centroids: jax.Array
    prototype_labels: jax.Array


def swapped_prediction_loss(scores: jax.Array, codes: jax.Array, temperature: float) -> jax.Array:
    """SwAV's loss: codes of each assignment crop predicted from every other crop.

    Args:
      scores: [V, B, K] cosines of the V crops' z with the prototypes; crops 0..S-1 are the
        assignment crops.
      codes: [S, B, K] codes of the assignment crops (rows sum to 1).
      temperature: softmax temperature of the predictions.

    Returns:
      Scalar: (1/S) sum_s (1/(V-1)) sum_{v != s} mean_i [-sum_k codes[s,i,k] log p[v,i,k]], with
      p[v] = softmax(scores[v] / temperature).
    """
    num_views, num_assign = scores.shape[0], codes.shape[0]
    log_p = jax.nn.log_softmax(scores / temperature, axis=-1)  # [V, B, K]
    cross = -jnp.einsum("sbk,vbk->svb", codes, log_p).mean(-1)  # [S, V]
    not_self = 1.0 - jnp.eye(num_assign, num_views)
    return jnp.sum(cross * not_self) / (num_assign * (num_views - 1))


def push_queue(queue: jax.Array, z: jax.Array) -> jax.Array:
    """FIFO push: the batch's rows at the front, the oldest rows dropped. [L, F], [B, F] -> [L, F]."""
    length = queue.shape[0]
    return jnp.concatenate([z, queue], axis=0)[:length]


def collapse_warning(patience: int) -> str:
    return (f"SwAV looks collapsed for {patience}+ steps (loss/ln K >= 0.99 or too few "
            "prototypes in use: see loss_over_log_k, prototypes_used and feature_std above). "
            "Remedies (config keys): a smaller swav.epsilon (e.g. 0.03), a longer "
            "swav.freeze_prototypes_epochs, swav.hard_codes=True, a later swav.queue_start_epoch or "
            "shorter swav.queue_length, another swav.temperature, a lower optim.learning_rate")


def make(config, data_spec: DataSpec) -> Method:
    """Builds SwAV for ``config`` (sections ``model``, ``optim``, ``swav``)."""
    sw = config.swav
    n = data_spec.num_examples
    k_eval = config.num_clusters
    k = int(sw.prototypes)
    num_small = int(sw.num_small_crops)
    steps_per_epoch = n // config.batch_size
    num_steps = config.optim.epochs * steps_per_epoch
    # The reference rounds the queue down to a multiple of the global batch.
    queue_length = int(sw.queue_length) // config.batch_size * config.batch_size
    assignment = sw.assignment
    if assignment == "auto":
        assignment = "prototypes" if k == k_eval else "kmeans"
    check_ranges(config, {"swav.prototypes": k >= 2,
                         "num_clusters": 1 <= k_eval <= n,
                         "swav.feature_dim": sw.feature_dim >= 1,
                         "swav.temperature": sw.temperature > 0,
                         "swav.epsilon": sw.epsilon > 0,
                         "swav.sinkhorn_iters": sw.sinkhorn_iters >= 1,
                         "swav.num_small_crops": num_small >= 0,
                         "swav.queue_length": sw.queue_length >= 0,
                         "swav.queue_start_epoch": sw.queue_start_epoch >= 0,
                         "swav.collapse_prototype_fraction": 0 <= sw.collapse_prototype_fraction <= 1,
                         "swav.collapse_patience_steps": sw.collapse_patience_steps >= 1,
                         "swav.eval_pca_dim": sw.eval_pca_dim >= 1,
                         "optim.epochs": config.optim.epochs >= 1,
                         "batch_size": config.batch_size <= n}, f"N = {n} examples")
    if assignment not in ("prototypes", "kmeans", "backbone"):
        raise ConfigError(f"config.swav.assignment={sw.assignment!r}: use 'auto', 'prototypes', "
                          "'kmeans' or 'backbone'")
    if assignment == "prototypes" and k != k_eval:
        raise ConfigError(f"config.swav.assignment='prototypes' needs swav.prototypes = "
                          f"num_clusters ({k} != {k_eval}); use 'kmeans' or 'auto'")
    if 0 < sw.queue_length < config.batch_size:
        raise ConfigError(f"config.swav.queue_length={sw.queue_length} is shorter than one batch "
                          f"({config.batch_size}); the queue holds whole batches (0: no queue)")
    if not data_spec.is_image:
        raise ConfigError("SwAV trains a CNN on images; the data are feature vectors")
    if config.model.name not in ("small_cnn", "resnet18"):
        raise ConfigError(f"config.model.name={config.model.name!r}: SwAV needs 'small_cnn' or "
                          "'resnet18'")
    if num_small and config.model.name == "small_cnn" and not config.model.get("global_pool"):
        raise ConfigError("swav.num_small_crops > 0 feeds a second resolution to the network: set "
                          "model.global_pool=True for the small CNN (its flattening Dense takes one "
                          "size only)")

    backbone = models.make_backbone(config.model)
    projection = ProjectionHead(hidden=sw.projection_hidden, out=sw.feature_dim,
                                batch_norm=sw.projection_batch_norm)
    height, width = data_spec.input_shape[:2]
    large_size = (height, width)
    small_size = tuple(int(s) for s in sw.small_crop_size)
    freeze_steps = config_lib.steps(config, "swav.freeze_prototypes", steps_per_epoch)
    queue_start_step = int(sw.queue_start_epoch) * steps_per_epoch
    min_prototypes = sw.collapse_prototype_fraction * min(k, config.batch_size)
    log_k = math.log(k)
    f_dim = sw.feature_dim
    if assignment == "backbone":
        if sw.eval_pca_dim > backbone.feature_dim:
            raise ConfigError(f"config.swav.eval_pca_dim={sw.eval_pca_dim} exceeds the backbone's "
                              f"{backbone.feature_dim} features")
        eval_in, eval_dim = backbone.feature_dim, sw.eval_pca_dim
    else:
        eval_in = eval_dim = f_dim

    def init(rng, x):
        k_backbone, k_projection, k_prototypes = jax.random.split(rng, 3)
        backbone_params, backbone_state = backbone.init(k_backbone, x)
        projection_vars = projection.init(k_projection, jnp.zeros((1, backbone.feature_dim)))
        params = {
            "backbone": backbone_params,
            "projection": projection_vars["params"],
            "prototypes": l2_normalize(jax.random.normal(k_prototypes, (k, sw.feature_dim),
                                                         RANDOM_DTYPE).astype(float_dtype())),
        }
        state = SwAVState(
            queue=jnp.zeros((2, queue_length, sw.feature_dim), float_dtype()),
            queue_count=jnp.zeros((), jnp.int32), iteration=jnp.zeros((), jnp.int32),
            collapse_steps=jnp.zeros((), jnp.int32),
            eval_mean=jnp.zeros((eval_in,), float_dtype()),
            eval_projection=jnp.eye(eval_in, eval_dim, dtype=float_dtype()),
            eval_centroids=jnp.zeros((k_eval, eval_dim), float_dtype()),
            prototype_labels=jnp.full((n,), -1, jnp.int32))
        model_state = {"backbone": backbone_state,
                       "projection": {k: v for k, v in projection_vars.items() if k != "params"}}
        return params, model_state, state

    def project(params, model_state, x, train):
        h, backbone_state = backbone.apply(params["backbone"], model_state["backbone"], x, train)
        variables = {"params": params["projection"], **model_state["projection"]}
        if train and sw.projection_batch_norm:
            z, updates = projection.apply(variables, h, train=True, mutable=["batch_stats"])
            return z, {"backbone": backbone_state, "projection": dict(updates)}
        return (projection.apply(variables, h, train=False),
                {"backbone": backbone_state, "projection": model_state["projection"]})

    def normalize_prototypes(params):
        return {**params, "prototypes": l2_normalize(jax.lax.stop_gradient(params["prototypes"]))}

    def codes_of(crop_scores, queue_scores, queue_full):
        def with_queue():
            both = jnp.concatenate([queue_scores, crop_scores])
            return sinkhorn(both)[queue_scores.shape[0]:]

        if queue_length == 0:
            return sinkhorn(crop_scores)
        return jax.lax.cond(queue_full, with_queue, lambda: sinkhorn(crop_scores))

    def sinkhorn(scores):
        return jcluster.sinkhorn_knopp(scores, epsilon=sw.epsilon, num_iters=sw.sinkhorn_iters,
                                       log_domain=sw.sinkhorn_log_domain).codes

    def loss_fn(params, model_state, cluster, batch, rng):
        b = batch["x"].shape[0]
        crops = augment.multi_crop(
            batch["x"], rng, large_size=large_size, small_size=small_size, num_large=2,
            num_small=num_small, large_scale=tuple(sw.large_crop_scale),
            small_scale=tuple(sw.small_crop_scale), flip=sw.flip,
            color=data_spec.input_shape[-1] == 3)
        z_large, model_state = project(params, model_state, jnp.concatenate(crops[:2]), True)
        z = [z_large]
        if num_small:
            z_small, model_state = project(params, model_state, jnp.concatenate(crops[2:]), True)
            z.append(z_small)
        z = jnp.concatenate(z).reshape(2 + num_small, b, -1)  # [V, B, F]
        prototypes = params["prototypes"]
        scores = jnp.einsum("vbf,kf->vbk", z, prototypes)
        queue_full = cluster.queue_count >= queue_length
        queue_scores = jnp.einsum("slf,kf->slk", cluster.queue, jax.lax.stop_gradient(prototypes))
        codes = jnp.stack([codes_of(jax.lax.stop_gradient(scores[s]), queue_scores[s], queue_full)
                           for s in range(2)])
        codes = jax.lax.stop_gradient(codes)
        if sw.hard_codes:
            codes = jax.nn.one_hot(jnp.argmax(codes, -1), k, dtype=codes.dtype)
        loss = swapped_prediction_loss(scores, codes, sw.temperature)
        winners = jax.nn.one_hot(jnp.argmax(codes[0], -1), k)
        prototypes_used = jnp.sum(jnp.max(winners, axis=0))
        code_entropy = -jnp.mean(jnp.sum(codes[0] * jnp.log(codes[0] + 1e-12), -1))
        feature_std = jnp.mean(jnp.std(z[0], axis=0))
        collapsed = (loss >= 0.99 * log_k) | (prototypes_used < min_prototypes)
        metrics = {"loss_over_log_k": loss / log_k, "code_entropy": code_entropy,
                   "prototypes_used": prototypes_used, "feature_std": feature_std,
                   "queue_in_use": (queue_full & (queue_length > 0)).astype(float_dtype())}
        return loss, (model_state, metrics, {"z": z[:2], "collapsed": collapsed})

    def update_state(cluster, batch, outputs, rng):
        del batch, rng
        started = cluster.iteration >= queue_start_step
        queue, count = cluster.queue, cluster.queue_count
        if queue_length:
            pushed = jnp.stack([push_queue(queue[s], outputs["z"][s]) for s in range(2)])
            queue = jnp.where(started, pushed, queue)
            count = jnp.where(started, jnp.minimum(count + outputs["z"].shape[1], queue_length),
                              count)
        collapse_steps = jnp.where(outputs["collapsed"], cluster.collapse_steps + 1, 0)
        cluster = cluster._replace(queue=queue, queue_count=count,
                                   iteration=cluster.iteration + 1, collapse_steps=collapse_steps)
        return cluster, {"collapse_steps": collapse_steps.astype(float_dtype()),
                         "warn_collapse": (collapse_steps >= sw.collapse_patience_steps
                                           ).astype(float_dtype())}

    def embed(params, model_state, x):
        if assignment != "backbone":
            return project(params, model_state, x, train=False)[0]
        h, _ = backbone.apply(params["backbone"], model_state["backbone"], x, False)
        variables = {"params": params["projection"], **model_state["projection"]}
        return jnp.concatenate([projection.apply(variables, h, train=False), h], axis=-1)

    def evaluation_features(cluster, feats):
        """The rule's unit features: whitened backbone features, or z as it is. [B, P]."""
        if assignment == "backbone":
            return jcluster.whiten(feats[:, f_dim:], cluster.eval_mean, cluster.eval_projection)
        return l2_normalize(feats[:, :f_dim])

    def assign(params, cluster, feats):
        if assignment == "prototypes":
            scores = l2_normalize(feats) @ l2_normalize(params["prototypes"]).T
            probs = jax.nn.softmax(scores / sw.temperature, axis=-1)
            return jnp.argmax(scores, -1).astype(jnp.int32), jnp.max(probs, -1)
        sims = evaluation_features(cluster, feats) @ cluster.eval_centroids.T
        return jnp.argmax(sims, -1).astype(jnp.int32), jnp.max(sims, -1)

    def fit_evaluation(params, cluster, feats, *, key):
        feats = jnp.asarray(feats)
        z = feats[:, :f_dim]
        labels = jnp.argmax(z @ l2_normalize(params["prototypes"]).T, -1).astype(jnp.int32)
        cluster = cluster._replace(prototype_labels=labels)
        if assignment == "backbone":
            mean, projection = jcluster.fit_whitening(feats[:, f_dim:], sw.eval_pca_dim)
            cluster = cluster._replace(eval_mean=mean, eval_projection=projection)
        if assignment != "prototypes":
            evaluation = jcluster.kmeans(evaluation_features(cluster, feats), k_eval, key=key,
                                         n_init=sw.eval_n_init, spherical=True)
            cluster = cluster._replace(eval_centroids=evaluation.centroids)
        return cluster

    # Frozen prototypes get no update at all (no weight decay, no momentum), as in the reference
    # where their gradients are set to None.
    tx = optim.make(config.optim, num_steps,
                    groups={"prototypes": optim.Group(frozen_steps=freeze_steps)})

    phases = (Phase(name="swav", num_steps=num_steps, tx=tx, loss_fn=loss_fn,
                    cluster_update=update_state, prepare_params=normalize_prototypes),)
    return Method(init=init, phases=phases, embed=embed, assign=assign, recluster=None,
                  done=lambda cluster: False,
                  assignment_rule={"prototypes": PROTOTYPES_RULE, "kmeans": KMEANS_RULE,
                                   "backbone": BACKBONE_RULE}[assignment],
                  training_labels=(lambda cluster: cluster.prototype_labels) if k != k_eval else None,
                  fit_evaluation=fit_evaluation,
                  warnings={"warn_collapse": collapse_warning(sw.collapse_patience_steps)},
                  example_axes=SwAVState(queue=None, queue_count=None, iteration=None,
                                         collapse_steps=None, eval_mean=None,
                                         eval_projection=None, eval_centroids=None,
                                         prototype_labels=0))
