"""Evaluation metrics: clustering (host-side NumPy/SciPy) and the linear probe (jax.numpy)."""

from jclust.metrics.clustering import accuracy
from jclust.metrics.clustering import ari
from jclust.metrics.clustering import cluster_sizes
from jclust.metrics.clustering import contingency
from jclust.metrics.clustering import evaluate
from jclust.metrics.clustering import nmi
from jclust.metrics.clustering import purity
from jclust.metrics.probe import ProbeOutput
from jclust.metrics.probe import linear_probe

__all__ = [
    "ProbeOutput", "accuracy", "ari", "cluster_sizes", "contingency", "evaluate", "linear_probe",
    "nmi", "purity",
]
