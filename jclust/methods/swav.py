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
the z of the un-augmented images; "backbone": DeepCluster v1's rule on the backbone features h of
the un-augmented images (PCA-whitened to ``swav.eval_pca_dim``, L2-normalised, spherical k-means
with K = num_clusters); both are the trainer's k-means probe
(:func:`jclust.methods.evaluation.kmeans_probe`), fitted before every evaluation. With
K != num_clusters the prototype argmax is also logged as an
over-clustering (purity and NMI). With "backbone" the feature pass yields [z, h] concatenated.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jclust import cluster as jcluster
from jclust import config_lib
from jclust import models, optim
from jclust.cluster import l2_normalize
from jclust.config_lib import ConfigError
from jclust.data import augment
from jclust.methods.base import Array, Batch, DataSpec, Evaluation, Method, Params, Phase
from jclust.methods.common import check_cnn_config, steps_per_epoch
from jclust.methods.evaluation import split_feature_probe
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
RULES = {"prototypes": PROTOTYPES_RULE, "kmeans": KMEANS_RULE, "backbone": BACKBONE_RULE}
# The swav config keys that make() takes as they are.
PLAIN_KEYS = ("feature_dim", "projection_hidden", "projection_batch_norm", "temperature", "epsilon",
              "sinkhorn_iters", "sinkhorn_log_domain", "hard_codes", "flip", "eval_pca_dim",
              "eval_n_init", "collapse_prototype_fraction", "collapse_patience_steps")


class SwAVState(NamedTuple):
    """Clustering state of SwAV (all of it is checkpointed).

    Attributes:
      queue: [2, L, F] float32, per assignment crop the z of the last L examples, newest first
        (L = 0: no queue).
      queue_count: [] int32, rows pushed so far, capped at L (the queue is used once it is L).
      iteration: [] int32, train steps taken.
      collapse_steps: [] int32, consecutive steps that looked collapsed (see the module docstring).
    """
    queue: jax.Array
    queue_count: jax.Array
    iteration: jax.Array
    collapse_steps: jax.Array


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


def codes_with_queue(scores: jax.Array, queue_scores: jax.Array, queue_full: jax.Array, *,
                     epsilon: float, num_iters: int, log_domain: bool) -> jax.Array:
    """Sinkhorn codes of one assignment crop, with the queue's scores in front once it is full.

    Args:
      scores: [B, K] the crop's scores (no gradient).
      queue_scores: [L, K] the queue's scores (L = 0: no queue).
      queue_full: [] bool, whether the queue holds L rows yet.
      epsilon, num_iters, log_domain: of :func:`jclust.cluster.sinkhorn_knopp`.

    Returns:
      [B, K] the batch's codes (the queue's rows are dropped).
    """
    def sinkhorn(both):
        return jcluster.sinkhorn_knopp(both, epsilon=epsilon, num_iters=num_iters,
                                       log_domain=log_domain).codes

    if queue_scores.shape[0] == 0:
        return sinkhorn(scores)
    return jax.lax.cond(queue_full,
                        lambda: sinkhorn(jnp.concatenate([queue_scores, scores]))[
                            queue_scores.shape[0]:],
                        lambda: sinkhorn(scores))


def assignment_codes(scores: jax.Array, queue: jax.Array, queue_count: jax.Array,
                     prototypes: jax.Array, *, epsilon: float, num_iters: int, log_domain: bool,
                     hard_codes: bool) -> jax.Array:
    """The codes of the two assignment crops, without gradient.

    Args:
      scores: [V, B, K] the crops' scores (crops 0 and 1 are the assignment crops).
      queue: [2, L, F] the queue; used once ``queue_count`` reaches L (:func:`codes_with_queue`).
      queue_count: [] int32.
      prototypes: [K, F] unit rows.
      epsilon, num_iters, log_domain: of the Sinkhorn-Knopp iterations.
      hard_codes: round the codes to one-hot.

    Returns:
      [2, B, K].
    """
    queue_scores = jnp.einsum("slf,kf->slk", queue, jax.lax.stop_gradient(prototypes))
    codes = jax.lax.stop_gradient(jnp.stack([codes_with_queue(
        jax.lax.stop_gradient(scores[s]), queue_scores[s], queue_count >= queue.shape[1],
        epsilon=epsilon, num_iters=num_iters, log_domain=log_domain) for s in range(2)]))
    if hard_codes:
        codes = jax.nn.one_hot(jnp.argmax(codes, -1), scores.shape[-1], dtype=codes.dtype)
    return codes


def step_diagnostics(loss: jax.Array, codes: jax.Array, z: jax.Array, queue_count: jax.Array,
                     queue_length: int, *, min_prototypes: float) -> tuple[dict, jax.Array]:
    """The step's collapse diagnostics (module docstring).

    Args:
      loss: [] the swapped-prediction loss.
      codes: [S, B, K] the assignment crops' codes.
      z: [V, B, F] the crops' unit features.
      queue_count, queue_length: the queue's rows and length (in use once full, when L > 0).
      min_prototypes: fewer prototypes winning an example of the batch look collapsed.

    Returns:
      (metrics, collapsed): ``loss_over_log_k``, ``code_entropy``, ``prototypes_used``,
      ``feature_std``, ``queue_in_use``; ``collapsed`` [] bool.
    """
    log_k = math.log(codes.shape[-1])
    winners = jax.nn.one_hot(jnp.argmax(codes[0], -1), codes.shape[-1])
    prototypes_used = jnp.sum(jnp.max(winners, axis=0))
    metrics = {"loss_over_log_k": loss / log_k,
               "code_entropy": -jnp.mean(jnp.sum(codes[0] * jnp.log(codes[0] + 1e-12), -1)),
               "prototypes_used": prototypes_used,
               "feature_std": jnp.mean(jnp.std(z[0], axis=0)),
               "queue_in_use": ((queue_count >= queue_length) & (queue_length > 0)
                                ).astype(float_dtype())}
    return metrics, (loss >= 0.99 * log_k) | (prototypes_used < min_prototypes)


def advance_queue(cluster: SwAVState, batch: Batch, outputs: dict, rng: jax.Array, *,
                  queue_start_step: int, patience: int) -> tuple[SwAVState, dict]:
    """The step's ``cluster_update``: from ``queue_start_step`` on, the batch's z of the
    assignment crops (``outputs["z"]`` [2, B, F]) enter the queue; the collapse counter follows
    ``outputs["collapsed"]`` and ``warn_collapse`` is 1 once it reaches ``patience``."""
    del batch, rng
    queue_length = cluster.queue.shape[1]
    started = cluster.iteration >= queue_start_step
    queue, count = cluster.queue, cluster.queue_count
    if queue_length:
        pushed = jnp.stack([push_queue(queue[s], outputs["z"][s]) for s in range(2)])
        queue = jnp.where(started, pushed, queue)
        count = jnp.where(started, jnp.minimum(count + outputs["z"].shape[1], queue_length), count)
    collapse_steps = jnp.where(outputs["collapsed"], cluster.collapse_steps + 1, 0)
    cluster = cluster._replace(queue=queue, queue_count=count, iteration=cluster.iteration + 1,
                               collapse_steps=collapse_steps)
    return cluster, {"collapse_steps": collapse_steps.astype(float_dtype()),
                     "warn_collapse": (collapse_steps >= patience).astype(float_dtype())}


def check_assignment(assignment: str, prototypes: int, num_clusters: int) -> None:
    """Raises a ConfigError (a ValueError) unless ``assignment`` is a rule of :data:`RULES` that
    ``prototypes`` and ``num_clusters`` allow ("prototypes" needs as many prototypes as
    clusters)."""
    if assignment not in RULES or (assignment == "prototypes" and prototypes != num_clusters):
        raise ConfigError(f"swav.assignment={assignment!r} with {prototypes} prototypes and "
                          f"num_clusters={num_clusters}: use 'prototypes' (only with prototypes = "
                          "num_clusters), 'kmeans', 'backbone' or 'auto' (which picks)")


def prototype_assignment(params: Params, cluster: SwAVState, features: jax.Array, *,
                         temperature: float) -> tuple[jax.Array, jax.Array]:
    """The "prototypes" rule: features [B, F] (z) -> (the prototype of largest cosine [B], its
    softmax probability at ``temperature`` [B])."""
    scores = l2_normalize(features) @ l2_normalize(params["prototypes"]).T
    probs = jax.nn.softmax(scores / temperature, axis=-1)
    return jnp.argmax(scores, -1).astype(jnp.int32), jnp.max(probs, -1)


def prototype_labels(params: Params, cluster: SwAVState, features: Array, *,
                     feature_dim: int) -> jax.Array:
    """The over-clustering evaluations score: the prototype of largest score with each
    example's z (the first ``feature_dim`` columns of features [N, D]). [N] int32."""
    scores = jnp.asarray(features)[:, :feature_dim] @ l2_normalize(params["prototypes"]).T
    return jnp.argmax(scores, -1).astype(jnp.int32)


def evaluation_rule(assignment: str, num_clusters: int, feature_dim: int, *, pca_dim: int,
                    n_init: int) -> Evaluation | None:
    """The trainer's evaluation for ``swav.assignment``: None for "prototypes" (the method's
    own rule); the k-means probe on z (the first ``feature_dim`` columns of the feature pass) for
    "kmeans", or on the backbone features h (the rest, PCA-whitened to ``pca_dim``) for
    "backbone"."""
    if assignment == "prototypes":
        return None
    return split_feature_probe("projection" if assignment == "kmeans" else "backbone",
                               num_clusters, feature_dim, pca_dim=pca_dim, n_init=n_init)


def normalize_prototypes(params: Params) -> Params:
    """``Phase.prepare_params``: the prototypes as unit rows, without gradient."""
    return {**params, "prototypes": l2_normalize(jax.lax.stop_gradient(params["prototypes"]))}


def collapse_warning(patience: int) -> str:
    return (f"SwAV looks collapsed for {patience}+ steps (loss/ln K >= 0.99 or too few "
            "prototypes in use: see loss_over_log_k, prototypes_used and feature_std above). "
            "Remedies (config keys): a smaller swav.epsilon (e.g. 0.03), a longer "
            "swav.freeze_prototypes_epochs, swav.hard_codes=True, a later swav.queue_start_epoch or "
            "shorter swav.queue_length, another swav.temperature, a lower optim.learning_rate")


def make(*, backbone: models.Backbone, image_shape: Sequence[int], num_clusters: int,
         tx: optax.GradientTransformation, num_steps: int, batch_size: int,
         prototypes: int = 100, feature_dim: int = 64, projection_hidden: int = 128,
         projection_batch_norm: bool = True, temperature: float = 0.1, epsilon: float = 0.05,
         sinkhorn_iters: int = 3, sinkhorn_log_domain: bool = True, hard_codes: bool = False,
         queue_length: int = 0, queue_start_step: int = 0, num_small_crops: int = 0,
         small_crop_size: tuple[int, int] = (16, 16),
         large_crop_scale: tuple[float, float] = (0.4, 1.0),
         small_crop_scale: tuple[float, float] = (0.2, 0.5), flip: bool = True,
         assignment: str = "backbone", eval_pca_dim: int = 32, eval_n_init: int = 10,
         collapse_prototype_fraction: float = 0.1, collapse_patience_steps: int = 200) -> Method:
    """SwAV on ``backbone`` with ``tx`` (which freezes params["prototypes"] or not) for
    ``num_steps`` steps of ``batch_size``; the rest are ``swav`` keys (docs/methods.md)."""
    check_assignment(assignment, prototypes, num_clusters)
    k, f_dim, num_small = prototypes, feature_dim, num_small_crops
    projection = ProjectionHead(hidden=projection_hidden, out=f_dim,
                                batch_norm=projection_batch_norm)
    min_prototypes = collapse_prototype_fraction * min(k, batch_size)

    def init(rng, x):
        k_backbone, k_projection, k_prototypes = jax.random.split(rng, 3)
        backbone_params, backbone_state = backbone.init(k_backbone, x)
        projection_vars = projection.init(k_projection, jnp.zeros((1, backbone.feature_dim)))
        prototype_rows = jax.random.normal(k_prototypes, (k, f_dim), RANDOM_DTYPE)
        params = {"backbone": backbone_params, "projection": projection_vars["params"],
                  "prototypes": l2_normalize(prototype_rows.astype(float_dtype()))}
        state = SwAVState(queue=jnp.zeros((2, queue_length, f_dim), float_dtype()),
                          queue_count=jnp.zeros((), jnp.int32), iteration=jnp.zeros((), jnp.int32),
                          collapse_steps=jnp.zeros((), jnp.int32))
        model_state = {"backbone": backbone_state,
                       "projection": {k: v for k, v in projection_vars.items() if k != "params"}}
        return params, model_state, state

    def project(params, model_state, x, train):
        """-> (z [B, F], backbone features h [B, D], the new model state)."""
        h, backbone_state = backbone.apply(params["backbone"], model_state["backbone"], x, train)
        variables = {"params": params["projection"], **model_state["projection"]}
        if train and projection_batch_norm:
            z, updates = projection.apply(variables, h, train=True, mutable=["batch_stats"])
            return z, h, {"backbone": backbone_state, "projection": dict(updates)}
        return (projection.apply(variables, h, train=False), h,
                {"backbone": backbone_state, "projection": model_state["projection"]})

    def loss_fn(params, model_state, cluster, batch, rng):
        crops = augment.multi_crop(
            batch["x"], rng, large_size=tuple(image_shape[:2]), small_size=tuple(small_crop_size),
            num_large=2, num_small=num_small, large_scale=tuple(large_crop_scale),
            small_scale=tuple(small_crop_scale), flip=flip, color=image_shape[-1] == 3)
        z, _, model_state = project(params, model_state, jnp.concatenate(crops[:2]), True)
        if num_small:
            z_small, _, model_state = project(params, model_state, jnp.concatenate(crops[2:]), True)
            z = jnp.concatenate([z, z_small])
        z = z.reshape(2 + num_small, batch["x"].shape[0], -1)  # [V, B, F]
        scores = jnp.einsum("vbf,kf->vbk", z, params["prototypes"])
        codes = assignment_codes(scores, cluster.queue, cluster.queue_count, params["prototypes"],
                                 epsilon=epsilon, num_iters=sinkhorn_iters,
                                 log_domain=sinkhorn_log_domain, hard_codes=hard_codes)
        loss = swapped_prediction_loss(scores, codes, temperature)
        metrics, collapsed = step_diagnostics(loss, codes, z, cluster.queue_count, queue_length,
                                              min_prototypes=min_prototypes)
        return loss, (model_state, metrics, {"z": z[:2], "collapsed": collapsed})

    def embed(params, model_state, x):
        z, h, _ = project(params, model_state, x, train=False)
        return jnp.concatenate([z, h], axis=-1) if assignment == "backbone" else z

    phases = (Phase(name="swav", num_steps=num_steps, tx=tx, loss_fn=loss_fn,
                    cluster_update=functools.partial(advance_queue,
                                                     queue_start_step=queue_start_step,
                                                     patience=collapse_patience_steps),
                    prepare_params=normalize_prototypes),)
    evaluation = evaluation_rule(assignment, num_clusters, f_dim, pca_dim=eval_pca_dim,
                                 n_init=eval_n_init)
    return Method(init=init, phases=phases, embed=embed, recluster=None,
                  assign=(functools.partial(prototype_assignment, temperature=temperature)
                          if evaluation is None else None), evaluation=evaluation,
                  done=lambda cluster: False, assignment_rule=RULES[assignment],
                  training_labels=(functools.partial(prototype_labels, feature_dim=f_dim)
                                   if k != num_clusters else None),
                  warnings={"warn_collapse": collapse_warning(collapse_patience_steps)})


def from_config(config: ml_collections.ConfigDict, data_spec: DataSpec) -> Method:
    """SwAV as ``config`` sets it (sections ``model``, ``optim``, ``swav``)."""
    sw, batch_size = config.swav, config.batch_size
    assignment = sw.assignment
    if assignment == "auto":
        assignment = "prototypes" if sw.prototypes == config.num_clusters else "kmeans"
    check_cnn_config(config, data_spec, "SwAV", {
        "swav.prototypes": sw.prototypes >= 2, "swav.feature_dim": sw.feature_dim >= 1,
        "swav.temperature": sw.temperature > 0, "swav.epsilon": sw.epsilon > 0,
        "swav.sinkhorn_iters": sw.sinkhorn_iters >= 1,
        "swav.num_small_crops": sw.num_small_crops >= 0,
        "swav.queue_length": sw.queue_length >= 0,
        "swav.queue_start_epoch": sw.queue_start_epoch >= 0,
        "swav.collapse_prototype_fraction": 0 <= sw.collapse_prototype_fraction <= 1,
        "swav.collapse_patience_steps": sw.collapse_patience_steps >= 1,
        "swav.eval_pca_dim": sw.eval_pca_dim >= 1})
    check_assignment(assignment, sw.prototypes, config.num_clusters)
    if 0 < sw.queue_length < batch_size:
        raise ConfigError(f"config.swav.queue_length={sw.queue_length} is shorter than one batch "
                          f"({batch_size}); the queue holds whole batches (0: no queue)")
    if (sw.num_small_crops and config.model.name == "small_cnn"
            and not config.model.get("global_pool")):
        raise ConfigError("swav.num_small_crops > 0 feeds a second resolution to the network: set "
                          "model.global_pool=True for the small CNN (its flattening Dense takes one "
                          "size only)")
    backbone = models.make_backbone(config.model)
    if assignment == "backbone" and sw.eval_pca_dim > backbone.feature_dim:
        raise ConfigError(f"config.swav.eval_pca_dim={sw.eval_pca_dim} exceeds the backbone's "
                          f"{backbone.feature_dim} features")
    epoch = steps_per_epoch(config, data_spec)
    num_steps = config.optim.epochs * epoch
    # Frozen prototypes get no update at all (no weight decay, no momentum), as in the reference
    # where their gradients are set to None.
    frozen = optim.Group(frozen_steps=config_lib.steps(config, "swav.freeze_prototypes", epoch))
    return make(backbone=backbone, image_shape=data_spec.input_shape,
                num_clusters=config.num_clusters, num_steps=num_steps, batch_size=batch_size,
                tx=optim.make(config.optim, num_steps, groups={"prototypes": frozen}),
                # The reference rounds the queue down to a multiple of the global batch.
                queue_length=int(sw.queue_length) // batch_size * batch_size,
                queue_start_step=int(sw.queue_start_epoch) * epoch, assignment=assignment,
                prototypes=int(sw.prototypes), num_small_crops=int(sw.num_small_crops),
                small_crop_size=tuple(int(s) for s in sw.small_crop_size),
                large_crop_scale=tuple(sw.large_crop_scale),
                small_crop_scale=tuple(sw.small_crop_scale),
                **{key: sw[key] for key in PLAIN_KEYS})
