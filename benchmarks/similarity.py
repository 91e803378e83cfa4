"""Similarity benchmark of features on Fashion-MNIST: the 60,000 training images are the database,
the 10,000 test images the queries (jclust.metrics.similarity_report; labels only score).

  python benchmarks/similarity.py --features=pixels
  python benchmarks/similarity.py --features=pixels,pca_whiten,run:runs/dec_fm_s0

Feature kinds:

* ``pixels``: the raw pixels / 255 (784-d);
* ``pca_whiten``: PCA-256 of the pixels / 255, whitened (jclust.cluster.pca, fitted on the
  training split only);
* ``hog``: HOG of the images (jclust.models.hog, 4 px cells, 9 orientations, 2 x 2 blocks,
  L2-Hys: 1,296-d), as scikit-image computes it;
* ``hog_lda``: that HOG whitened with the training split's covariance + 0.02 I (CliqueCNN's
  HOG-LDA, its initial similarities);
* ``round0:KIND[:DIM][:mirror]``: CliqueCNN's round-0 similarity space, exactly as the method
  builds it from ``init_features=KIND`` (hog_lda or pca_whiten, fitted on all 70,000 images as the
  method does, without labels), reduced by PCA to DIM (default 64, the config's ``pca_dim``), unit
  rows; with ``mirror``, the views of the images and their mirror images scored by the largest
  cosine over pairs of views (``cliquecnn.mirror_match``, the paper's mirrored match);
* ``run:WORKDIR``: the similarity space of a trained jclust run (its newest checkpoint,
  read-only): the embedding as ``python -m jclust.predict`` computes it, through the method's
  ``similarity`` where it has one (CliqueCNN: power-whitened PCA, fitted on all 70,000 images
  without labels; the triangle method: its fused codes; pretrained_kmeans: its whitened
  features; ``predict.Predictor.similarity_data``).

Prints one markdown row per feature kind: precision@1/10/100, mAP@100, weighted 20-NN accuracy
(tau 0.07), pair AUC (100k same- and 100k different-label test/train pairs), CliqueCNN's
per-anchor AUC (1,000 test anchors, 100 nearest + 100 random training candidates: the AUC of the
mean ROC curve, then the mean of per-anchor AUCs), the anchors used, and the seconds to compute
the features and to score them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.quality import machine  # noqa: E402
from jclust import cluster as jcluster  # noqa: E402
from jclust import data as jdata  # noqa: E402
from jclust import metrics  # noqa: E402

NUM_TRAIN = 60_000
SOURCE = "fashion_mnist"


def load_fashion_mnist() -> tuple[np.ndarray, np.ndarray]:
    """All 70,000 images (uint8 [N, 28, 28, 1], training split first) and their labels."""
    dataset = jdata.load(SOURCE)
    if len(dataset.inputs) != NUM_TRAIN + 10_000 or dataset.labels is None:
        raise SystemExit(f"{SOURCE}: expected 70,000 labelled images, got {len(dataset.inputs)}")
    return dataset.inputs, dataset.labels


def pixel_features(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def pca_whitened(images: np.ndarray, dim: int = 256) -> np.ndarray:
    """PCA-``dim`` whitened pixels, fitted on the training split."""
    x = pixel_features(images)
    state = jcluster.pca_fit(x[:NUM_TRAIN], dim, whiten=True)
    return np.asarray(jcluster.pca_transform(state, x))


def hog_features(images: np.ndarray, whiten: bool) -> np.ndarray:
    """HOG (optionally LDA-whitened with the training split's statistics) of the images."""
    from jclust.models import hog
    h = hog.hog(images, **hog.default_config(*images.shape[1:3])._asdict())
    if not whiten:
        return h
    return hog.apply_hog_whitening(hog.fit_hog_whitening(h[:NUM_TRAIN]), h)


def run_features(workdir: str) -> np.ndarray:
    """The similarity space of every image by the run in ``workdir`` (its method's
    ``similarity`` of the embedding, or the embedding; nothing is written there)."""
    from jclust import predict  # the trainer's stack, only for this kind
    predictor = predict.Predictor.from_workdir(workdir)
    data, warnings = predict.load_data(predictor, SOURCE)
    for message in warnings:
        print(f"warning: {message}", file=sys.stderr)
    return predictor.similarity_data(data)


def features_of(kind: str, images: np.ndarray) -> np.ndarray:
    if kind == "pixels":
        return pixel_features(images)
    if kind == "pca_whiten":
        return pca_whitened(images)
    if kind in ("hog", "hog_lda"):
        return hog_features(images, whiten=kind == "hog_lda")
    if kind.startswith("run:"):
        return run_features(kind.removeprefix("run:"))
    if kind.startswith("round0:"):
        from jclust.methods import cliquecnn_space
        init, *rest = kind.removeprefix("round0:").split(":")
        mirror = rest[-1:] == ["mirror"]
        dim = int(rest[0]) if rest[:1] and rest[0] != "mirror" else 64
        return cliquecnn_space.reduce_and_normalise(
            cliquecnn_space.initial_features(images, init, pca_dim=dim, mirror=mirror), dim)
    raise SystemExit(f"unknown --features kind {kind!r}: pixels, pca_whiten, hog, hog_lda, "
                     f"round0:KIND[:DIM][:mirror] or run:WORKDIR")


HEADER = ("| features | dim | P@1 | P@10 | P@100 | mAP@100 | 20-NN acc | pair AUC | anchor AUC "
          "(mean curve) | anchor AUC (mean) | anchors used | features s | score s |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def row(kind: str, dim: int, report: metrics.SimilarityReport, feature_s: float,
        score_s: float) -> str:
    values = (report.precision_at_1, report.precision_at_10, report.precision_at_100,
              report.map_at_100, report.knn_accuracy, report.pair_auc, report.anchor_auc,
              report.anchor_auc_mean)
    return (f"| {kind} | {dim} | " + " | ".join(f"{v:.4f}" for v in values)
            + f" | {report.anchors_used}/{report.num_anchors} | {feature_s:.1f} | {score_s:.1f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", default="pixels",
                        help="comma-separated kinds: pixels, pca_whiten, hog, hog_lda, "
                             "round0:KIND[:DIM][:mirror], run:WORKDIR")
    parser.add_argument("--seed", type=int, default=0, help="key of the pairs and anchors")
    parser.add_argument("--chunk-size", type=int, default=512,
                        help="test images whose [chunk, 60000] similarities are held at once")
    args = parser.parse_args(argv)
    images, labels = load_fashion_mnist()
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"{SOURCE}: database {NUM_TRAIN} training images, queries {len(images) - NUM_TRAIN} "
          f"test images; seed {args.seed}; {machine()}; jax {jax.__version__} "
          f"({jax.default_backend()}); {now}")
    print(f"$ python benchmarks/similarity.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(HEADER, flush=True)
    for kind in args.features.split(","):
        start = time.perf_counter()
        x = np.asarray(features_of(kind, images), np.float32)
        feature_s = time.perf_counter() - start
        start = time.perf_counter()
        report = metrics.similarity_report(
            x[:NUM_TRAIN], labels[:NUM_TRAIN], x[NUM_TRAIN:], labels[NUM_TRAIN:],
            key=jax.random.PRNGKey(args.seed), chunk_size=args.chunk_size)
        score_s = time.perf_counter() - start
        print(row(kind, x.shape[-1], report, feature_s, score_s), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
