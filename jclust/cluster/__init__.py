"""Clustering primitives in jax.numpy: k-means, PCA, Sinkhorn-Knopp, mixture-model EM,
nearest-neighbour graphs, average linkage, spectral clustering, triangle encoding, CliqueCNN's
cliques, clique batches and the mirrored match."""

from jclust.cluster.clique_batches import CliqueBatches
from jclust.cluster.clique_batches import sample_clique_batches
from jclust.cluster.clique_batches import triplet_check
from jclust.cluster.clique_growth import grow_cliques
from jclust.cluster.clique_labels import cliques_from_labels
from jclust.cluster.clique_labels import disjoint_cliques
from jclust.cluster.clique_labels import first_clique_labels
from jclust.cluster.clique_labels import grown_labels
from jclust.cluster.clique_stats import CliqueSimilarity
from jclust.cluster.clique_stats import clique_coverage
from jclust.cluster.clique_stats import clique_purity
from jclust.cluster.clique_stats import clique_sample_counts
from jclust.cluster.clique_stats import clique_similarity
from jclust.cluster.cliques import Cliques
from jclust.cluster.cliques import build_cliques
from jclust.cluster.cliques import grow_clique
from jclust.cluster.cliques import make_cliques
from jclust.cluster.cliques import purify_clique
from jclust.cluster.em import EMOutput
from jclust.cluster.em import expected_complete_log_likelihood
from jclust.cluster.em import responsibilities
from jclust.cluster.em import sigmoid_log_densities
from jclust.cluster.graph import AffinityGraph
from jclust.cluster.graph import KNNOutput
from jclust.cluster.graph import affinity_graph
from jclust.cluster.graph import knn
from jclust.cluster.graph import nearest_neighbour_clusters
from jclust.cluster.kmeans import KMeansOutput
from jclust.cluster.kmeans import assign
from jclust.cluster.kmeans import kmeans
from jclust.cluster.kmeans import kmeans_streamed
from jclust.cluster.kmeans import kmeans_plusplus
from jclust.cluster.kmeans import random_init
from jclust.cluster.linkage import LinkageOutput
from jclust.cluster.linkage import average_linkage
from jclust.cluster.norms import l2_normalize
from jclust.cluster.pca import PCAState
from jclust.cluster.pca import fit_whitening, power_whiten
from jclust.cluster.pca import pca
from jclust.cluster.pca import pca_fit
from jclust.cluster.pca import pca_transform
from jclust.cluster.pca import whiten
from jclust.cluster.sinkhorn import SinkhornOutput
from jclust.cluster.sinkhorn import sinkhorn_knopp
from jclust.cluster.spectral import SpectralOutput
from jclust.cluster.spectral import spectral_clustering
from jclust.cluster.spectral import spectral_embedding
from jclust.cluster.triangle import centroid_distances
from jclust.cluster.triangle import triangle_encode
from jclust.cluster.views import view_knn
from jclust.cluster.views import view_similarity

__all__ = [
    "AffinityGraph",
    "CliqueBatches",
    "CliqueSimilarity",
    "Cliques",
    "build_cliques",
    "clique_coverage",
    "clique_purity",
    "clique_sample_counts",
    "clique_similarity",
    "cliques_from_labels",
    "disjoint_cliques",
    "first_clique_labels",
    "grow_clique",
    "grown_labels",
    "grow_cliques",
    "make_cliques",
    "purify_clique",
    "sample_clique_batches",
    "triplet_check",
    "EMOutput",
    "expected_complete_log_likelihood",
    "responsibilities",
    "sigmoid_log_densities",
    "KNNOutput",
    "affinity_graph",
    "knn",
    "nearest_neighbour_clusters",
    "KMeansOutput",
    "LinkageOutput",
    "PCAState",
    "SinkhornOutput",
    "SpectralOutput",
    "assign",
    "centroid_distances",
    "average_linkage",
    "fit_whitening",
    "power_whiten",
    "kmeans",
    "kmeans_streamed",
    "kmeans_plusplus",
    "l2_normalize",
    "pca",
    "pca_fit",
    "pca_transform",
    "random_init",
    "sinkhorn_knopp",
    "spectral_clustering",
    "spectral_embedding",
    "triangle_encode",
    "whiten",
    "view_knn",
    "view_similarity",
]
