"""JULE's clustering pass at full size: affinity graph, 1-NN over-clustering, GDL affinities and
the merge scan down to the target, on all 70,000 Fashion-MNIST images (raw pixels, as JULE's
period 0), with the time and peak host memory of each stage.

  python benchmarks/jule_merge.py                      # Fashion-MNIST, 70,000 x 784 pixels
  python benchmarks/jule_merge.py --source=digits      # a quick check

Prints a Markdown table for BENCHMARKS.md and the ACC/NMI/ARI of the pixel-level agglomeration
(JULE without any CNN training: the starting point the unrolled training improves on).
"""

from __future__ import annotations

import argparse
import datetime
import math
import resource
import time

import jax
import numpy as np

from jclust import config_lib, metrics, train
from jclust.cluster import graph as jgraph


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="fashion_mnist")
    parser.add_argument("--neighbours", type=int, default=20, help="K_s (reference 20)")
    parser.add_argument("--target", type=int, default=10)
    parser.add_argument("--eta", type=float, default=0.9, help="unrolling rate per pass")
    parser.add_argument("--cache", type=int, default=16)
    args = parser.parse_args()

    config = config_lib.load_config("configs/dec.py")
    config.data.source = args.source
    if args.source == "digits":
        config.data.image_shape = (8, 8, 1)
    dataset = train.load_dataset(config)
    x = dataset.inputs.reshape(dataset.num_examples, -1).astype(np.float32)
    rows = []

    def timed(name, fn):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        rows.append((name, time.perf_counter() - start, peak_rss_gib()))
        return out

    graph = timed(f"affinity graph (K_s = {args.neighbours})",
                  lambda: jgraph.affinity_graph(x, args.neighbours))
    labels = timed("1-NN over-clustering", lambda: jgraph.nearest_neighbour_clusters(
        graph.indices[:, 0]))
    c = int(labels.max()) + 1
    a_us, _ = timed(f"GDL affinities ({c} clusters, dense {c}x{c})",
                    lambda: jgraph.gdl_affinity(graph, labels, c, symmetric=False))
    state = jgraph.merge_state(a_us, np.bincount(np.asarray(labels), minlength=c))
    del a_us
    active, passes, merges_done, merge_time = c, 0, 0, 0.0
    while active > args.target:
        merges = min(math.ceil(args.eta * active), active - args.target)
        start = time.perf_counter()
        state, _ = jgraph.merge_clusters(state, merges, cache_size=args.cache)
        jax.block_until_ready(state)
        merge_time += time.perf_counter() - start
        active -= merges
        merges_done += merges
        passes += 1
    rows.append((f"merge scan: {merges_done} merges in {passes} passes (eta {args.eta})",
                 merge_time, peak_rss_gib()))
    final = np.asarray(jgraph.resolve_labels(state.parent, labels))

    print(f"\n{datetime.date.today()}, {dataset.source}: {dataset.num_examples} x {x.shape[1]}\n")
    print("| stage | time (s) | peak host memory so far (GiB) |")
    print("|---|---|---|")
    for name, seconds, rss in rows:
        print(f"| {name} | {seconds:.1f} | {rss:.2f} |")
    if dataset.labels is not None:
        scores = metrics.evaluate(dataset.labels, final)
        print(f"\npixel-level agglomeration: ACC {scores['acc']:.4f}, NMI {scores['nmi']:.4f}, "
              f"ARI {scores['ari']:.4f}")


if __name__ == "__main__":
    main()
