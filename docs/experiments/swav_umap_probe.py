"""N2D's manifold step on SwAV's Fashion-MNIST features (BENCHMARKS.md, session 36).

N2D (McConville et al.) clusters an autoencoder's embedding after UMAP to 10 dimensions (20
neighbours, min_dist 0) with a Gaussian mixture. Here the embedding is a finished SwAV run's
backbone features h, as `pretrained_kmeans` extracted them ([z (64), h (128)] per image, in the
data set's order: the 60,000 training images, then the 10,000 test images). Not part of jclust:
umap-learn (and its numba) are not dependencies; run it from the repository root in jclust's
environment with umap-learn added (`pip install umap-learn`):

  python -m jclust.main --config=configs/swav.py --workdir=runs/swav70k_s0
  python -m jclust.main --config=configs/pretrained_kmeans.py --workdir=runs/pk_swav70k_s0 \
      --config.data.backbone.name= --config.data.encoder_workdir=runs/swav70k_s0
  python docs/experiments/swav_umap_probe.py runs/pk_swav70k_s0/encoder_features.npy [32]

With a second argument, h is PCA-whitened to that many dimensions and L2-normalised first
(SwAV's own read-out space); without, each feature is standardised.
"""

import sys
import time

import numpy as np
import umap
from sklearn.cluster import KMeans
from sklearn.mixture import GaussianMixture

from jclust import data as jdata
from jclust import metrics


def main(features_path: str, whiten_dim: int | None) -> None:
    y = jdata.load("fashion_mnist").labels
    h = np.load(features_path)[:, 64:]  # float32, as the session-36 figures were computed
    h -= h.mean(0)
    if whiten_dim:
        _, s, vt = np.linalg.svd(h, full_matrices=False)
        h = h @ vt[:whiten_dim].T / s[:whiten_dim] * np.sqrt(len(h))
        h /= np.linalg.norm(h, axis=1, keepdims=True)
        pred = KMeans(10, n_init=10, random_state=0).fit_predict(h)
        print(f"k-means on h whitened to {whiten_dim}: ACC {metrics.accuracy(y, pred):.4f}")
    else:
        h /= h.std(0) + 1e-6
    start = time.time()
    embedded = umap.UMAP(n_components=10, n_neighbors=20, min_dist=0.0, random_state=0,
                         n_jobs=1).fit_transform(h)
    print(f"UMAP: {time.time() - start:.0f} s")
    for name, pred in (
            ("GMM", GaussianMixture(10, covariance_type="full", random_state=0).fit(embedded)
             .predict(embedded)),
            ("k-means", KMeans(10, n_init=10, random_state=0).fit_predict(embedded))):
        print(f"UMAP + {name}: ACC {metrics.accuracy(y, pred):.4f}, "
              f"NMI {metrics.nmi(y, pred):.4f}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
