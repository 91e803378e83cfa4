"""k-means + triangle-encoded deep features (Sitaula, Xiang, Aryal & Lu, "Unsupervised Deep
Features for Privacy Image Classification", PSIVT 2019), with the triangle encoding of Coates,
Lee & Ng (AISTATS 2011).

Input: the features of one or more layers of a frozen pretrained network (``data.backbone``),
concatenated [N, sum_l D_l], or any feature vectors (``npz:``). No gradient step: the whole
method is the fit of its evaluation, run by the trainer on the features of every example.

Fit:
  1. per layer l: standardise every feature with the data's mean and standard deviation, then
     k-means++ with K_l centroids (``codebook_sizes``, ``n_init`` restarts, the best inertia);
  2. every example's triangle code against its layer's centroids, f_k = max(0, mean_j z_j - z_k)
     with z_k the Euclidean distances (:func:`jclust.cluster.triangle_encode`);
  3. each layer's code L2-normalised, the layers concatenated: the fused code, sum_l K_l wide.
     Normalising each block makes the layers weigh the same whatever their K_l and scale (the
     paper fuses by concatenation and does not say how it weighs them);
  4. spherical k-means with K = ``num_clusters`` on the fused codes (``eval_n_init`` restarts).

Assignment rule: the cluster centroid of largest cosine similarity with the example's fused code.
:func:`fused_codes` is the encoder on its own, e.g. for a linear probe of the codes
(``benchmarks/triangle.py``).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jclust import cluster as jcluster
from jclust import features
from jclust.cluster import l2_normalize
from jclust.config_lib import ConfigError
from jclust.methods import common
from jclust.methods.base import DataSpec, Evaluation, Method
from jclust.precision import float_dtype

ASSIGNMENT_RULE = ("the features of each layer standardised and triangle-encoded against that "
                   "layer's k-means codebook, each layer's code L2-normalised and the layers "
                   "concatenated; the cluster centroid (spherical k-means, K = num_clusters, on "
                   "the fused codes) of largest cosine similarity; confidence = that cosine")


class TriangleState(NamedTuple):
    """What the fit learns (the trainer keeps it in ``TrainState.eval``; predict applies it).

    Attributes:
      mean, scale: [D] the standardisation of the input features (scale 1 where constant).
      codebooks: one [K_l, D_l] k-means codebook per layer, on standardised features.
      centroids: [num_clusters, sum_l K_l] unit rows, the clusters of the fused codes.
    """
    mean: jax.Array
    scale: jax.Array
    codebooks: tuple
    centroids: jax.Array


def layer_slices(layer_widths: Sequence[int]) -> list[slice]:
    """The column slice of each layer in the concatenated features."""
    ends = np.cumsum(layer_widths)
    return [slice(int(end - width), int(end)) for width, end in zip(layer_widths, ends)]


def standardisation(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """features [N, D] -> (mean [D], scale [D]): each feature's mean and standard deviation over
    the data, scale 1 where a feature is constant."""
    mean, std = jnp.mean(x, axis=0), jnp.std(x, axis=0)
    return mean, jnp.where(std > 0, std, 1.0)


def fused_codes(state: TriangleState, features: jax.Array,
                layer_widths: Sequence[int]) -> jax.Array:
    """features [B, sum D_l] -> fused triangle codes [B, sum K_l] (each layer's block unit L2)."""
    x = (features.astype(float_dtype()) - state.mean) / state.scale
    blocks = [l2_normalize(jcluster.triangle_encode(x[:, part], codebook))
              for part, codebook in zip(layer_slices(layer_widths), state.codebooks)]
    return jnp.concatenate(blocks, axis=1)


def fit_codebooks(x: jax.Array, layer_widths: Sequence[int], codebook_sizes: Sequence[int],
                  key: jax.Array, *, n_init: int) -> tuple:
    """Per layer, k-means++ on the standardised features x [N, sum D_l] -> ([K_l, D_l], ...)."""
    keys = jax.random.split(key, len(layer_widths))
    return tuple(jcluster.kmeans(x[:, part], size, key=k, n_init=n_init).centroids
                 for part, size, k in zip(layer_slices(layer_widths), codebook_sizes, keys))


def triangle_evaluation(layer_widths: Sequence[int], codebook_sizes: Sequence[int],
                        num_clusters: int, *, n_init: int, eval_n_init: int) -> Evaluation:
    """The method's whole fit and assignment rule as an :class:`Evaluation`."""
    total, codes_width = int(sum(layer_widths)), int(sum(codebook_sizes))

    def init(feature_dim: int) -> TriangleState:
        del feature_dim  # == total, checked by from_config
        dtype = float_dtype()
        return TriangleState(
            mean=jnp.zeros((total,), dtype), scale=jnp.ones((total,), dtype),
            codebooks=tuple(jnp.zeros((size, width), dtype)
                            for size, width in zip(codebook_sizes, layer_widths)),
            centroids=jnp.zeros((num_clusters, codes_width), dtype))

    def fit(features, cluster, key) -> TriangleState:
        del cluster
        x = jnp.asarray(features, float_dtype())
        mean, scale = standardisation(x)
        codebook_key, cluster_key = jax.random.split(key)
        codebooks = fit_codebooks((x - mean) / scale, layer_widths, codebook_sizes, codebook_key,
                                  n_init=n_init)
        state = TriangleState(mean, scale, codebooks, init(total).centroids)
        codes = fused_codes(state, x, layer_widths)
        km = jcluster.kmeans(codes, num_clusters, key=cluster_key, n_init=eval_n_init,
                             spherical=True)
        return state._replace(centroids=km.centroids)

    def assign(state: TriangleState, features: jax.Array) -> tuple[jax.Array, jax.Array]:
        codes = l2_normalize(fused_codes(state, features, layer_widths))
        sims = jnp.dot(codes, state.centroids.T, precision=jax.lax.Precision.HIGHEST)
        return jnp.argmax(sims, -1).astype(jnp.int32), jnp.max(sims, -1)

    return Evaluation(init=init, fit=fit, assign=assign)


def make(*, layer_widths: Sequence[int], codebook_sizes: Sequence[int], num_clusters: int,
         n_init: int = 3, eval_n_init: int = 10) -> Method:
    """k-means + triangle-encoded features as a :class:`Method` without training steps.

    Args:
      layer_widths: D_l of each layer, in the order the features are concatenated.
      codebook_sizes: K_l of each layer's k-means codebook (2 <= K_l).
      num_clusters: K of the final clustering.
      n_init: k-means++ restarts of each codebook.
      eval_n_init: restarts of the final spherical k-means.
    """
    if len(layer_widths) != len(codebook_sizes) or min(codebook_sizes) < 2:
        raise ValueError(f"one codebook size >= 2 per layer, got {tuple(codebook_sizes)} for "
                         f"layers of widths {tuple(layer_widths)}")

    return common.no_training_method(
        "the triangle method", assignment_rule=ASSIGNMENT_RULE,
        evaluation=triangle_evaluation(layer_widths, codebook_sizes, num_clusters,
                                       n_init=n_init, eval_n_init=eval_n_init),
        similarity=lambda fitted, features: fused_codes(fitted, jnp.asarray(features),
                                                        layer_widths))


def from_config(config: ml_collections.ConfigDict, data_spec: DataSpec) -> Method:
    """The ``triangle`` section: ``layer_widths`` (() = those of ``data.backbone.layers``, or
    one layer of every feature), ``codebook_sizes``, ``n_init``, ``eval_n_init``."""
    section = config.triangle
    if data_spec.is_image or len(data_spec.input_shape) != 1:
        raise ConfigError("the triangle method clusters feature vectors: set config.data.backbone "
                          "to a pretrained network (or use an npz: source of features), not "
                          f"images of shape {data_spec.input_shape}")
    dim = data_spec.input_shape[0]
    spec = features.spec_from_config(config.data.get("backbone"))
    widths = (tuple(section.layer_widths)
              or (tuple(features.resolve(spec).widths.values()) if spec else (dim,)))
    if sum(widths) != dim:
        raise ConfigError(f"config.triangle.layer_widths={widths} sum to {sum(widths)}, but the "
                          f"features have {dim} dimensions")
    sizes = tuple(section.codebook_sizes)
    if len(sizes) != len(widths) or min(sizes) < 2:
        raise ConfigError(f"config.triangle.codebook_sizes={sizes}: one size >= 2 per layer "
                          f"({len(widths)} layers)")
    if max(sizes) > data_spec.num_examples:
        raise ConfigError(f"config.triangle.codebook_sizes={sizes}: more centroids than the "
                          f"{data_spec.num_examples} examples")
    for key in ("n_init", "eval_n_init"):
        if section[key] < 1:
            raise ConfigError(f"config.triangle.{key} must be >= 1, got {section[key]}")
    return make(layer_widths=widths, codebook_sizes=sizes, num_clusters=config.num_clusters,
                n_init=section.n_init, eval_n_init=section.eval_n_init)
