"""Clustering methods: each module exposes ``make(config, data_spec) -> Method``."""

import importlib

from jclust.methods.base import DataSpec, Method, Phase, ReclusterContext, SamplePlan


def make(config, data_spec: DataSpec) -> Method:
    """Builds the method named by ``config.method`` (see ``jclust.config_lib.METHODS``)."""
    from jclust import config_lib
    if config.method not in config_lib.METHODS:
        raise config_lib.ConfigError(
            f"config.method={config.method!r} is not a known method; "
            f"known: {', '.join(sorted(config_lib.METHODS))}")
    module = importlib.import_module(f"jclust.methods.{config_lib.METHODS[config.method]}")
    return module.make(config, data_spec)


__all__ = ["DataSpec", "Method", "Phase", "ReclusterContext", "SamplePlan", "make"]
