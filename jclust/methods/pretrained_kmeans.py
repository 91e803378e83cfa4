"""Clustering a frozen pretrained network's features: spherical k-means on the PCA-whitened layers,
refined by a vote of each example's nearest neighbours.

Input: the features of one or more layers of a frozen pretrained network (``data.backbone``),
concatenated [N, sum_l D_l], or any feature vectors (``npz:``). No gradient step: the whole
method is the fit of its evaluation, run by the trainer on the features of every example.

Fit:
  1. per layer: every feature standardised with the data's mean and standard deviation, the
     layer's block L2-normalised (the layers weigh the same whatever their width and scale), the
     blocks concatenated;
  2. PCA-whitened to ``pca_dim`` dimensions and L2-normalised (:func:`jclust.cluster.whiten`:
     DeepCluster's evaluation features; the whitening spreads what the first components of a
     pretrained network's features, dominated by image statistics, would hide);
  3. spherical k-means with K = ``num_clusters`` (``n_init`` restarts);
  4. ``vote_rounds`` - 1 times, every example takes the cluster most of its ``num_neighbours``
     most similar fitted examples (cosine; itself among them) hold: a neighbour-consistency
     stage, as SCAN's neighbours but without a network to train. k-means cuts the feature space
     with planes; the vote lets a cluster follow the curved region its neighbours span.

Assignment rule, of the fitted examples and of new images alike: the same vote among the
``num_neighbours`` most similar references (the fitted examples' whitened features under the
clusters the fit left), so that the clusters a run reports are the fit's ``vote_rounds``-th round;
confidence = the chosen cluster's share of the votes. A tie goes to the cluster whose voters are
nearer (a cluster id carries no order). ``num_neighbours=1`` is k-means alone (a fitted example is
its own nearest reference; a new image takes its nearest one's cluster).

Measured (BENCHMARKS.md, "The best method past 0.75"): EfficientNet-Lite0 (ImageNet) on
Fashion-MNIST at 96 x 96, group 5 and the pooled head, whitened to 64: k-means alone 0.75, with
the vote 0.76.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from jclust import cluster as jcluster
from jclust import features
from jclust.cluster import l2_normalize
from jclust.config_lib import ConfigError, check_ranges
from jclust.methods import common
from jclust.methods.base import DataSpec, Evaluation, Method
from jclust.methods.triangle import layer_slices, standardisation
from jclust.metrics import retrieval
from jclust.precision import float_dtype

ASSIGNMENT_RULE = ("the features of each layer standardised and L2-normalised, concatenated, "
                   "PCA-whitened and L2-normalised; the cluster most of the num_neighbours most "
                   "similar fitted examples hold (their clusters: spherical k-means, then "
                   "vote_rounds - 1 rounds of the same vote), a tie to the nearer voters; "
                   "confidence = that cluster's share of the votes")


class PretrainedKMeansState(NamedTuple):
    """What the fit learns (the trainer keeps it in ``TrainState.eval``; predict applies it).

    Attributes:
      mean, scale: [D] the standardisation of the input features (scale 1 where constant).
      whitening_mean: [D] and projection [D, pca_dim]: :func:`jclust.cluster.fit_whitening`'s.
      references: [N, pca_dim] the fitted examples' whitened unit features.
      labels: [N] int32 their clusters after the vote.
    """
    mean: jax.Array
    scale: jax.Array
    whitening_mean: jax.Array
    projection: jax.Array
    references: jax.Array
    labels: jax.Array


def layer_normalised(x: jax.Array, mean: jax.Array, scale: jax.Array,
                     layer_widths: Sequence[int]) -> jax.Array:
    """features [B, sum D_l] -> standardised, each layer's block of unit L2 norm, concatenated."""
    x = (x.astype(float_dtype()) - mean) / scale
    return jnp.concatenate([l2_normalize(x[:, part]) for part in layer_slices(layer_widths)], 1)


def whitened(state: PretrainedKMeansState, x: jax.Array,
             layer_widths: Sequence[int]) -> jax.Array:
    """features [B, sum D_l] -> the whitened unit features [B, pca_dim] the clusters live in."""
    z = layer_normalised(x, state.mean, state.scale, layer_widths)
    return jcluster.whiten(z, state.whitening_mean, state.projection)


def neighbour_vote(neighbour_labels: jax.Array, num_clusters: int) -> tuple[jax.Array, jax.Array]:
    """[B, k] clusters of each example's neighbours, nearest first -> (the most frequent cluster
    [B] int32, its share of the k votes [B]). A tie goes to the cluster whose voters are nearer:
    the voter of rank r adds (k - r) / (k (k + 1)) to its cluster's count, at most 1/2 in all, so
    it never outweighs one vote."""
    b, k = neighbour_labels.shape
    rows = jnp.broadcast_to(jnp.arange(b)[:, None], (b, k))
    votes = 1.0 + jnp.arange(k, 0, -1, dtype=jnp.float32) / (k * (k + 1))
    scores = jnp.zeros((b, num_clusters), jnp.float32).at[rows, neighbour_labels].add(
        jnp.broadcast_to(votes, (b, k)))
    labels = jnp.argmax(scores, axis=1).astype(jnp.int32)
    return labels, jnp.floor(jnp.max(scores, axis=1)) / k  # the tie-breaks add < 1


def pretrained_kmeans_evaluation(layer_widths: Sequence[int], num_examples: int,
                                 num_clusters: int, *, pca_dim: int, n_init: int,
                                 num_neighbours: int, vote_rounds: int) -> Evaluation:
    """The method's whole fit and assignment rule as an :class:`Evaluation`."""
    total = int(sum(layer_widths))

    def init(feature_dim: int) -> PretrainedKMeansState:
        del feature_dim  # == total, checked by from_config
        dtype = float_dtype()
        return PretrainedKMeansState(
            mean=jnp.zeros((total,), dtype), scale=jnp.ones((total,), dtype),
            whitening_mean=jnp.zeros((total,), dtype),
            projection=jnp.zeros((total, pca_dim), dtype),
            references=jnp.zeros((num_examples, pca_dim), dtype),
            labels=jnp.zeros((num_examples,), jnp.int32))

    def fit(features, cluster, key) -> PretrainedKMeansState:
        del cluster
        x = jnp.asarray(features, float_dtype())
        mean, scale = standardisation(x)
        whitening_mean, projection = jcluster.fit_whitening(
            layer_normalised(x, mean, scale, layer_widths), pca_dim)
        state = init(total)._replace(mean=mean, scale=scale, whitening_mean=whitening_mean,
                                     projection=projection)
        references = whitened(state, x, layer_widths)
        labels = jcluster.kmeans(references, num_clusters, key=key, n_init=n_init,
                                 spherical=True).labels.astype(jnp.int32)
        if vote_rounds > 1:
            neighbours = retrieval.nearest_neighbours(references, references,
                                                      num_neighbours).indices
            for _ in range(vote_rounds - 1):
                labels, _ = neighbour_vote(labels[neighbours], num_clusters)
        return state._replace(references=references, labels=labels)

    def assign(state: PretrainedKMeansState, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        neighbours = retrieval.nearest_neighbours(state.references, whitened(state, x, layer_widths),
                                                  num_neighbours).indices
        return neighbour_vote(state.labels[neighbours], num_clusters)

    return Evaluation(init=init, fit=fit, assign=assign)


def make(*, layer_widths: Sequence[int], num_examples: int, num_clusters: int, pca_dim: int = 64,
         n_init: int = 10, num_neighbours: int = 20, vote_rounds: int = 3) -> Method:
    """Whitened spherical k-means and a neighbour vote on frozen features, as a :class:`Method`
    without training steps.

    Args:
      layer_widths: D_l of each layer, in the order the features are concatenated.
      num_examples: N, the examples fitted (the reference set of the assignment rule).
      num_clusters: K.
      pca_dim: whitening dimensions, 1 <= pca_dim <= min(N - 1, sum D_l) (near the features'
        rank the last components are noise, scaled up like the others).
      n_init: k-means++ restarts.
      num_neighbours: k of the vote, 1 <= k <= N (1: k-means alone).
      vote_rounds: votes after k-means, the assignment's included (>= 1).
    """
    n, dim = num_examples, int(sum(layer_widths))
    if min(layer_widths) < 1 or not 1 <= pca_dim <= min(n - 1, dim) or n_init < 1 or (
            not 1 <= num_neighbours <= n) or vote_rounds < 1:
        raise ValueError(f"need layer widths >= 1, 1 <= pca_dim <= min(N - 1, D), n_init >= 1, "
                         f"1 <= num_neighbours <= N, vote_rounds >= 1; got {tuple(layer_widths)}, "
                         f"{pca_dim}, {n_init}, {num_neighbours}, {vote_rounds} (N = {n})")

    return common.no_training_method(
        "pretrained_kmeans", assignment_rule=ASSIGNMENT_RULE,
        evaluation=pretrained_kmeans_evaluation(
            layer_widths, num_examples, num_clusters, pca_dim=pca_dim, n_init=n_init,
            num_neighbours=num_neighbours, vote_rounds=vote_rounds),
        similarity=lambda fitted, x: whitened(fitted, jnp.asarray(x), layer_widths))


def from_config(config: ml_collections.ConfigDict, data_spec: DataSpec) -> Method:
    """The ``pretrained_kmeans`` section: ``layer_widths`` (() = those of ``data.backbone.layers``,
    or one layer of every feature), ``pca_dim``, ``n_init``, ``num_neighbours``,
    ``vote_rounds``."""
    section = config.pretrained_kmeans
    if data_spec.is_image or len(data_spec.input_shape) != 1:
        raise ConfigError("pretrained_kmeans clusters feature vectors: set config.data.backbone "
                          "to a pretrained network (or use an npz: source of features), not "
                          f"images of shape {data_spec.input_shape}")
    dim, n = data_spec.input_shape[0], data_spec.num_examples
    spec = features.spec_from_config(config.data.get("backbone"))
    widths = (tuple(section.layer_widths)
              or (tuple(features.resolve(spec).widths.values()) if spec else (dim,)))
    if min(widths) < 1:
        raise ConfigError(f"config.pretrained_kmeans.layer_widths={widths}: every width must be "
                          ">= 1")
    if sum(widths) != dim:
        raise ConfigError(f"config.pretrained_kmeans.layer_widths={widths} sum to {sum(widths)}, "
                          f"but the features have {dim} dimensions")
    check_ranges(config, {"pretrained_kmeans.pca_dim": 1 <= section.pca_dim <= min(n - 1, dim),
                          "pretrained_kmeans.n_init": section.n_init >= 1,
                          "pretrained_kmeans.num_neighbours": 1 <= section.num_neighbours <= n,
                          "pretrained_kmeans.vote_rounds": section.vote_rounds >= 1},
                 f"pca_dim at most min(N - 1, D) = {min(n - 1, dim)}, num_neighbours at most "
                 f"N = {n}, n_init and vote_rounds at least 1")
    return make(layer_widths=widths, num_examples=n, num_clusters=config.num_clusters,
                pca_dim=section.pca_dim, n_init=section.n_init,
                num_neighbours=section.num_neighbours, vote_rounds=section.vote_rounds)
