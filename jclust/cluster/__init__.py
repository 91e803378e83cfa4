"""Clustering primitives in jax.numpy: k-means, PCA and Sinkhorn-Knopp."""

from jclust.cluster.kmeans import KMeansOutput
from jclust.cluster.kmeans import assign
from jclust.cluster.kmeans import kmeans
from jclust.cluster.kmeans import kmeans_plusplus
from jclust.cluster.kmeans import random_init
from jclust.cluster.pca import PCAState
from jclust.cluster.pca import pca
from jclust.cluster.pca import pca_fit
from jclust.cluster.pca import pca_transform
from jclust.cluster.sinkhorn import SinkhornOutput
from jclust.cluster.sinkhorn import sinkhorn_knopp

__all__ = [
    "KMeansOutput",
    "PCAState",
    "SinkhornOutput",
    "assign",
    "kmeans",
    "kmeans_plusplus",
    "pca",
    "pca_fit",
    "pca_transform",
    "random_init",
    "sinkhorn_knopp",
]
