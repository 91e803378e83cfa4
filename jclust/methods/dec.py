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

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jclust import cluster as jcluster
from jclust import models
from jclust.data import augment
from jclust.config_lib import ConfigError, check_ranges
from jclust.methods.base import DataSpec, Method, Phase
from jclust.methods.common import relative_spread, steps_per_epoch
from jclust.optim import input_power_cap, input_power_scale, make_optimizer
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

# A pretrained embedding whose rows vary by less than this fraction of their norm has collapsed.
# Measured (common.relative_spread of the pretrained encoder on 5,000 images): healthy DEC
# embeddings 0.28 (oc7) to 0.97 (Fashion-MNIST 10k/70k); the autoencoder that died in pretraining
# (Fashion-MNIST 10k, seed 0, SGD rate 1; BENCHMARKS.md) 0.026.
MIN_EMBEDDING_SPREAD = 0.1


def initial_report(features, km: jcluster.KMeansOutput) -> dict:
    """What the first recluster logs: the initial k-means's inertia and iterations, and the
    pretrained embedding's [N, D] relative spread, with a ``"warning"`` when it has collapsed."""
    spread = relative_spread(features)
    report = {"kmeans_inertia": float(km.inertia), "kmeans_iters": int(km.n_iter),
              "embedding_spread": spread}
    if spread >= MIN_EMBEDDING_SPREAD:
        return report
    return {**report, "warning": (
        f"embedding collapse: the pretrained embedding's rows vary by {spread:.2g} of their "
        f"norm (the autoencoder's pretraining died: it gives nearly one code for every input), "
        f"so the clusters start from noise; training goes on. Remedies: a lower "
        f"pretrain.learning_rate, pretrain.optimizer='adam', a lower pretrain.max_input_power")}


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


def shifted(x: jax.Array, rng: jax.Array, max_shift: int, is_image: bool) -> jax.Array:
    """DEC-DA (Guo et al., 2018): images randomly translated by up to ``max_shift`` pixels
    (targets and evaluation use the originals); ``x`` as it is for features or ``max_shift`` 0."""
    if not is_image or max_shift <= 0:
        return x
    return augment.random_shift(x, rng, max_shift)


def corrupted(x: jax.Array, rng: jax.Array, rate: float) -> jax.Array:
    """Denoising pretraining (DEC's stacked denoising autoencoder used 20 % input dropout): x
    [B, D] with a fraction ``rate`` of its features zeroed and the rest scaled by 1/(1-rate), as a
    dropout layer does, so that clean inputs keep the expected scale."""
    if rate <= 0:
        return x
    keep = jax.random.bernoulli(rng, jnp.asarray(1.0 - rate, RANDOM_DTYPE), x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


@functools.partial(jax.jit, static_argnames="alpha")
def update_target(centroids: jax.Array, features: jax.Array, old_labels: jax.Array, *,
                  alpha: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """DEC's target update over the whole data set: features [N, D], centroids [K, D], the labels
    [N] of the last update -> (target P [N, K], labels [N], fraction of labels changed [])."""
    q = soft_assignment(features, centroids, alpha)
    labels = jnp.argmax(q, axis=-1).astype(jnp.int32)
    delta = jnp.mean((labels != old_labels).astype(float_dtype()))
    return target_distribution(q), labels, delta


def make(*, autoencoder: models.MLPAutoencoder, is_image: bool, num_examples: int,
         num_clusters: int, pretrain_tx: optax.GradientTransformation, pretrain_steps: int,
         cluster_tx: optax.GradientTransformation, max_steps: int, update_interval: int = 140,
         idec: bool = False, alpha: float = 1.0, gamma: float = 0.1, tol: float = 0.001,
         pretrain_augment_shift: int = 0, input_dropout: float = 0.0, augment_shift: int = 0,
         pretrain_max_input_power: float = 0.0, kmeans_space: str = "spectral",
         kmeans_n_init: int = 20, kmeans_max_iter: int = 300, num_neighbours: int = 10) -> Method:
    """DEC (IDEC with ``idec``) on ``autoencoder``: pretrained with ``pretrain_tx`` for
    ``pretrain_steps`` steps (the centroids untouched), then clustered with ``cluster_tx`` for at
    most ``max_steps`` steps. ``kmeans_*``, ``num_neighbours`` (<= N - 1) and the ``pretrain``
    keys (``pretrain_max_input_power``: :func:`jclust.optim.input_power_scale`) are named after
    their sections' keys, the rest are the ``dec`` keys of the same names (docs/methods.md)."""
    n, k = num_examples, num_clusters
    prepare = models.flatten_inputs

    def init(rng, x):
        variables = autoencoder.init(rng, prepare(x))
        params = {"autoencoder": variables["params"],
                  "centroids": jnp.zeros((k, autoencoder.embed_dim), float_dtype())}
        cluster = DECState(target=jnp.zeros((n, k), float_dtype()),
                           labels=jnp.full((n,), -1, jnp.int32),
                           delta_label=jnp.ones((), float_dtype()), done=jnp.zeros((), jnp.bool_))
        return params, {}, cluster

    def pretrain_loss(params, model_state, cluster, batch, rng):
        shift_rng, drop_rng = jax.random.split(rng) if rng is not None else (None, None)
        x = prepare(shifted(batch["x"], shift_rng, pretrain_augment_shift, is_image))
        inputs = corrupted(x, drop_rng, input_dropout)
        _, x_rec = autoencoder.apply({"params": params["autoencoder"]}, inputs)
        loss = reconstruction_loss(x, x_rec)
        scale = input_power_scale(inputs, pretrain_max_input_power)
        return loss * scale, (model_state, {"rec": loss, "rate_scale": scale})

    def cluster_loss(params, model_state, cluster, batch, rng):
        x = prepare(shifted(batch["x"], rng, augment_shift, is_image))
        z, x_rec = autoencoder.apply({"params": params["autoencoder"]}, x)
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
        return autoencoder.apply({"params": params["autoencoder"]}, prepare(x),
                                 method=autoencoder.encode)

    def assign(params, cluster, features):
        q = soft_assignment(features, params["centroids"], alpha)
        return jnp.argmax(q, axis=-1).astype(jnp.int32), jnp.max(q, axis=-1)

    def recluster(params, cluster, context):
        features, first, key = context.features, context.first, context.key
        info = {}
        if first:
            centroids, km = initial_centroids(features, k, key=key, space=kmeans_space,
                                              n_init=kmeans_n_init, max_iter=kmeans_max_iter,
                                              num_neighbours=num_neighbours)
            params = {**params, "centroids": centroids}
            info.update(initial_report(features, km))
        target, labels, delta = update_target(params["centroids"], features, cluster.labels,
                                              alpha=alpha)
        # DEC stops on the label-change tolerance, but never on the very first target update.
        done = jnp.logical_and(jnp.logical_not(first), delta < tol)
        cluster = DECState(target=target, labels=labels, delta_label=delta, done=done)
        info.update(delta_label=float(delta))
        return params, cluster, info

    phases = (
        Phase(name="pretrain", num_steps=pretrain_steps, tx=pretrain_tx,
              loss_fn=pretrain_loss, evaluate=False),
        Phase(name="cluster", num_steps=max_steps, tx=cluster_tx, loss_fn=cluster_loss,
              recluster_every=update_interval, recluster_at_start=True),
    )
    return Method(init=init, phases=phases, embed=embed, assign=assign, recluster=recluster,
                  done=lambda cluster: bool(cluster.done), assignment_rule=ASSIGNMENT_RULE,
                  example_axes=DECState(target=0, labels=0, delta_label=None, done=None))


def from_config(config: ml_collections.ConfigDict, data_spec: DataSpec) -> Method:
    """DEC (``config.method == "dec"``) or IDEC (``"idec"``) as ``config`` sets it (sections
    ``model``, ``pretrain``, ``dec`` and ``kmeans``)."""
    k, n = config.num_clusters, data_spec.num_examples
    pretrain, dec, km = config.pretrain, config.dec, config.kmeans
    if k > n:
        raise ConfigError(f"num_clusters={k} is larger than the number of examples ({n})")
    if config.batch_size > n:
        raise ConfigError(f"batch_size={config.batch_size} is larger than the number of examples ({n})")
    if config.model.name != "mlp_autoencoder":
        raise ConfigError(f"config.model.name={config.model.name!r}: DEC/IDEC need the "
                          "'mlp_autoencoder' model")
    check_ranges(config, {
        "dec.update_interval": dec.update_interval > 0, "dec.max_steps": dec.max_steps > 0,
        "dec.alpha": dec.alpha > 0, "dec.tol": dec.tol >= 0,
        "pretrain.epochs": pretrain.epochs >= 0,
        "pretrain.augment_shift": pretrain.augment_shift >= 0,
        "pretrain.input_dropout": 0 <= pretrain.input_dropout < 1,
        "pretrain.max_input_power": pretrain.max_input_power >= 0,
        "dec.augment_shift": dec.augment_shift >= 0})
    if km.space not in SPACES:
        raise ConfigError(f"kmeans.space={km.space!r}; use one of {SPACES}")
    if km.num_neighbours < 1:
        raise ConfigError(f"kmeans.num_neighbours={km.num_neighbours} must be at least 1")
    if km.space == "spectral" and n < 2:
        raise ConfigError("kmeans.space='spectral' needs at least 2 examples for its k-NN graph")
    if not data_spec.is_image and (pretrain.augment_shift or dec.augment_shift):
        raise ConfigError("pretrain.augment_shift / dec.augment_shift translate images; the data "
                          "are feature vectors")
    pretrain_steps = pretrain.epochs * steps_per_epoch(config, data_spec)
    pretrain_tx = make_optimizer(pretrain.optimizer, pretrain.learning_rate, pretrain.momentum,
                                 schedule=pretrain.lr_schedule, num_steps=max(pretrain_steps, 1))
    # The pretraining optimiser must not move the (still unused) centroids.
    pretrain_tx = optax.multi_transform(
        {"train": pretrain_tx, "freeze": optax.set_to_zero()},
        lambda params: {"autoencoder": jax.tree.map(lambda _: "train", params["autoencoder"]),
                        "centroids": "freeze"})
    autoencoder = models.MLPAutoencoder(hidden=tuple(config.model.hidden),
                                        embed_dim=config.model.embed_dim,
                                        output_dim=int(np.prod(data_spec.input_shape)))
    return make(autoencoder=autoencoder, is_image=data_spec.is_image, num_examples=n,
                num_clusters=k, pretrain_tx=pretrain_tx, pretrain_steps=pretrain_steps,
                cluster_tx=make_optimizer(dec.optimizer, dec.learning_rate, dec.momentum),
                max_steps=dec.max_steps, update_interval=dec.update_interval,
                idec=config.method == "idec", alpha=dec.alpha, gamma=dec.gamma, tol=dec.tol,
                pretrain_augment_shift=pretrain.augment_shift,
                input_dropout=pretrain.input_dropout, augment_shift=dec.augment_shift,
                pretrain_max_input_power=input_power_cap(pretrain.optimizer,
                                                         pretrain.max_input_power),
                kmeans_space=km.space, kmeans_n_init=km.n_init, kmeans_max_iter=km.max_iter,
                # A data set smaller than the graph's degree: every other example is a neighbour.
                num_neighbours=min(km.num_neighbours, n - 1))
