"""HOG and HOG-LDA (CliqueCNN's initial features) on Fashion-MNIST: featurising time, and k-means.

  nice -n 19 python benchmarks/hog_kmeans.py [--source fashion_mnist] [--n-init 3] [--seed 0]

Steps, each timed (wall clock, compilation included: one call of each, as a user runs it):
1. ``models.hog.hog`` of all images (default HOG config of the image size: 28 x 28 -> 4 px cells,
   9 orientations, 2 x 2 blocks, L2-Hys: 1,296 features), then of their left-right mirrors;
2. ``fit_hog_whitening`` on both pooled (ridge 0.02) and ``apply_hog_whitening`` to both;
3. ``cluster.kmeans`` (K = number of classes, k-means++, ``--n-init`` restarts, seed ``--seed``)
   on raw HOG, whitened HOG, and whitened HOG L2-normalised (the cosine CliqueCNN's similarity
   uses), each scored with ``metrics.evaluate`` against the labels.

Prints one Markdown row per feature set: features, D, ACC, NMI, ARI, k-means seconds; then the
featurising times, the date and the machine.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from jclust import cluster, data, metrics  # noqa: E402
from jclust.models import hog as hog_lib  # noqa: E402


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="fashion_mnist")
    parser.add_argument("--n-init", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ridge", type=float, default=0.02)
    args = parser.parse_args()

    dataset = data.load(args.source)
    images, labels = dataset.inputs, dataset.labels
    config = hog_lib.default_config(images.shape[1], images.shape[2])
    plain, t_hog = timed(hog_lib.hog, images, **config._asdict())
    mirrored, t_mirror = timed(hog_lib.hog, images[:, :, ::-1], **config._asdict())
    whitening, t_fit = timed(hog_lib.fit_hog_whitening, [plain, mirrored], ridge=args.ridge)
    whitened, t_apply = timed(hog_lib.apply_hog_whitening, whitening, plain)
    del mirrored
    normalised = np.asarray(cluster.norms.l2_normalize(whitened))

    k = len(np.unique(labels))
    print(f"{args.source}: {images.shape[0]} images {images.shape[1:]}, {config}")
    print("| features | D | ACC | NMI | ARI | k-means s |")
    print("|---|---|---|---|---|---|")
    for name, x in (("HOG", plain), (f"HOG-LDA (ridge {args.ridge})", whitened),
                    ("HOG-LDA, L2-normalised", normalised)):
        out, t_km = timed(cluster.kmeans, x, k, key=jax.random.key(args.seed), n_init=args.n_init)
        scores = metrics.evaluate(labels, np.asarray(out.labels))
        print(f"| {name} | {x.shape[1]} | {scores['acc']:.4f} | {scores['nmi']:.4f} | "
              f"{scores['ari']:.4f} | {t_km:.1f} |")
    print(f"\nHOG of {images.shape[0]} images: {t_hog:.1f} s; of their mirrors: {t_mirror:.1f} s; "
          f"whitening fit on both (2N): {t_fit:.1f} s; applied to N: {t_apply:.1f} s")
    print(f"{datetime.date.today()}, {machine()}, jax {jax.__version__}, k-means K={k} "
          f"n_init={args.n_init} seed={args.seed}")


if __name__ == "__main__":
    main()
