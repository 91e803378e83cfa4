"""CliqueCNN (Bautista, Sanakoyeu, Sutter & Ommer, NeurIPS 2016): similarity learning from compact
cliques, trained as a sequence of clique-categorisation tasks.

Every round (``cliquecnn.round_epochs`` epochs; the first before any step):
  1. similarities: round 0 from the initial features (``init_features``: HOG-LDA, PCA-whitened
     pixels, or the untrained network), later rounds from the trunk's features z-scored per
     dimension (cosine of z-scores: the correlation the authors use; with
     ``model.output_relu=False`` the features before the dense layer's ReLU, as the authors'
     fc7, and :class:`CliqueHead` applies the ReLU), reduced by PCA to
     ``pca_dim`` and L2-normalised; their k-NN lists (``cluster.knn``, never an N x N matrix);
     with ``mirror_match`` (the paper's) every similarity is the largest over mirroring either
     image (features of the images and of their mirror images, :mod:`jclust.cluster.views`);
  2. compact cliques of ``clique_size`` (complete linkage, purified), grown batch-wise with the
     dissimilar-seed rule (:func:`jclust.cluster.build_cliques`); from round 1 on, grown with the
     Student-t test (:func:`jclust.cluster.grow_cliques`, up to ``grow_max_size`` members);
  3. **cliques disjoint** (a jclust choice: every sample trains on one label): initial batches are
     built in sequential chunks that see the samples taken before them, the rest of any overlap
     goes to the clique of lowest index, and a clique left with one member is dropped;
  4. the round's batches pre-sampled (:func:`jclust.cluster.sample_clique_batches`):
     ``cliques_per_step`` cliques x ``samples_per_clique`` samples (tiled or subsampled), random
     or with the triplet check, as many batches as the round has steps; they are the round's
     example order, kept in the checkpointed state;
  5. the head (one logit per clique) re-initialised: ``head_init="imprint"`` (a jclust choice,
     weight imprinting after Qi, Brown & Lowe 2018) sets clique c's weights to its members' mean
     trunk feature (training mode, no augmentation), centred and scaled so the logit is
     ``imprint_scale`` x the cosine with it;
     ``"random"`` draws them (normal, ``head_init_std``) as the authors do. A random head over a
     thousand cliques, each in about 1 % of a round's batches, learns almost nothing in the one
     epoch per round a CPU allows (measured on Fashion-MNIST: loss ln 1000 after 400 steps).
Between rounds the network minimises the cross-entropy of the clique labels on augmented views,
over all cliques (``loss="global"``, the authors' released models) or over the batch's cliques
(``loss="in_batch"``).

Cliques are CliqueCNN's; K clusters are not. For ACC/NMI/ARI, ``jclust.predict`` and the pictures,
the trainer's k-means probe (as for DeepCluster) clusters the trunk's features with K =
``num_clusters``: a jclust addition, documented as the assignment rule.
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
from jclust.config_lib import ConfigError, check_ranges
from jclust.methods import losses
from jclust.methods.base import DataSpec, Method, Phase, SamplePlan
from jclust.methods.common import (augmented_logits, check_cnn_config, init_backbone_and_head,
                                   steps_per_epoch)
from jclust.methods.cliquecnn_report import check_enough_cliques, collapse_warning, round_report
from jclust.methods.cliquecnn_space import Similarity, round_space
from jclust.methods.evaluation import kmeans_probe
from jclust.precision import cast_floats, float_dtype

ASSIGNMENT_RULE = ("trunk features whitened and L2-normalised by the PCA of the latest evaluation, "
                   "then the evaluation centroid (spherical k-means, K = num_clusters) of largest "
                   "cosine similarity; confidence = that cosine similarity (clustering the learned "
                   "embedding is jclust's addition to CliqueCNN)")
INIT_FEATURES = ("hog_lda", "pca_whiten", "network")
LOSSES = ("global", "in_batch")
SAMPLING = ("random", "heuristic")
HEAD_INITS = ("imprint", "random")


class CliqueCNNState(NamedTuple):
    """Clustering state of CliqueCNN (all of it checkpointed).

    Attributes:
      clique_labels: [N] int32, each sample's clique (-1: in none).
      order: [steps per round x batch] int32, the round's pre-sampled batches back to back.
      round: [] int32, rounds done.
    """
    clique_labels: jax.Array
    order: jax.Array
    round: jax.Array


def clique_loss(logits: jax.Array, labels: jax.Array, *, in_batch: bool
                ) -> tuple[jax.Array, jax.Array]:
    """(mean cross-entropy, accuracy) of clique labels [B] under logits [B, C]: over all C cliques
    (the released models' global softmax) or, ``in_batch``, over the cliques present in the batch
    (one categorisation task per batch; the other logits are masked)."""
    if in_batch:
        present = jnp.zeros((logits.shape[-1],), bool).at[labels].set(True)
        logits = jnp.where(present[None, :], logits, jnp.finfo(logits.dtype).min)
    accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(float_dtype()))
    return losses.cross_entropy(logits, labels), accuracy


@functools.partial(jax.jit, static_argnums=0)
def _train_mode_apply(backbone: models.Backbone, params, model_state, x):
    return backbone.apply(params, model_state, x, train=True)[0]


def train_mode_features(backbone: models.Backbone, backbone_params, images: np.ndarray,
                        batch_size: int) -> jax.Array:
    """Trunk features [M, D] of images in training mode (statistics of each batch of
    ``batch_size``, as the head sees them in training; no augmentation): in evaluation mode an
    untrained trunk's running statistics are the initial ones, and imprinting from those misleads
    the head."""
    shapes = jax.eval_shape(backbone.init, jax.random.PRNGKey(0), images[:1])[1]
    model_state = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
    return jnp.concatenate([_train_mode_apply(backbone, backbone_params, model_state,
                                              images[i:i + batch_size])
                            for i in range(0, len(images), batch_size)])


def imprinted_head(features, labels, num_cliques: int, scale: float, random_head: dict) -> dict:
    """Dense head params {"kernel" [D, C], "bias" [C]} whose logit for clique c is
    ``scale`` x cos(h - mu, m_c - mu) x |h - mu| / r: mu the mean feature, m_c the mean of clique
    c's members, r the root-mean-square |h - mu| over the data. Cliques without members keep
    ``random_head``'s columns."""
    x = jnp.asarray(features, float_dtype())
    mu = jnp.mean(x, axis=0)
    centred = x - mu
    r = jnp.sqrt(jnp.mean(jnp.sum(centred * centred, axis=1)))
    labels = jnp.asarray(labels)
    member = labels >= 0
    sums = jax.ops.segment_sum(jnp.where(member[:, None], centred, 0.0),
                               jnp.where(member, labels, 0), num_segments=num_cliques)
    norms = jnp.linalg.norm(sums, axis=1, keepdims=True)
    directions = sums / jnp.maximum(norms, 1e-12)
    kernel = (scale / jnp.maximum(r, 1e-12)) * directions.T
    has = norms[:, 0] > 0  # a clique without members sums to zero
    kernel = jnp.where(has[None, :], kernel, random_head["kernel"])
    bias = jnp.where(has, -(mu @ kernel), random_head["bias"])
    return {"kernel": kernel.astype(random_head["kernel"].dtype),
            "bias": bias.astype(random_head["bias"].dtype)}


def imprinted_round_head(backbone: models.Backbone, backbone_params, inputs: np.ndarray,
                         labels, random_head: dict, *, scale: float, batch_size: int,
                         relu_input: bool = False) -> dict:
    """:func:`imprinted_head` of a round's clique ``labels`` [N] (-1: in none) from the training
    mode features of the members' ``inputs`` (after a ReLU with ``relu_input``: what
    :class:`CliqueHead` sees); the head's width is ``random_head``'s."""
    labels = np.asarray(labels)
    members = np.flatnonzero(labels >= 0)
    features = train_mode_features(backbone, backbone_params, np.asarray(inputs)[members],
                                   batch_size)
    if relu_input:
        features = jax.nn.relu(features)
    return imprinted_head(features, labels[members], random_head["bias"].shape[0], scale,
                          random_head)


class CliqueHead(models.nn.Module):
    """The clique classifier: linear (params "kernel" [D, C], "bias" [C], as ``nn.Dense``) on
    the trunk's features, after a ReLU with ``relu_input`` (a trunk whose representation is its
    dense layer before the ReLU: the head sees ReLU(fc) as AlexNet's classifier sees ReLU(fc7),
    while similarities use the pre-ReLU features, as the authors' do)."""
    num_cliques: int
    init_std: float = 0.01
    relu_input: bool = False

    @models.nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        kernel = self.param("kernel", models.nn.initializers.normal(self.init_std),
                            (h.shape[-1], self.num_cliques))
        bias = self.param("bias", models.nn.initializers.zeros, (self.num_cliques,))
        return self.inputs(h) @ kernel + bias

    def inputs(self, h: jax.Array) -> jax.Array:
        return models.nn.relu(h) if self.relu_input else h


class CliqueRecipe(NamedTuple):
    """How a round builds its cliques and batches: the ``cliquecnn`` config keys of the same
    names (module docstring, steps 2-4)."""
    num_initial_batches: int = 100
    cliques_per_batch: int = 10
    clique_size: int = 8
    seed_fraction: float = 0.05
    purify_passes: int = 8
    build_chunk: int = 25
    grow: bool = True
    grow_max_size: int = 16
    grow_p_value: float = 1e-3
    grow_null_samples: int = 500
    cliques_per_step: int = 8
    samples_per_clique: int = 16
    sampling: str = "random"


def round_cliques(key: jax.Array, space: Similarity, round_index: int, recipe: CliqueRecipe, *,
                  num_batches: int):
    """A round's (clique labels [N], cliques, pre-sampled batches) in the similarity ``space``:
    disjoint cliques, grown from round 1 on, and ``num_batches`` batches of them."""
    k_build, k_grow, k_batches = jax.random.split(key, 3)
    labels, cliques = jcluster.disjoint_cliques(
        k_build, space.features, space.neighbours,
        num_initial_batches=recipe.num_initial_batches,
        cliques_per_batch=recipe.cliques_per_batch, clique_size=recipe.clique_size,
        seed_fraction=recipe.seed_fraction, purify_passes=recipe.purify_passes,
        chunk=recipe.build_chunk)
    if recipe.grow and round_index > 0 and recipe.grow_max_size > recipe.clique_size:
        grown = jcluster.grow_cliques(k_grow, cliques, space.features, space.neighbours,
                                      null_samples=recipe.grow_null_samples,
                                      p_value=recipe.grow_p_value,
                                      max_size=recipe.grow_max_size)
        labels = jcluster.grown_labels(labels, grown)
        cliques = jcluster.cliques_from_labels(labels, cliques.members.shape[0],
                                               recipe.grow_max_size, space.features)
    check_enough_cliques(cliques, recipe.cliques_per_step, round_index)
    batches = jcluster.sample_clique_batches(
        k_batches, cliques, space.features, num_batches=num_batches,
        cliques_per_batch=recipe.cliques_per_step,
        samples_per_clique=recipe.samples_per_clique, mode=recipe.sampling)
    return labels, cliques, batches


def make(*, backbone: models.Backbone, image_shape: Sequence[int], num_examples: int,
         num_clusters: int, tx: optax.GradientTransformation, num_steps: int, round_steps: int,
         init_features: str = "hog_lda", pca_dim: int = 64, num_neighbours: int = 64,
         num_initial_batches: int = 500, cliques_per_batch: int = 10, clique_size: int = 8,
         seed_fraction: float = 0.05, purify_passes: int = 8, build_chunk: int = 25,
         grow: bool = True, grow_max_size: int = 16, grow_p_value: float = 1e-3,
         grow_null_samples: int = 500, cliques_per_step: int = 8, samples_per_clique: int = 16,
         sampling: str = "random", loss: str = "global", head_init: str = "imprint",
         imprint_scale: float = 3.0, head_init_std: float = 0.01,
         crop_scale: tuple[float, float] = (0.5, 1.0), flip: bool = True,
         rotation_degrees: float = 0.0, collapse_gap: float = 0.05, eval_pca_dim: int = 32,
         eval_n_init: int = 10, relu_input: bool = False, similarity_dim: int = 128,
         similarity_power: float = 0.5, mirror_match: bool = False,
         max_input_power: float = 0.0) -> Method:
    """CliqueCNN on ``backbone`` with ``tx`` (params "backbone" and "head") for ``num_steps`` steps
    in rounds of ``round_steps`` (whole epochs, the first from step 0); ``relu_input``: the head
    applies the ReLU the trunk left out (``model.output_relu=False``); ``max_input_power``: the
    loss times :func:`jclust.optim.input_power_scale`. The other arguments are the ``cliquecnn``
    config keys of the same names (docs/methods.md)."""
    n, feature_dim = num_examples, backbone.feature_dim
    batch_size = cliques_per_step * samples_per_clique
    recipe = CliqueRecipe(num_initial_batches, cliques_per_batch, clique_size, seed_fraction,
                          purify_passes, build_chunk, grow, grow_max_size, grow_p_value,
                          grow_null_samples, cliques_per_step, samples_per_clique, sampling)
    head = CliqueHead(num_initial_batches * cliques_per_batch, head_init_std, relu_input)

    def init(rng, x):
        params, model_state = init_backbone_and_head(rng, backbone, head, x)
        state = CliqueCNNState(clique_labels=jnp.full((n,), -1, jnp.int32),
                               order=jnp.zeros((round_steps * batch_size,), jnp.int32),
                               round=jnp.zeros((), jnp.int32))
        return params, model_state, state

    def loss_fn(params, model_state, cluster, batch, rng):
        logits, model_state = augmented_logits(
            backbone, head, params, model_state, batch["x"], rng, image_shape=image_shape,
            crop_scale=crop_scale, flip=flip, rotation_degrees=rotation_degrees)
        labels = cluster.clique_labels[batch["index"]]
        value, accuracy = clique_loss(logits, labels, in_batch=loss == "in_batch")
        scale = optim.input_power_scale(models.flatten_inputs(batch["x"]), max_input_power)
        return value * scale, (model_state, {"clique_acc": accuracy, "rate_scale": scale})

    def embed(params, model_state, x):
        return backbone.apply(params["backbone"], model_state["backbone"], x, train=False)[0]

    def recluster(params, cluster, context):
        k_build, k_head = jax.random.split(context.key)
        space, spread = round_space(int(cluster.round), context, init_features=init_features,
                                    pca_dim=pca_dim, num_neighbours=num_neighbours,
                                    mirror_match=mirror_match)
        labels, cliques, batches = round_cliques(
            k_build, space, int(cluster.round), recipe, num_batches=round_steps)
        info = round_report(cliques, space.features, batches, n)
        info["round"], info["feature_spread"] = int(cluster.round), spread
        if warning := collapse_warning(info, collapse_gap):
            info["warning"] = warning
        head_params = head.init(k_head, jnp.zeros((1, feature_dim)))["params"]
        if head_init == "imprint":
            head_params = imprinted_round_head(backbone, params["backbone"], context.inputs,
                                               labels, head_params, scale=imprint_scale,
                                               batch_size=batch_size, relu_input=relu_input)
        cluster = CliqueCNNState(clique_labels=jnp.asarray(labels, jnp.int32),
                                 order=jnp.asarray(batches.indices.ravel(), jnp.int32),
                                 round=cluster.round + 1)
        return {**params, "head": cast_floats(head_params)}, cluster, info

    phases = (Phase(name="cliquecnn", num_steps=num_steps, tx=tx, loss_fn=loss_fn,
                    recluster_every=round_steps, recluster_at_start=True),)
    return Method(init=init, phases=phases, embed=embed, assign=None, recluster=recluster,
                  done=lambda cluster: False, assignment_rule=ASSIGNMENT_RULE,
                  sampler=lambda cluster: SamplePlan(order=cluster.order),
                  training_labels=lambda params, cluster, features: cluster.clique_labels,
                  evaluation=kmeans_probe(num_clusters, pca_dim=eval_pca_dim, n_init=eval_n_init),
                  example_axes=CliqueCNNState(clique_labels=0, order=None, round=None),
                  similarity=lambda evaluation, features: jcluster.power_whiten(
                      features, similarity_dim, similarity_power))


def from_config(config: ml_collections.ConfigDict, data_spec: DataSpec) -> Method:
    """CliqueCNN as ``config`` sets it (sections ``model``, ``optim``, ``cliquecnn``)."""
    cc = config.cliquecnn
    for key, value, allowed in (("init_features", cc.init_features, INIT_FEATURES),
                                ("loss", cc.loss, LOSSES), ("sampling", cc.sampling, SAMPLING),
                                ("head_init", cc.head_init, HEAD_INITS)):
        if value not in allowed:
            raise ConfigError(f"config.cliquecnn.{key}={value!r}; use one of {allowed}")
    n = data_spec.num_examples
    per_step = cc.cliques_per_step * cc.samples_per_clique
    if config.batch_size != per_step:
        raise ConfigError(f"config.batch_size={config.batch_size} must equal "
                          f"cliquecnn.cliques_per_step x cliquecnn.samples_per_clique = "
                          f"{cc.cliques_per_step} x {cc.samples_per_clique} = {per_step}")
    check_cnn_config(config, data_spec, "CliqueCNN", {
        "cliquecnn.num_neighbours": 1 <= cc.num_neighbours < n,
        "cliquecnn.clique_size": 2 <= cc.clique_size <= cc.num_neighbours,
        "cliquecnn.num_initial_batches": cc.num_initial_batches >= 1,
        "cliquecnn.cliques_per_batch": cc.cliques_per_batch >= 1,
        "cliquecnn.cliques_per_step": 1 <= cc.cliques_per_step
        <= cc.num_initial_batches * cc.cliques_per_batch,
        "cliquecnn.samples_per_clique": cc.samples_per_clique >= 1,
        "cliquecnn.seed_fraction": 0 < cc.seed_fraction <= 1,
        "cliquecnn.round_epochs": 1 <= cc.round_epochs <= config.optim.epochs,
        "cliquecnn.grow_max_size": cc.grow_max_size >= cc.clique_size,
        "cliquecnn.grow_p_value": 0 < cc.grow_p_value < 1,
        "cliquecnn.grow_null_samples": 3 <= cc.grow_null_samples,
        "cliquecnn.pca_dim": cc.pca_dim >= 1,
        "cliquecnn.build_chunk": cc.build_chunk >= 1,
        "cliquecnn.max_input_power": cc.max_input_power >= 0})
    if cc.cliques_per_batch * cc.clique_size > n:
        raise ConfigError(
            f"cliquecnn: an initial batch of {cc.cliques_per_batch} disjoint cliques of "
            f"{cc.clique_size} needs more than the {n} examples; lower "
            f"cliquecnn.cliques_per_batch")
    backbone = models.make_backbone(config.model)
    check_ranges(config, {"cliquecnn.eval_pca_dim": 1 <= cc.eval_pca_dim <= backbone.feature_dim,
                          "cliquecnn.similarity_dim": 1 <= cc.similarity_dim
                          <= backbone.feature_dim},
                 f"representation size {backbone.feature_dim}")
    check_ranges(config, {"cliquecnn.similarity_power": 0 <= cc.similarity_power <= 1},
                 "it must lie in [0, 1]")
    epoch = steps_per_epoch(config, data_spec)
    num_steps = config.optim.epochs * epoch
    tx = optim.make(config.optim, num_steps, rest="backbone",
                    groups={"head": optim.Group(weight_decay=False, momentum=False)})
    return make(backbone=backbone, image_shape=data_spec.input_shape, num_examples=n,
                num_clusters=config.num_clusters, tx=tx, num_steps=num_steps,
                round_steps=cc.round_epochs * epoch, init_features=cc.init_features,
                pca_dim=cc.pca_dim, num_neighbours=cc.num_neighbours,
                num_initial_batches=cc.num_initial_batches,
                cliques_per_batch=cc.cliques_per_batch, clique_size=cc.clique_size,
                seed_fraction=cc.seed_fraction, purify_passes=cc.purify_passes,
                build_chunk=cc.build_chunk, grow=cc.grow, grow_max_size=cc.grow_max_size,
                grow_p_value=cc.grow_p_value, grow_null_samples=cc.grow_null_samples,
                cliques_per_step=cc.cliques_per_step, samples_per_clique=cc.samples_per_clique,
                sampling=cc.sampling, loss=cc.loss, head_init=cc.head_init,
                imprint_scale=cc.imprint_scale, head_init_std=cc.head_init_std,
                crop_scale=tuple(cc.crop_scale), flip=cc.flip,
                rotation_degrees=cc.rotation_degrees, collapse_gap=cc.collapse_gap,
                eval_pca_dim=cc.eval_pca_dim, eval_n_init=cc.eval_n_init,
                relu_input=not config.model.get("output_relu", True),
                similarity_dim=cc.similarity_dim, similarity_power=cc.similarity_power,
                mirror_match=cc.mirror_match,
                max_input_power=optim.input_power_cap(config.optim.optimizer,
                                                      cc.max_input_power))
