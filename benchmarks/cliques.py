"""CliqueCNN's cliques and clique batches on Fashion-MNIST's 70,000 images: time and quality.

  nice -n 19 python benchmarks/cliques.py
  nice -n 19 python benchmarks/cliques.py --dims=64 --k=64 --batches=500

Features are PCA-whitened pixels (``--dims``), L2-normalised; similarity is their dot product.
Prints the time of the k-NN lists, of the clique construction (``--batches`` initial batches x 10
cliques of 8, complete linkage, purification, dissimilar seeds), of the Student-t growth and of
sampling 1,000 batches of 8 x 16 in both modes; then the coverage, the mean clique purity (labels
used only here), the mean intra- and inter-clique similarity and the triplet-check pass share.
Each timed call but the k-NN search (one call, ~30 s) runs once beforehand on the same shapes, so
compilation is not counted.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from jclust.cluster import clique_batches, clique_growth, clique_stats, cliques, graph
from jclust.cluster.pca import pca
from jclust.data import sources


def timed(fn, *args, **kwargs):
    """(result, "W s wall / P s CPU"): on a shared machine the process's CPU time tells more."""
    start, cpu = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(fn(*args, **kwargs))
    return out, f"{time.perf_counter() - start:.1f} s wall / {time.process_time() - cpu:.1f} s CPU"


def report(name, found, features, labels, n):
    sim = clique_stats.clique_similarity(found, features)
    purity = np.nanmean(np.asarray(clique_stats.clique_purity(found, labels)))
    sizes = np.asarray(found.sizes)
    print(f"{name}: {len(sizes)} cliques, size mean {sizes.mean():.2f} (min {sizes.min()}, max "
          f"{sizes.max()}), coverage {float(clique_stats.clique_coverage(found, n)):.4f}, "
          f"purity {purity:.4f}, intra {float(sim.intra):.4f}, inter {float(sim.inter):.4f}, "
          f"compactness mean {float(np.mean(found.compactness)):.4f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, default=128)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--batches", type=int, default=500)
    parser.add_argument("--chunk", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = sources.load("fashion_mnist")
    n = data.num_examples
    pixels = data.inputs.reshape(n, -1).astype(np.float32) / 255.0
    _, features = pca(pixels, args.dims, whiten=True, l2_normalize=True)
    print(f"Fashion-MNIST {n} images, PCA-whitened to {args.dims} dims, L2-normalised, "
          f"k = {args.k}, {jax.devices()[0].platform}")
    neighbours, t_knn = timed(lambda: graph.knn(features, args.k).indices)
    key = jax.random.key(args.seed)
    build = dict(num_initial_batches=args.batches, chunk_size=args.chunk)
    cliques.build_cliques(key, features, neighbours, num_initial_batches=args.chunk,
                          chunk_size=args.chunk)  # compile
    found, t_build = timed(cliques.build_cliques, key, features, neighbours, **build)
    clique_growth.grow_cliques(key, found, features, neighbours)
    grown, t_grow = timed(clique_growth.grow_cliques, jax.random.fold_in(key, 1), found,
                          features, neighbours)
    sampled = {}
    for mode in ("random", "heuristic"):
        sampled[mode], t = timed(clique_batches.sample_clique_batches, jax.random.fold_in(key, 2),
                                 found, features, num_batches=1000, mode=mode)
        sampled[mode + " time"] = t
    print(f"time: knn {t_knn}; cliques {t_build}; Student-t growth {t_grow}; 1,000 batches random "
          f"{sampled['random time']}, heuristic {sampled['heuristic time']}")
    report("cliques", found, features, data.labels, n)
    report("grown (p < 0.001, <= 32)", grown, features, data.labels, n)
    for mode in ("random", "heuristic"):
        print(f"{mode}: triplet check passed by {np.mean(sampled[mode].passed):.4f} of batches")


if __name__ == "__main__":
    main()
