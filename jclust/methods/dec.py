"""DEC (Xie et al., 2016) and IDEC (Guo et al., 2017) on an MLP autoencoder.

Phases:
  1. ``pretrain``: the autoencoder d-500-500-2000-10 learns to reconstruct its input (MSE).
  2. ``cluster``: centroids are initialised from clusters of the embeddings (``kmeans.space``:
     DEC's k-means, k-means on the whitened embedding, or by default spectral clustering of its
     k-NN graph; :func:`initial_centroids`); then the encoder and the
     centroids minimise KL(P || Q), where Q is the Student-t soft assignment and P the sharpened
     target distribution, recomputed over the whole data set every ``dec.update_interval`` steps
     and held fixed in between. IDEC adds the reconstruction loss of the kept decoder:
     L = L_rec + gamma * KL. Training stops when fewer than ``dec.tol`` of the examples changed
     cluster between two target updates (or after ``dec.max_steps``).

With ``pretrain.augment_shift`` / ``dec.augment_shift`` > 0 the network is trained on randomly
translated images (DEC-DA, Guo et al., 2018); the target distribution, k-means initialisation and
evaluation always use the original images. With ``pretrain.input_dropout`` > 0 the autoencoder is
pretrained as a denoising one (inputs partly zeroed, clean reconstruction target), as in DEC's
stacked denoising autoencoder.

Run on features instead of pixels (``npz:`` features or ``data.encoder_workdir``), this is the
DELIUS recipe.

Assignment rule: an example goes to the centroid with the largest Student-t soft assignment
q_ij, i.e. the nearest centroid in the embedding; confidence is that q_ij.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jclust import cluster as jcluster
from jclust import models
from jclust.data import augment
from jclust.config_lib import ConfigError, check_ranges
from jclust.methods.base import DataSpec, Method, Phase
from jclust.optim import make_optimizer
from jclust.precision import RANDOM_DTYPE, float_dtype

ASSIGNMENT_RULE = ("argmax of the Student-t soft assignment q_ij over centroids (the nearest "
                   "centroid in the embedding); confidence = max_j q_ij")


class DECState(NamedTuple):
    """Clustering state of DEC/IDEC.

    Attributes:
      target: [N, K] float32, the target distribution P (zeros before the first update).
      labels: [N] int32, argmax of Q at the last target update (-1 before the first).
      delta_label: scalar float32, fraction of labels changed at the last target update.
      done: scalar bool, the stopping criterion has been met.
    """
    target: jax.Array
    labels: jax.Array
    delta_label: jax.Array
    done: jax.Array


def soft_assignment(z: jax.Array, centroids: jax.Array, alpha: float = 1.0) -> jax.Array:
    """Student-t soft assignment q_ij of DEC.

    q_ij = (1 + |z_i - mu_j|^2 / alpha)^(-(alpha+1)/2), normalised over j.

    Args:
      z: [n, d] embeddings.
      centroids: [k, d].
      alpha: degrees of freedom of the Student-t kernel.

    Returns:
      [n, k] rows summing to one.
    """
    sq = jnp.sum(jnp.square(z[:, None, :] - centroids[None, :, :]), axis=-1)
    logits = -(alpha + 1.0) / 2.0 * jnp.log1p(sq / alpha)
    return jax.nn.softmax(logits, axis=-1)


def target_distribution(q: jax.Array) -> jax.Array:
    """DEC's target p_ij = (q_ij^2 / f_j) / sum_j' (q_ij'^2 / f_j'), with f_j = sum_i q_ij.

    Args:
      q: [n, k] soft assignments of the whole data set (f_j is a sum over all n rows).

    Returns:
      [n, k] rows summing to one.
    """
    weight = jnp.square(q) / jnp.sum(q, axis=0)
    return weight / jnp.sum(weight, axis=1, keepdims=True)


def kl_divergence(p: jax.Array, q: jax.Array) -> jax.Array:
    """Mean over rows of KL(p_i || q_i) = sum_j p_ij log(p_ij / q_ij).

    Args:
      p, q: [n, k] distributions (rows sum to one); p is treated as a constant by callers.

    Returns:
      Scalar.
    """
    q = jnp.clip(q, 1e-12, 1.0)
    return jnp.mean(jnp.sum(jax.scipy.special.xlogy(p, p) - p * jnp.log(q), axis=-1))


def reconstruction_loss(x: jax.Array, x_rec: jax.Array) -> jax.Array:
    """Mean squared error over features and examples. x, x_rec: [B, D]."""
    return jnp.mean(jnp.square(x_rec - x))


SPACES = ("embedding", "whitened", "spectral")


def initial_centroids(features, k, *, key, space="embedding", n_init=20, max_iter=300,
                      num_neighbours=10):
    """DEC's centroid initialisation: the means of initial clusters of the embeddings.

    Args:
      features: [N, D] float32 embeddings.
      k: number of clusters.
      key: PRNG key of the k-means restarts.
      space: ``"embedding"`` (DEC: k-means on the embeddings themselves) or ``"whitened"``
        (k-means on the PCA-whitened, L2-normalised embeddings, as DeepCluster clusters its
        features; the centroids are then the means of the k-means clusters in the embedding, the
        space where the Student-t kernel works), or ``"spectral"`` (spectral clustering of a
        k-NN graph of those whitened, L2-normalised embeddings, ``jclust.cluster.spectral``; the
        centroids are again the clusters' means in the embedding).
      n_init, max_iter: k-means restarts and iterations.
      num_neighbours: neighbours of the k-NN graph (``"spectral"`` only).

    Returns:
      (centroids [k, D] float32, the KMeansOutput of the k-means that made the clusters).
    """
    features = jnp.asarray(features, float_dtype())
    if space == "embedding":
        km = jcluster.kmeans(features, k, key=key, n_init=n_init, max_iter=max_iter)
        return km.centroids, km
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    _, whitened = jcluster.pca(features, features.shape[1], whiten=True, l2_normalize=True)
    if space == "whitened":
        km = jcluster.kmeans(whitened, k, key=key, n_init=n_init, max_iter=max_iter)
    else:
        km = jcluster.spectral_clustering(whitened, k, key=key, num_neighbours=num_neighbours,
                                          n_init=n_init, max_iter=max_iter).kmeans
    one_hot = jax.nn.one_hot(km.labels, k, dtype=float_dtype())
    counts = one_hot.sum(axis=0)
    sums = jnp.dot(one_hot.T, features, precision=jax.lax.Precision.HIGHEST)
    # k-means re-seeds empty clusters, so every count is positive; the guard is for safety only.
    return sums / jnp.maximum(counts, 1.0)[:, None], km


def make(config, data_spec: DataSpec) -> Method:
    """Builds DEC (``config.method == "dec"``) or IDEC (``"idec"``).

    Args:
      config: a ConfigDict with ``model``, ``pretrain``, ``dec`` and ``kmeans`` sections.
      data_spec: number of examples and per-example input shape.
    """
    k = config.num_clusters
    n = data_spec.num_examples
    if k > n:
        raise ConfigError(f"num_clusters={k} is larger than the number of examples ({n})")
    if config.batch_size > n:
        raise ConfigError(f"batch_size={config.batch_size} is larger than the number of examples ({n})")
    if config.model.name != "mlp_autoencoder":
        raise ConfigError(f"config.model.name={config.model.name!r}: DEC/IDEC need the "
                          "'mlp_autoencoder' model")
    checks = {"dec.update_interval": config.dec.update_interval > 0,
              "dec.max_steps": config.dec.max_steps > 0, "dec.alpha": config.dec.alpha > 0,
              "dec.tol": config.dec.tol >= 0, "pretrain.epochs": config.pretrain.epochs >= 0,
              "pretrain.augment_shift": config.pretrain.augment_shift >= 0,
              "pretrain.input_dropout": 0 <= config.pretrain.input_dropout < 1,
              "dec.augment_shift": config.dec.augment_shift >= 0}
    check_ranges(config, checks)
    if config.kmeans.space not in SPACES:
        raise ConfigError(f"kmeans.space={config.kmeans.space!r}; use one of {SPACES}")
    if config.kmeans.num_neighbours < 1:
        raise ConfigError(f"kmeans.num_neighbours={config.kmeans.num_neighbours} must be at least 1")
    if config.kmeans.space == "spectral" and n < 2:
        raise ConfigError("kmeans.space='spectral' needs at least 2 examples for its k-NN graph")
    # A data set smaller than the graph's degree: every other example is a neighbour.
    num_neighbours = min(config.kmeans.num_neighbours, n - 1)
    if not data_spec.is_image and (config.pretrain.augment_shift or config.dec.augment_shift):
        raise ConfigError("pretrain.augment_shift / dec.augment_shift translate images; the data "
                          "are feature vectors")
    idec = config.method == "idec"
    alpha = config.dec.alpha
    gamma = config.dec.gamma
    input_dim = int(np.prod(data_spec.input_shape))
    model = models.MLPAutoencoder(hidden=tuple(config.model.hidden), embed_dim=config.model.embed_dim,
                                  output_dim=input_dim)
    steps_per_epoch = n // config.batch_size

    def prepare(x):
        return models.flatten_inputs(x)

    def init(rng, x):
        variables = model.init(rng, prepare(x))
        params = {"autoencoder": variables["params"],
                  "centroids": jnp.zeros((k, config.model.embed_dim), float_dtype())}
        cluster = DECState(target=jnp.zeros((n, k), float_dtype()),
                           labels=jnp.full((n,), -1, jnp.int32),
                           delta_label=jnp.ones((), float_dtype()),
                           done=jnp.zeros((), jnp.bool_))
        return params, {}, cluster

    def encode(params, x):
        return model.apply({"params": params["autoencoder"]}, prepare(x), method=model.encode)

    def augmented(x, rng, max_shift):
        # DEC-DA (Guo et al., 2018): the network sees randomly shifted images; targets and
        # evaluation use the originals.
        if not data_spec.is_image or max_shift <= 0:
            return x
        return augment.random_shift(x, rng, max_shift)

    def corrupted(x, rng, rate):
        # Denoising pretraining (DEC's stacked denoising autoencoder used 20 % input dropout):
        # the encoder sees x with a fraction `rate` of its features zeroed (the rest scaled by
        # 1/(1-rate), as a dropout layer does, so clean inputs keep the expected scale) and the
        # loss compares the reconstruction with the clean x.
        if rate <= 0:
            return x
        keep = jax.random.bernoulli(rng, jnp.asarray(1.0 - rate, RANDOM_DTYPE), x.shape)
        return jnp.where(keep, x / (1.0 - rate), 0.0)

    def pretrain_loss(params, model_state, cluster, batch, rng):
        shift_rng, drop_rng = jax.random.split(rng) if rng is not None else (None, None)
        x = prepare(augmented(batch["x"], shift_rng, config.pretrain.augment_shift))
        _, x_rec = model.apply({"params": params["autoencoder"]},
                               corrupted(x, drop_rng, config.pretrain.input_dropout))
        loss = reconstruction_loss(x, x_rec)
        return loss, (model_state, {"rec": loss})

    def cluster_loss(params, model_state, cluster, batch, rng):
        x = prepare(augmented(batch["x"], rng, config.dec.augment_shift))
        z, x_rec = model.apply({"params": params["autoencoder"]}, x)
        q = soft_assignment(z, params["centroids"], alpha)
        p = jax.lax.stop_gradient(cluster.target[batch["index"]])
        kl = kl_divergence(p, q)
        metrics = {"kl": kl}
        if idec:
            rec = reconstruction_loss(x, x_rec)
            metrics["rec"] = rec
            return rec + gamma * kl, (model_state, metrics)
        return kl, (model_state, metrics)

    def embed(params, model_state, x):
        return encode(params, x)

    def assign(params, cluster, features):
        q = soft_assignment(features, params["centroids"], alpha)
        return jnp.argmax(q, axis=-1).astype(jnp.int32), jnp.max(q, axis=-1)

    @jax.jit
    def _update_target(centroids, features, old_labels):
        q = soft_assignment(features, centroids, alpha)
        labels = jnp.argmax(q, axis=-1).astype(jnp.int32)
        delta = jnp.mean((labels != old_labels).astype(float_dtype()))
        return target_distribution(q), labels, delta

    def recluster(params, cluster, context):
        features, first, key = context.features, context.first, context.key
        info = {}
        if first:
            centroids, km = initial_centroids(features, k, key=key, space=config.kmeans.space,
                                              n_init=config.kmeans.n_init,
                                              max_iter=config.kmeans.max_iter,
                                              num_neighbours=num_neighbours)
            params = {**params, "centroids": centroids}
            info.update(kmeans_inertia=float(km.inertia), kmeans_iters=int(km.n_iter))
        target, labels, delta = _update_target(params["centroids"], features, cluster.labels)
        # DEC stops on the label-change tolerance, but never on the very first target update.
        done = jnp.logical_and(jnp.logical_not(first), delta < config.dec.tol)
        cluster = DECState(target=target, labels=labels, delta_label=delta, done=done)
        info.update(delta_label=float(delta))
        return params, cluster, info

    cluster_tx = make_optimizer(config.dec.optimizer, config.dec.learning_rate, config.dec.momentum)
    pretrain_steps = config.pretrain.epochs * steps_per_epoch
    pretrain_tx = make_optimizer(config.pretrain.optimizer, config.pretrain.learning_rate,
                                 config.pretrain.momentum, schedule=config.pretrain.lr_schedule,
                                 num_steps=max(pretrain_steps, 1))
    # The pretraining optimiser must not move the (still unused) centroids.
    pretrain_tx = optax.multi_transform(
        {"train": pretrain_tx, "freeze": optax.set_to_zero()},
        lambda params: {"autoencoder": jax.tree.map(lambda _: "train", params["autoencoder"]),
                        "centroids": "freeze"})
    phases = (
        Phase(name="pretrain", num_steps=pretrain_steps, tx=pretrain_tx,
              loss_fn=pretrain_loss, evaluate=False),
        Phase(name="cluster", num_steps=config.dec.max_steps, tx=cluster_tx, loss_fn=cluster_loss,
              recluster_every=config.dec.update_interval, recluster_at_start=True),
    )
    return Method(init=init, phases=phases, embed=embed, assign=assign, recluster=recluster,
                  done=lambda cluster: bool(cluster.done), assignment_rule=ASSIGNMENT_RULE,
                  example_axes=DECState(target=0, labels=0, delta_label=None, done=None))
