"""Neural mixture models with EM for end-to-end deep clustering (Tissera et al., arXiv 2107.02453),
fused with consistency optimisation.

No public code exists; this is the reconstruction of ``METHODS.md`` §6, every choice a config key
(``config.nmm``):

Model: backbone -> ``MixtureHead``: Dense(K) outputs o_k(x), standardised per neuron over the batch
(``normalize="batch"``: BatchNorm without scale or shift, running statistics in evaluation; or
``"none"``), times ``sigmoid_scale`` s. Component densities p_k(x) = sigmoid(s o~_k(x)) / Z with one
constant Z (``log_normalizer`` = log Z) shared by all k, so every density is non-negative with a
common integral; mixture weights pi fixed at 1/K or estimated (``mixture_weights="estimated"``: an
exponential moving average, momentum ``weights_momentum``, of the batches' mean responsibilities,
kept in the clustering state).

Every train step, on V views of the batch (the anchor view; with ``augment_weight`` > 0 a second
augmented view; with ``neighbour_weight`` > 0 an augmented view of one mined neighbour per example):
  * E-step (forward, no gradient): gamma = softmax_k(log pi_k + log p_k(x)) per view
    (``jclust.cluster.responsibilities``);
  * M-step (backward): the optimiser step on -Q, Q = the expected complete-data log-likelihood
    (1/B) sum_i sum_k gamma_ik [log pi_k + log p_k(x_i)], averaged over the views, times
    ``em_weight``;
  * consistency, with the posteriors q = gamma *with* gradient: between the anchor and its second
    view (``augment_weight``) and between the anchor and its neighbour (``neighbour_weight``),
    either SCAN's -log <q_a, q_b> (``consistency="dot"``) or the symmetrised cross-entropy with the
    other side's posterior as a constant (``"cross_entropy"``);
  * minus ``entropy_weight`` times the entropy of the batch's mean anchor posterior (against empty
    clusters).
"EM alone" is augment_weight = neighbour_weight = 0.

Heads (``num_heads`` = H, SCAN's trick against a poor local optimum): H independent mixtures of K
components on the same backbone, each with its own mixture weights; the loss above is computed for
every head and the train step minimises their mean. Every head's loss is followed by an
exponential moving average (momentum ``head_loss_momentum``) and the assignment rule reads the head
whose average is lowest (label-free, as SCAN keeps the head of lowest loss).

Neighbours (``neighbour_space``): "pixels": the ``num_neighbours`` nearest neighbours (cosine) of
every example's raw inputs, after PCA to ``neighbour_pca_dim`` (0: none), mined once at the start
(a frozen space); "backbone": of the backbone's features, mined at the start and again every
``remine_epochs`` epochs (a jointly learnt space).

Assignment rule: argmax_k of the density p_k(x) of the selected head (evaluation-mode forward
pass), confidence = the posterior gamma of that cluster. The embedding the trainer stores is
[s o~ (H * K, head j in columns j*K:(j+1)*K) | backbone features (D)].
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jclust import cluster as jcluster
from jclust import models, optim
from jclust.cluster import graph as jgraph
from jclust.cluster import l2_normalize
from jclust.config_lib import ConfigError
from jclust.data import augment
from jclust.methods.base import Batch, DataSpec, Method, Params, Phase, ReclusterContext, SamplePlan
from jclust.methods.common import check_cnn_config, steps_per_epoch
from jclust.models.neck import MixtureHead
from jclust.precision import float_dtype

# The nmm config keys that make() takes as they are.
PLAIN_KEYS = ("normalize", "sigmoid_scale", "mixture_weights", "weights_momentum", "head_hidden",
              "head_loss_momentum", "em_weight", "consistency", "augment_weight",
              "neighbour_weight", "neighbour_space", "neighbour_pca_dim", "entropy_weight",
              "augment_anchor", "flip", "max_degrees")
ASSIGNMENT_RULE = ("the mixture component of largest density p_k(x) = sigmoid(s o~_k(x)) / Z "
                   "of the head with the lowest running loss (evaluation-mode forward pass, batch "
                   "statistics from training); confidence = its posterior responsibility")


class NMMState(NamedTuple):
    """Clustering state of the neural mixture model (all of it is checkpointed).

    Attributes:
      log_weights: [H, K] float32 log mixture weights of every head (uniform unless estimated).
      head_losses: [H] float32 moving average of every head's loss (the lowest is assigned).
      neighbours: [N, M] int32 mined neighbours of every example (-1 before mining, or M = 0).
      iteration: [] int32 train steps taken.
    """
    log_weights: jax.Array
    head_losses: jax.Array
    neighbours: jax.Array
    iteration: jax.Array

    @classmethod
    def initial(cls, num_heads: int, num_components: int, num_examples: int,
                num_neighbours: int) -> "NMMState":
        """Uniform weights, zero losses, no neighbours mined yet (-1)."""
        k = num_components
        return cls(log_weights=jnp.full((num_heads, k), -math.log(k), float_dtype()),
                   head_losses=jnp.zeros((num_heads,), float_dtype()),
                   neighbours=jnp.full((num_examples, num_neighbours), -1, jnp.int32),
                   iteration=jnp.zeros((), jnp.int32))

    @property
    def selected_head(self) -> jax.Array:
        """[] int32: the head the assignment rule reads (lowest running loss)."""
        return jnp.argmin(self.head_losses).astype(jnp.int32)


def consistency_loss(q_a: jax.Array, q_b: jax.Array, kind: str) -> jax.Array:
    """Disagreement between two posteriors of the same (or neighbouring) examples.

    Args:
      q_a, q_b: [B, K] posteriors (rows sum to 1).
      kind: "dot": mean_i -log <q_a[i], q_b[i]> (SCAN); "cross_entropy": the mean of
        -sum_k sg(q_a) log q_b and -sum_k sg(q_b) log q_a (sg: no gradient).

    Returns:
      Scalar.
    """
    if kind == "dot":
        return -jnp.mean(jnp.log(jnp.clip(jnp.sum(q_a * q_b, -1), 1e-8)))
    if kind == "cross_entropy":
        log_a, log_b = jnp.log(jnp.clip(q_a, 1e-8)), jnp.log(jnp.clip(q_b, 1e-8))
        sg = jax.lax.stop_gradient
        return -0.5 * jnp.mean(jnp.sum(sg(q_a) * log_b, -1) + jnp.sum(sg(q_b) * log_a, -1))
    raise ValueError(f"consistency={kind!r}: use 'dot' or 'cross_entropy'")


def mean_entropy(q: jax.Array) -> jax.Array:
    """Entropy of the batch's mean posterior: [B, K] -> scalar (ln K when the batch is balanced)."""
    mass = jnp.mean(q, axis=0)
    return -jnp.sum(mass * jnp.log(jnp.clip(mass, 1e-8)))


def mine_neighbours(x, num_neighbours: int, pca_dim: int = 0) -> jax.Array:
    """Each row's nearest neighbours by cosine similarity, itself excluded.

    Args:
      x: [N, ...] inputs or features (flattened to [N, D]).
      num_neighbours: M, 1 <= M < N.
      pca_dim: project on the leading principal components first (0: no projection).

    Returns:
      [N, M] int32, nearest first.
    """
    x = jnp.asarray(np.asarray(x).reshape(len(x), -1), float_dtype())
    if pca_dim and pca_dim < min(x.shape):
        x = jcluster.pca_transform(jcluster.pca_fit(x, pca_dim), x)
    return jgraph.knn(l2_normalize(x), num_neighbours).indices.astype(jnp.int32)


def head_loss(log_densities: jax.Array, log_weights: jax.Array, *, em_weight: float,
              augment_weight: float, neighbour_weight: float, consistency: str,
              entropy_weight: float) -> tuple[jax.Array, dict, jax.Array]:
    """One head's loss (module docstring): -em_weight x Q (the expected complete log-likelihood,
    averaged over views) + the weighted consistency terms - entropy_weight x the batch mass's
    entropy.

    Args:
      log_densities: [V, B, K] per view (0: the anchor; then the second view if
        ``augment_weight`` > 0; then the neighbour view if ``neighbour_weight`` > 0).
      log_weights: [K] the mixture's log weights.
      em_weight, augment_weight, neighbour_weight, consistency, entropy_weight: the nmm keys.

    Returns:
      (loss [], metrics, the batch's mass [K]).
    """
    k = log_densities.shape[-1]
    e_steps = [jcluster.responsibilities(ld, log_weights) for ld in log_densities]
    q_em = jnp.mean(jnp.stack([
        jcluster.expected_complete_log_likelihood(e.responsibilities, ld, log_weights)
        for e, ld in zip(e_steps, log_densities)]))
    # Posteriors with gradient for the consistency terms (the E-step's gamma has none).
    posteriors = [e.responsibilities for e in e_steps]
    loss = -em_weight * q_em
    metrics = {"expected_log_lik": q_em, "log_lik": jnp.mean(e_steps[0].log_likelihood)}
    v = 1
    if augment_weight > 0:
        augment_term = consistency_loss(posteriors[0], posteriors[v], consistency)
        loss = loss + augment_weight * augment_term
        metrics["augment_consistency"] = augment_term
        v += 1
    if neighbour_weight > 0:
        neighbour_term = consistency_loss(posteriors[0], posteriors[v], consistency)
        loss = loss + neighbour_weight * neighbour_term
        metrics["neighbour_consistency"] = neighbour_term
    entropy = mean_entropy(posteriors[0])
    loss = loss - entropy_weight * entropy
    gamma = jax.lax.stop_gradient(posteriors[0])
    mass = jnp.mean(gamma, axis=0)
    metrics.update(mass_entropy_over_log_k=entropy / math.log(k),
                   max_cluster_mass_times_k=jnp.max(mass) * k,
                   mean_max_posterior=jnp.mean(jnp.max(gamma, -1)),
                   clusters_won=jnp.sum(jnp.max(jax.nn.one_hot(jnp.argmax(gamma, -1), k), 0)))
    return loss, metrics, mass


def advance_weights(cluster: NMMState, batch: Batch, outputs: dict, rng: jax.Array, *,
                    estimate_weights: bool, weights_momentum: float,
                    head_loss_momentum: float) -> tuple[NMMState, dict]:
    """The step's ``cluster_update``: the mixture weights follow the batch's mass
    (``outputs["mass"]`` [H, K]) by momentum when estimated; every head's loss average follows
    ``outputs["head_losses"]`` [H] (the first step's losses start it)."""
    del batch, rng
    log_weights = cluster.log_weights
    if estimate_weights:
        weights = (weights_momentum * jnp.exp(log_weights)
                   + (1 - weights_momentum) * outputs["mass"])
        log_weights = jnp.log(jnp.clip(weights, 1e-8))
    m = jnp.where(cluster.iteration == 0, 0.0, head_loss_momentum)
    head_losses = m * cluster.head_losses + (1 - m) * outputs["head_losses"]
    cluster = cluster._replace(log_weights=log_weights, head_losses=head_losses,
                               iteration=cluster.iteration + 1)
    k = log_weights.shape[-1]
    min_weight = jnp.exp(jnp.min(log_weights[cluster.selected_head]))
    return cluster, {"min_weight_times_k": min_weight * k}


def heads_loss(logits: jax.Array, cluster: NMMState, num_views: int, *, log_normalizer: float,
               **term_weights) -> tuple[jax.Array, dict, dict]:
    """Every head's :func:`head_loss`, vmapped.

    Args:
      logits: [V * B, H * K] s o~ of the V views of a batch (view-major).
      cluster: the state (each head's log weights; the selected head).
      num_views: V.
      log_normalizer: log Z of the densities.
      **term_weights: :func:`head_loss`'s weights.

    Returns:
      (the mean of the heads' losses, the selected head's metrics, outputs for
      :func:`advance_weights`: each head's batch mass [H, K] and loss [H]).
    """
    num_heads, k = cluster.log_weights.shape
    log_densities = jcluster.sigmoid_log_densities(logits, log_normalizer)
    # [V * B, H * K] -> [H, V, B, K]: every head is a mixture of its own.
    log_densities = log_densities.reshape(num_views, -1, num_heads, k).transpose(2, 0, 1, 3)
    losses, head_metrics, masses = jax.vmap(lambda ld, lw: head_loss(ld, lw, **term_weights))(
        log_densities, cluster.log_weights)
    selected = cluster.selected_head
    metrics = {name: value[selected] for name, value in head_metrics.items()}
    if num_heads > 1:
        metrics.update(selected_head=selected, selected_head_loss=losses[selected])
    outputs = {"mass": masses, "head_losses": jax.lax.stop_gradient(losses)}
    return jnp.mean(losses), metrics, outputs


def density_assignment(params: Params, cluster: NMMState, features: jax.Array, *,
                       log_normalizer: float) -> tuple[jax.Array, jax.Array]:
    """The assignment rule: the selected head's component of largest density, from the feature
    pass's logits (its first H * K columns of features [B, D]); confidence = that component's
    responsibility. -> (labels [B] int32, confidence [B])."""
    selected = cluster.selected_head
    k = cluster.log_weights.shape[1]
    logits = jax.lax.dynamic_slice_in_dim(features, selected * k, k, axis=1)
    log_densities = jcluster.sigmoid_log_densities(logits, log_normalizer)
    gamma = jcluster.responsibilities(log_densities,
                                      cluster.log_weights[selected]).responsibilities
    labels = jnp.argmax(log_densities, -1).astype(jnp.int32)
    return labels, jnp.take_along_axis(gamma, labels[:, None], axis=1)[:, 0]


def mine(params: Params, cluster: NMMState, context: ReclusterContext, *, space: str,
         num_neighbours: int, pca_dim: int, logit_columns: int) -> tuple[Params, NMMState, dict]:
    """The recluster: mines every example's ``num_neighbours`` neighbours, once in pixel space
    (``space="pixels"``, PCA to ``pca_dim`` first) or at every call in the backbone features
    (the feature pass's columns after the first ``logit_columns``); reports the share of the
    neighbour lists that is new (1 at the first mining)."""
    if space == "pixels":
        if not context.first:
            return params, cluster, {}
        neighbours = mine_neighbours(context.inputs, num_neighbours, pca_dim)
    else:
        neighbours = mine_neighbours(np.asarray(context.features)[:, logit_columns:],
                                     num_neighbours)
    kept = jnp.any(neighbours[:, :, None] == cluster.neighbours[:, None, :], axis=-1)
    changed = 1.0 - float(jnp.mean(kept))
    return params, cluster._replace(neighbours=neighbours), {"neighbours_changed": changed}


def make(*, backbone: models.Backbone, image_shape: Sequence[int], num_examples: int,
         num_clusters: int, tx: optax.GradientTransformation, num_steps: int,
         remine_every: int = 0, normalize: str = "batch", sigmoid_scale: float = 15.0,
         log_normalizer: float = 0.0, mixture_weights: str = "fixed",
         weights_momentum: float = 0.99, head_hidden: int = 0, num_heads: int = 5,
         head_loss_momentum: float = 0.99, em_weight: float = 0.2, consistency: str = "dot",
         augment_weight: float = 1.0, neighbour_weight: float = 1.0,
         neighbour_space: str = "pixels", num_neighbours: int = 10, neighbour_pca_dim: int = 50,
         entropy_weight: float = 5.0, augment_anchor: bool = True,
         crop_scale: tuple[float, float] = (0.4, 1.0), flip: bool = True,
         max_degrees: float = 0.0) -> Method:
    """The neural mixture model on ``backbone`` with ``tx`` for ``num_steps`` steps, neighbours
    re-mined every ``remine_every`` steps (0: never); the rest: ``nmm`` keys (docs/methods.md)."""
    n, k = num_examples, num_clusters
    use_neighbours = neighbour_weight > 0 and neighbour_space != "none"
    num_neighbours = num_neighbours if use_neighbours else 0
    head = MixtureHead(num_components=k, hidden=head_hidden, normalize=normalize,
                       num_heads=num_heads)
    term_weights = dict(em_weight=em_weight, augment_weight=augment_weight,
                        neighbour_weight=neighbour_weight if use_neighbours else 0.0,
                        consistency=consistency, entropy_weight=entropy_weight)

    def init(rng, x):
        k_backbone, k_head = jax.random.split(rng)
        backbone_params, backbone_state = backbone.init(k_backbone, x)
        head_vars = head.init(k_head, jnp.zeros((2, backbone.feature_dim)))
        params = {"backbone": backbone_params, "head": head_vars["params"]}
        model_state = {"backbone": backbone_state,
                       "head": {c: v for c, v in head_vars.items() if c != "params"}}
        return params, model_state, NMMState.initial(num_heads, k, n, num_neighbours)

    def forward(params, model_state, x, train):
        """x [B, ...] -> (backbone features [B, D], s o~ [B, H * K], model_state)."""
        h, backbone_state = backbone.apply(params["backbone"], model_state["backbone"], x, train)
        variables = {"params": params["head"], **model_state["head"]}
        if train:
            o, updates = head.apply(variables, h, train=True, mutable=["batch_stats"])
            head_state = {**model_state["head"], **updates}
        else:
            o, head_state = head.apply(variables, h, train=False), model_state["head"]
        return h, sigmoid_scale * o, {"backbone": backbone_state, "head": head_state}

    view = functools.partial(augment.augment_view, out_size=tuple(image_shape[:2]),
                             scale=tuple(crop_scale), flip=flip, max_degrees=max_degrees,
                             color=image_shape[-1] == 3)

    def loss_fn(params, model_state, cluster, batch, rng):
        k_anchor, k_second, k_neighbour = jax.random.split(rng, 3)
        x = batch["x"]
        views = [view(x, k_anchor) if augment_anchor else augment.to_float(x)]
        if augment_weight > 0:
            views.append(view(x, k_second))
        if use_neighbours:
            views.append(view(batch["neighbour_x"], k_neighbour))
        # All views in one forward pass: one set of batch statistics, as the densities share them.
        _, logits, model_state = forward(params, model_state, jnp.concatenate(views), True)
        loss, metrics, outputs = heads_loss(logits, cluster, len(views),
                                            log_normalizer=log_normalizer, **term_weights)
        return loss, (model_state, metrics, outputs)

    def embed(params, model_state, x):
        h, logits, _ = forward(params, model_state, x, train=False)
        return jnp.concatenate([logits, h.astype(logits.dtype)], axis=-1)

    phases = (Phase(name="nmm", num_steps=num_steps, tx=tx, loss_fn=loss_fn,
                    recluster_every=remine_every if use_neighbours else 0,
                    recluster_at_start=use_neighbours, cluster_update=functools.partial(
                        advance_weights, estimate_weights=mixture_weights == "estimated",
                        weights_momentum=weights_momentum,
                        head_loss_momentum=head_loss_momentum)),)
    remine = functools.partial(mine, space=neighbour_space, num_neighbours=num_neighbours,
                               pca_dim=neighbour_pca_dim, logit_columns=num_heads * k)
    return Method(init=init, phases=phases, embed=embed,
                  assign=functools.partial(density_assignment, log_normalizer=log_normalizer),
                  recluster=remine if use_neighbours else None, done=lambda cluster: False,
                  assignment_rule=ASSIGNMENT_RULE,
                  example_axes=NMMState(log_weights=None, head_losses=None, neighbours=0,
                                        iteration=None),
                  sampler=(lambda cluster: SamplePlan(neighbours=cluster.neighbours))
                  if use_neighbours else None)


def from_config(config: ml_collections.ConfigDict, data_spec: DataSpec) -> Method:
    """The neural mixture model as ``config`` sets it (sections ``model``, ``optim``, ``nmm``)."""
    nm, n = config.nmm, data_spec.num_examples
    use_neighbours = nm.neighbour_weight > 0 and nm.neighbour_space != "none"
    check_cnn_config(config, data_spec, "the neural mixture model", {
        "num_clusters": 2 <= config.num_clusters <= n, "nmm.sigmoid_scale": nm.sigmoid_scale > 0,
        "nmm.em_weight": nm.em_weight >= 0, "nmm.augment_weight": nm.augment_weight >= 0,
        "nmm.neighbour_weight": nm.neighbour_weight >= 0,
        "nmm.entropy_weight": nm.entropy_weight >= 0,
        "nmm.weights_momentum": 0 <= nm.weights_momentum < 1,
        "nmm.num_neighbours": not use_neighbours or 1 <= nm.num_neighbours < n,
        "nmm.neighbour_pca_dim": nm.neighbour_pca_dim >= 0,
        "nmm.remine_epochs": nm.remine_epochs >= 0, "nmm.head_hidden": nm.head_hidden >= 0,
        "nmm.num_heads": nm.num_heads >= 1,
        "nmm.head_loss_momentum": 0 <= nm.head_loss_momentum < 1,
        "batch_size": 2 <= config.batch_size <= n})
    choices = {"normalize": ("batch", "none"), "mixture_weights": ("fixed", "estimated"),
               "consistency": ("dot", "cross_entropy"),
               "neighbour_space": ("pixels", "backbone", "none")}
    for key, allowed in choices.items():
        if nm[key] not in allowed:
            raise ConfigError(f"config.nmm.{key}={nm[key]!r}: use one of {', '.join(allowed)}")
    if nm.em_weight + nm.augment_weight + nm.neighbour_weight == 0:
        raise ConfigError("config.nmm: em_weight, augment_weight and neighbour_weight are all 0; "
                          "nothing would be trained")
    epoch = steps_per_epoch(config, data_spec)
    num_steps = config.optim.epochs * epoch
    return make(backbone=models.make_backbone(config.model), image_shape=data_spec.input_shape,
                num_examples=n, num_clusters=config.num_clusters, num_steps=num_steps,
                tx=optim.make(config.optim, num_steps),
                remine_every=nm.remine_epochs * epoch if nm.neighbour_space == "backbone" else 0,
                log_normalizer=float(nm.log_normalizer), num_heads=int(nm.num_heads),
                num_neighbours=int(nm.num_neighbours), crop_scale=tuple(nm.crop_scale),
                **{key: nm[key] for key in PLAIN_KEYS})
