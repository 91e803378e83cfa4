"""Clustering evaluation metrics (host-side NumPy/SciPy)."""

from jclust.metrics.clustering import accuracy
from jclust.metrics.clustering import ari
from jclust.metrics.clustering import cluster_sizes
from jclust.metrics.clustering import contingency
from jclust.metrics.clustering import evaluate
from jclust.metrics.clustering import nmi
from jclust.metrics.clustering import purity

__all__ = ["accuracy", "ari", "cluster_sizes", "contingency", "evaluate", "nmi", "purity"]
