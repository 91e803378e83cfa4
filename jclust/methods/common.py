"""What the CNN methods' ``from_config`` check and compute alike, and the report on the labels
they train on."""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jclust import metrics as jmetrics
from jclust import models
from jclust.config_lib import ConfigError, check_ranges
from jclust.data import augment
from jclust.methods.base import DataSpec, Evaluation, Method, Phase
from jclust.precision import float_dtype

CNN_BACKBONES = ("small_cnn", "resnet18")


def check_cnn_config(config: ml_collections.ConfigDict, data_spec: DataSpec, title: str,
                     checks: Mapping[str, bool], *, backbones: Sequence[str] = CNN_BACKBONES,
                     context: str = "") -> None:
    """Raises a ConfigError for the first thing a CNN method cannot train on.

    In this order: data that are not images, a ``model.name`` not in ``backbones``, then the
    method's own range ``checks`` (``{"section.key": condition}``), then the shared ones:
    ``num_clusters`` in [1, N], ``optim.epochs`` >= 1, ``batch_size`` <= N (a key the method
    checks itself is not checked twice).

    Args:
      config: the run's config.
      data_spec: the data's sizes.
      title: the method's name in messages, e.g. "DeepCluster-v2".
      checks: the method's own range checks, in the order to report them.
      backbones: the ``model.name`` values the method can train.
      context: what the bounds depend on (default: the number of examples).
    """
    n = data_spec.num_examples
    if not data_spec.is_image:
        raise ConfigError(f"{title} trains a CNN on images; the data are feature vectors")
    if config.model.name not in backbones:
        names = [repr(b) for b in backbones]
        raise ConfigError(f"config.model.name={config.model.name!r}: {title} needs "
                          + (", ".join(names[:-1]) + " or " if len(names) > 1 else "") + names[-1])
    shared = {"num_clusters": 1 <= config.num_clusters <= n,
              "optim.epochs": config.optim.epochs >= 1,
              "batch_size": config.batch_size <= n}
    shared = {key: ok for key, ok in shared.items() if key not in checks}
    check_ranges(config, {**checks, **shared}, context or f"N = {n} examples")


def steps_per_epoch(config: ml_collections.ConfigDict, data_spec: DataSpec) -> int:
    """Steps of an epoch, the unit of every duration in epochs: whole batches per pass over the
    data (a partial last batch is not drawn), or over ``config.min_epoch_examples`` examples
    where the data has fewer (the epoch then spans several passes)."""
    examples = max(data_spec.num_examples, config.get("min_epoch_examples", 0))
    return examples // config.batch_size


def labels_report(labels: np.ndarray, num_labels: int, *, prefix: str,
                  previous: np.ndarray | None = None, collapse_fraction: float = 1.0,
                  what: str = "pseudo-label", remedies: str = "") -> dict:
    """A recluster's report on the labels a method trains on (pseudo-labels, memory labels).

    Args:
      labels: [N] int in [0, num_labels), the new labels.
      num_labels: how many labels there may be.
      prefix: of every key, e.g. "pseudo" -> ``pseudo_clusters_used``.
      previous: [N] the labels they replace (no NMI when None or -1 anywhere: none yet).
      collapse_fraction: warn when one label holds this fraction of the examples or more.
      what: the collapse's name in the warning.
      remedies: the config changes the warning suggests ("" for none).

    Returns:
      :func:`jclust.metrics.cluster_sizes` under ``prefix``, ``<prefix>_nmi_previous`` and, on
      collapse, a "warning" text.
    """
    n = labels.shape[0]
    info = jmetrics.cluster_sizes(labels, num_labels, prefix=f"{prefix}_")
    if previous is not None and previous.min() >= 0:
        info[f"{prefix}_nmi_previous"] = float(jmetrics.nmi(previous, labels))
    largest, used = info[f"{prefix}_cluster_size_max"], info[f"{prefix}_clusters_used"]
    if largest >= collapse_fraction * n:
        info["warning"] = (f"{what} collapse: {largest} of {n} examples in one cluster ({used} of "
                           f"{num_labels} used); training goes on"
                           + (f". Remedies: {remedies}" if remedies else ""))
    return info


def init_backbone_and_head(rng: jax.Array, backbone: models.Backbone, head, x: jax.Array
                           ) -> tuple[dict, dict]:
    """(params {"backbone", "head"}, model_state {"backbone"}) of ``backbone`` on inputs like
    ``x`` with a linear ``head`` on its features (DeepCluster's and CliqueCNN's classifier)."""
    k_backbone, k_head = jax.random.split(rng)
    backbone_params, backbone_state = backbone.init(k_backbone, x)
    head_params = head.init(k_head, jnp.zeros((1, backbone.feature_dim)))["params"]
    return {"backbone": backbone_params, "head": head_params}, {"backbone": backbone_state}


def augmented_logits(backbone: models.Backbone, head, params: dict, model_state: dict,
                     images: jax.Array, rng: jax.Array, *, image_shape: Sequence[int],
                     crop_scale: tuple[float, float], flip: bool, rotation_degrees: float,
                     prepare: Callable[[jax.Array], jax.Array] = lambda x: x
                     ) -> tuple[jax.Array, dict]:
    """(head logits [B, C], new model_state) of one augmented view of ``images`` (random resized
    crop to ``image_shape``, flip, rotation; colour jitter for RGB), ``prepare``d, through the
    backbone in training mode."""
    x = augment.augment_view(images, rng, out_size=tuple(image_shape[:2]),
                             scale=tuple(crop_scale), flip=flip, max_degrees=rotation_degrees,
                             color=image_shape[-1] == 3)
    h, backbone_state = backbone.apply(params["backbone"], model_state["backbone"], prepare(x),
                                       train=True)
    return head.apply({"params": params["head"]}, h), {"backbone": backbone_state}


def no_training_method(name: str, evaluation: Evaluation, assignment_rule: str,
                       similarity: Callable) -> Method:
    """A :class:`Method` without a training step, whose whole fit is its ``evaluation`` on the
    input features (the triangle method, pretrained_kmeans): no parameters, one phase of 0 steps,
    the features embedded as they are."""
    def init(rng, x):
        del rng, x
        return {}, {}, {}

    def loss_fn(params, model_state, cluster, batch, rng):  # a phase of 0 steps never calls it
        raise NotImplementedError(f"{name} takes no training step")

    def embed(params, model_state, x):
        del params, model_state
        return x.astype(float_dtype())

    return Method(
        init=init, phases=(Phase("encode", 0, optax.identity(), loss_fn),), embed=embed,
        assign=None, recluster=None, done=lambda cluster: False,
        assignment_rule=assignment_rule, evaluation=evaluation, similarity=similarity)


def relative_spread(features) -> float:
    """sqrt(total variance) / rms row norm of features [N, D]: 0 when every row is the same (a
    collapsed embedding), ~1 for centred features. ``features`` may be sharded over devices and
    processes (a jitted reduction, one scalar back)."""
    return float(_relative_spread(jnp.asarray(features, float_dtype())))


@jax.jit
def _relative_spread(x: jax.Array) -> jax.Array:
    total = jnp.sum(jnp.var(x, axis=0))
    return jnp.sqrt(total / jnp.maximum(jnp.mean(jnp.sum(x * x, axis=1)), 1e-30))
