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

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jclust import cluster as jcluster
from jclust import models, optim
from jclust.cluster import graph as jgraph
from jclust.cluster import l2_normalize
from jclust.config_lib import ConfigError, check_ranges
from jclust.data import augment
from jclust.methods.base import DataSpec, Method, Phase, SamplePlan
from jclust.models.neck import MixtureHead
from jclust.precision import float_dtype

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


def make(config, data_spec: DataSpec) -> Method:
    """Builds the neural mixture model for ``config`` (sections ``model``, ``optim``, ``nmm``)."""
    nm = config.nmm
    n = data_spec.num_examples
    k = config.num_clusters
    num_heads = int(nm.num_heads)
    steps_per_epoch = n // config.batch_size
    num_steps = config.optim.epochs * steps_per_epoch
    use_neighbours = nm.neighbour_weight > 0 and nm.neighbour_space != "none"
    num_neighbours = int(nm.num_neighbours) if use_neighbours else 0
    check_ranges(config, {"num_clusters": 2 <= k <= n,
                         "nmm.sigmoid_scale": nm.sigmoid_scale > 0,
                         "nmm.em_weight": nm.em_weight >= 0,
                         "nmm.augment_weight": nm.augment_weight >= 0,
                         "nmm.neighbour_weight": nm.neighbour_weight >= 0,
                         "nmm.entropy_weight": nm.entropy_weight >= 0,
                         "nmm.weights_momentum": 0 <= nm.weights_momentum < 1,
                         "nmm.num_neighbours": not use_neighbours or 1 <= nm.num_neighbours < n,
                         "nmm.neighbour_pca_dim": nm.neighbour_pca_dim >= 0,
                         "nmm.remine_epochs": nm.remine_epochs >= 0,
                         "nmm.head_hidden": nm.head_hidden >= 0,
                         "nmm.num_heads": nm.num_heads >= 1,
                         "nmm.head_loss_momentum": 0 <= nm.head_loss_momentum < 1,
                         "optim.epochs": config.optim.epochs >= 1,
                         "batch_size": 2 <= config.batch_size <= n}, f"N = {n} examples")
    choices = {"normalize": ("batch", "none"), "mixture_weights": ("fixed", "estimated"),
               "consistency": ("dot", "cross_entropy"),
               "neighbour_space": ("pixels", "backbone", "none")}
    for key, allowed in choices.items():
        if nm[key] not in allowed:
            raise ConfigError(f"config.nmm.{key}={nm[key]!r}: use one of {', '.join(allowed)}")
    if nm.em_weight + nm.augment_weight + nm.neighbour_weight == 0:
        raise ConfigError("config.nmm: em_weight, augment_weight and neighbour_weight are all 0; "
                          "nothing would be trained")
    if not data_spec.is_image:
        raise ConfigError("the neural mixture model trains a CNN on images; the data are "
                          "feature vectors")

    backbone = models.make_backbone(config.model)
    head = MixtureHead(num_components=k, hidden=nm.head_hidden, normalize=nm.normalize,
                       num_heads=num_heads)
    height, width = data_spec.input_shape[:2]
    color = data_spec.input_shape[-1] == 3
    log_normalizer = float(nm.log_normalizer)
    estimate_weights = nm.mixture_weights == "estimated"

    def init(rng, x):
        k_backbone, k_head = jax.random.split(rng)
        backbone_params, backbone_state = backbone.init(k_backbone, x)
        head_vars = head.init(k_head, jnp.zeros((2, backbone.feature_dim)))
        params = {"backbone": backbone_params, "head": head_vars["params"]}
        model_state = {"backbone": backbone_state,
                       "head": {c: v for c, v in head_vars.items() if c != "params"}}
        state = NMMState(log_weights=jnp.full((num_heads, k), -math.log(k), float_dtype()),
                         head_losses=jnp.zeros((num_heads,), float_dtype()),
                         neighbours=jnp.full((n, num_neighbours), -1, jnp.int32),
                         iteration=jnp.zeros((), jnp.int32))
        return params, model_state, state

    def forward(params, model_state, x, train):
        """x [B, ...] -> (backbone features [B, D], s o~ [B, H * K], model_state)."""
        h, backbone_state = backbone.apply(params["backbone"], model_state["backbone"], x, train)
        variables = {"params": params["head"], **model_state["head"]}
        if train:
            o, updates = head.apply(variables, h, train=True, mutable=["batch_stats"])
            head_state = {**model_state["head"], **updates}
        else:
            o, head_state = head.apply(variables, h, train=False), model_state["head"]
        return h, nm.sigmoid_scale * o, {"backbone": backbone_state, "head": head_state}

    def view(x, rng):
        return augment.augment_view(x, rng, out_size=(height, width), scale=tuple(nm.crop_scale),
                                    flip=nm.flip, max_degrees=nm.max_degrees, color=color)

    def head_loss(log_densities, log_weights):
        """One head: log_densities [V, B, K] (view 0 the anchor), log_weights [K] ->
        (loss, metrics, batch mass [K])."""
        e_steps = [jcluster.responsibilities(ld, log_weights) for ld in log_densities]
        q_em = jnp.mean(jnp.stack([
            jcluster.expected_complete_log_likelihood(e.responsibilities, ld, log_weights)
            for e, ld in zip(e_steps, log_densities)]))
        # Posteriors with gradient for the consistency terms (the E-step's gamma has none).
        posteriors = [e.responsibilities for e in e_steps]
        loss = -nm.em_weight * q_em
        metrics = {"expected_log_lik": q_em,
                   "log_lik": jnp.mean(e_steps[0].log_likelihood)}
        v = 1
        if nm.augment_weight > 0:
            augment_term = consistency_loss(posteriors[0], posteriors[v], nm.consistency)
            loss = loss + nm.augment_weight * augment_term
            metrics["augment_consistency"] = augment_term
            v += 1
        if use_neighbours:
            neighbour_term = consistency_loss(posteriors[0], posteriors[v], nm.consistency)
            loss = loss + nm.neighbour_weight * neighbour_term
            metrics["neighbour_consistency"] = neighbour_term
        entropy = mean_entropy(posteriors[0])
        loss = loss - nm.entropy_weight * entropy
        gamma = jax.lax.stop_gradient(posteriors[0])
        mass = jnp.mean(gamma, axis=0)
        metrics.update(mass_entropy_over_log_k=entropy / math.log(k),
                       max_cluster_mass_times_k=jnp.max(mass) * k,
                       mean_max_posterior=jnp.mean(jnp.max(gamma, -1)),
                       clusters_won=jnp.sum(jnp.max(jax.nn.one_hot(jnp.argmax(gamma, -1), k), 0)))
        return loss, metrics, mass

    def loss_fn(params, model_state, cluster, batch, rng):
        k_anchor, k_second, k_neighbour = jax.random.split(rng, 3)
        x = batch["x"]
        views = [view(x, k_anchor) if nm.augment_anchor else augment.to_float(x)]
        if nm.augment_weight > 0:
            views.append(view(x, k_second))
        if use_neighbours:
            views.append(view(batch["neighbour_x"], k_neighbour))
        b = x.shape[0]
        # All views in one forward pass: one set of batch statistics, as the densities share them.
        _, logits, model_state = forward(params, model_state, jnp.concatenate(views), True)
        log_densities = jcluster.sigmoid_log_densities(logits, log_normalizer)
        # [V * B, H * K] -> [H, V, B, K]: every head is a mixture of its own.
        log_densities = log_densities.reshape(len(views), b, num_heads, k).transpose(2, 0, 1, 3)
        losses, head_metrics, masses = jax.vmap(head_loss)(log_densities, cluster.log_weights)
        selected = cluster.selected_head
        metrics = {name: value[selected] for name, value in head_metrics.items()}
        if num_heads > 1:
            metrics.update(selected_head=selected, selected_head_loss=losses[selected])
        outputs = {"mass": masses, "head_losses": jax.lax.stop_gradient(losses)}
        return jnp.mean(losses), (model_state, metrics, outputs)

    def update_state(cluster, batch, outputs, rng):
        del batch, rng
        log_weights = cluster.log_weights
        if estimate_weights:
            weights = (nm.weights_momentum * jnp.exp(log_weights)
                       + (1 - nm.weights_momentum) * outputs["mass"])
            log_weights = jnp.log(jnp.clip(weights, 1e-8))
        # The first step's losses start the averages (no bias towards the initial zeros).
        m = jnp.where(cluster.iteration == 0, 0.0, nm.head_loss_momentum)
        head_losses = m * cluster.head_losses + (1 - m) * outputs["head_losses"]
        cluster = cluster._replace(log_weights=log_weights, head_losses=head_losses,
                                   iteration=cluster.iteration + 1)
        return cluster, {"min_weight_times_k":
                         jnp.exp(jnp.min(log_weights[cluster.selected_head])) * k}

    def embed(params, model_state, x):
        h, logits, _ = forward(params, model_state, x, train=False)
        return jnp.concatenate([logits, h.astype(logits.dtype)], axis=-1)

    def assign(params, cluster, feats):
        del params
        selected = cluster.selected_head
        logits = jax.lax.dynamic_slice_in_dim(feats, selected * k, k, axis=1)
        log_densities = jcluster.sigmoid_log_densities(logits, log_normalizer)
        gamma = jcluster.responsibilities(log_densities,
                                          cluster.log_weights[selected]).responsibilities
        labels = jnp.argmax(log_densities, -1).astype(jnp.int32)
        return labels, jnp.take_along_axis(gamma, labels[:, None], axis=1)[:, 0]

    def recluster(params, cluster, context):
        feats, first, inputs = context.features, context.first, context.inputs
        if nm.neighbour_space == "pixels":
            if not first:
                return params, cluster, {}
            neighbours = mine_neighbours(inputs, num_neighbours, nm.neighbour_pca_dim)
        else:
            neighbours = mine_neighbours(np.asarray(feats)[:, num_heads * k:], num_neighbours)
        # Share of the neighbour lists that is new (1 at the first mining).
        kept = jnp.any(neighbours[:, :, None] == cluster.neighbours[:, None, :], axis=-1)
        changed = 1.0 - float(jnp.mean(kept))
        return params, cluster._replace(neighbours=neighbours), {"neighbours_changed": changed}

    remine_every = (nm.remine_epochs * steps_per_epoch
                    if use_neighbours and nm.neighbour_space == "backbone" else 0)
    tx = optim.make(config.optim, num_steps)
    phases = (Phase(name="nmm", num_steps=num_steps, tx=tx, loss_fn=loss_fn,
                    recluster_every=remine_every, recluster_at_start=use_neighbours,
                    cluster_update=update_state),)
    return Method(init=init, phases=phases, embed=embed, assign=assign,
                  recluster=recluster if use_neighbours else None, done=lambda cluster: False,
                  assignment_rule=ASSIGNMENT_RULE,
                  example_axes=NMMState(log_weights=None, head_losses=None, neighbours=0,
                                        iteration=None),
                  sampler=(lambda cluster: SamplePlan(neighbours=cluster.neighbours))
                  if use_neighbours else None)
