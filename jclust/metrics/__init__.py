"""Evaluation metrics: clustering (host-side NumPy/SciPy), the linear probe and the similarity
benchmark (jax.numpy)."""

from jclust.metrics.clustering import accuracy
from jclust.metrics.clustering import ari
from jclust.metrics.clustering import cluster_sizes
from jclust.metrics.clustering import contingency
from jclust.metrics.clustering import evaluate
from jclust.metrics.clustering import nmi
from jclust.metrics.clustering import purity
from jclust.metrics.probe import ProbeOutput
from jclust.metrics.probe import linear_probe
from jclust.metrics.retrieval import Neighbours
from jclust.metrics.retrieval import SimilarityReport
from jclust.metrics.retrieval import average_precision_at_k
from jclust.metrics.retrieval import knn_predict
from jclust.metrics.retrieval import nearest_neighbours
from jclust.metrics.retrieval import pair_cosines
from jclust.metrics.retrieval import precision_at_k
from jclust.metrics.retrieval import relevance
from jclust.metrics.retrieval import sample_pairs
from jclust.metrics.retrieval import similarity_report
from jclust.metrics.roc import AnchorROC
from jclust.metrics.roc import anchor_candidates
from jclust.metrics.roc import anchor_roc
from jclust.metrics.roc import roc_auc

__all__ = [
    "AnchorROC", "Neighbours", "ProbeOutput", "SimilarityReport", "accuracy", "anchor_candidates",
    "anchor_roc", "ari", "average_precision_at_k", "cluster_sizes", "contingency", "evaluate",
    "knn_predict", "linear_probe", "nearest_neighbours", "nmi", "pair_cosines", "precision_at_k",
    "purity", "relevance", "roc_auc", "sample_pairs", "similarity_report",
]
