"""JULE's agglomeration checked against exact graph-degree linkage on a subset of raw pixels.

  python benchmarks/jule_gdl_check.py --source=digits --n=1797
  python benchmarks/jule_gdl_check.py --source=fashion_mnist --n=5000

jclust's merge scan uses JULE's *fast* update (the merged cluster's unnormalised affinities are the
sums of its parts', which drops the cross terms of in_b(m) * out_b(m)). This script runs, on the
same L2-normalised pixels, the same 1-NN over-clustering, the same criterion (K_s = 20, K_c = 5,
lambda = 1, eta = 0.9) and merges down to 10 clusters:

  * ``jclust``: ``jclust.methods.jule.agglomerate``;
  * ``exact``: a dense NumPy GDL that keeps in_b(m) and out_b(m) for every cluster and recomputes
    the merged cluster's affinities exactly after every merge (O(C N) a merge: subsets only);
  * ``exact, isolated first`` (``--isolated``): as ``exact``, but a cluster with no affinity to
    any other is first merged into the cluster of nearest mean (cosine).

and prints ACC/NMI and the largest cluster sizes of each, to tell a defect of the fast update from
a property of GDL on the data.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from jclust import metrics
from jclust.cluster import graph as jgraph
from jclust.data import sources
from jclust.methods.jule import agglomerate


def exact_gdl(x, target, *, neighbours=20, cluster_neighbours=5, local_weight=1.0, eta=0.9,
              isolated=False):
    """Exact-GDL agglomeration of unit rows x [N, D] (dense: N up to ~10,000). Returns labels [N]."""
    graph = jgraph.affinity_graph(x, neighbours)
    indices, weights = np.asarray(graph.indices), np.asarray(graph.weights, np.float64)
    n = len(x)
    w = np.zeros((n, n))
    w[np.repeat(np.arange(n), neighbours), indices.ravel()] = weights.ravel()
    labels = np.asarray(jgraph.nearest_neighbour_clusters(indices[:, 0]))
    c = int(labels.max()) + 1
    member = np.zeros((c, n))
    member[labels, np.arange(n)] = 1.0
    into = member @ w      # into[b, m] = in_b(m) = sum_{j in b} W[j, m]
    out = member @ w.T     # out[b, m] = out_b(m) = sum_{j in b} W[m, j]
    product = into * out
    a_us = member @ product.T  # a_us[a, b] = sum_{m in a} in_b(m) out_b(m)
    sizes = member.sum(1)
    active = np.ones(c, bool)
    parent = np.arange(c)
    count = c
    k = cluster_neighbours
    while count > target:
        for _ in range(min(math.ceil(eta * count), count - target)):
            directed = a_us / np.maximum(sizes, 1.0)[None, :] ** 2
            aff = directed + directed.T
            aff[~(active[:, None] & active[None, :])] = -np.inf
            np.fill_diagonal(aff, -np.inf)
            kk = min(k, count - 1)
            top = -np.sort(-aff, axis=1)[:, :kk]
            with np.errstate(invalid="ignore"):  # -inf - -inf where fewer than K_c are active
                gaps = np.where(np.isfinite(top[:, 1:]), top[:, :1] - top[:, 1:], 0.0)
            score = top[:, 0] + local_weight * gaps.sum(1) / max(kk - 1, 1)
            score[~active] = -np.inf
            i = int(np.argmax(score))
            j = int(np.argmax(aff[i]))
            if isolated:
                lonely = np.flatnonzero(active & ~(np.max(aff, axis=1) > 0))
                if len(lonely):
                    i = int(lonely[0])
                    means = member @ x
                    means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
                    sims = means @ means[i]
                    sims[~active] = -np.inf
                    sims[i] = -np.inf
                    j = int(np.argmax(sims))
            keep, gone = min(i, j), max(i, j)
            for table in (member, into, out):
                table[keep] += table[gone]
                table[gone] = 0.0
            product[keep] = into[keep] * out[keep]
            product[gone] = 0.0
            a_us[keep] += a_us[gone]
            a_us[gone] = 0.0
            a_us[:, keep] = member @ product[keep]
            a_us[:, gone] = 0.0
            sizes[keep] += sizes[gone]
            sizes[gone] = 0.0
            active[gone] = False
            parent[gone] = keep
            count -= 1
    root = parent.copy()
    for _ in range(int(np.ceil(np.log2(c + 1))) + 1):
        root = root[root]
    return np.unique(root[labels], return_inverse=True)[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="fashion_mnist")
    parser.add_argument("--n", type=int, default=5000, help="examples (a random subset)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--isolated", action="store_true")
    args = parser.parse_args()
    dataset = sources.load(args.source)
    x = dataset.inputs.reshape(dataset.num_examples, -1).astype(np.float32)
    pick = np.random.default_rng(args.seed).permutation(len(x))[:args.n]
    x, y = x[pick], dataset.labels[pick]
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    def report(name, seconds, labels):
        sizes = np.sort(np.bincount(labels))[::-1]
        print(f"| {name} | {metrics.accuracy(y, labels):.3f} | {metrics.nmi(y, labels):.3f} | "
              f"{', '.join(map(str, sizes[:10]))} | {seconds:.0f} |", flush=True)

    print(f"{args.source}, {len(x)} images (seed {args.seed}), raw pixels, K_s 20, K_c 5, "
          "lambda 1, eta 0.9, down to 10 clusters\n")
    print("| agglomeration | ACC | NMI | cluster sizes, largest first | time (s) |")
    print("|---|---|---|---|---|")
    start = time.perf_counter()
    labels, info = agglomerate(x, None, 10, neighbours=20, eta=0.9, cluster_neighbours=5,
                               local_weight=1.0, cache_size=16)
    report(f"jclust, fast update ({info['clusters_before']} initial clusters)",
           time.perf_counter() - start, labels)
    variants = [("exact GDL (NumPy)", {})]
    if args.isolated:
        variants.append(("exact GDL, isolated clusters merged first", {"isolated": True}))
    for name, kwargs in variants:
        start = time.perf_counter()
        labels = exact_gdl(x, 10, **kwargs)
        report(name, time.perf_counter() - start, labels)


if __name__ == "__main__":
    main()
