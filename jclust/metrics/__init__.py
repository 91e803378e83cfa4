"""Clustering evaluation metrics (host-side NumPy/SciPy)."""

from jclust.metrics.clustering import accuracy
from jclust.metrics.clustering import ari
from jclust.metrics.clustering import contingency
from jclust.metrics.clustering import evaluate
from jclust.metrics.clustering import nmi
from jclust.metrics.clustering import purity

__all__ = ["accuracy", "ari", "contingency", "evaluate", "nmi", "purity"]
