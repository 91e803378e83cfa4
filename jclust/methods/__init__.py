"""Clustering methods: each module exposes ``make(*, <network>, <sizes>, tx, num_steps,
<hyperparameters>) -> Method``, the method's math (the network: a backbone, DEC's autoencoder),
and ``from_config(config, data_spec) -> Method``, which checks a config and maps its keys to
``make``'s arguments."""

from typing import Callable

import ml_collections

from jclust.config_lib import ConfigError
from jclust.methods import (cliquecnn, dec, deepcluster, deepclusterv2, jule, nmm, odc,
                            pretrained_kmeans, swav, triangle)
from jclust.methods.base import DataSpec, Method, Phase, ReclusterContext, SamplePlan
from jclust.methods.common import steps_per_epoch

# config.method -> the function that builds that method from a config.
REGISTRY: dict[str, Callable[[ml_collections.ConfigDict, DataSpec], Method]] = {
    "dec": dec.from_config, "idec": dec.from_config, "deepcluster": deepcluster.from_config,
    "deepclusterv2": deepclusterv2.from_config, "odc": odc.from_config, "swav": swav.from_config,
    "jule": jule.from_config, "nmm": nmm.from_config, "triangle": triangle.from_config,
    "cliquecnn": cliquecnn.from_config, "pretrained_kmeans": pretrained_kmeans.from_config,
}


def from_config(config: ml_collections.ConfigDict, data_spec: DataSpec) -> Method:
    """Builds the method named by ``config.method`` (a key of :data:`REGISTRY`)."""
    if config.method not in REGISTRY:
        raise ConfigError(f"config.method={config.method!r} is not a known method; "
                          f"known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[config.method](config, data_spec)


__all__ = ["DataSpec", "Method", "Phase", "REGISTRY", "ReclusterContext", "SamplePlan",
           "from_config", "steps_per_epoch"]
