"""JULE's clustering pass at full size: affinity graph, 1-NN over-clustering, GDL affinities and
the merge scan down to the target, on all 70,000 Fashion-MNIST images (raw pixels, as JULE's
period 0), with the time and peak host memory of each stage.

  python benchmarks/jule_merge.py                      # Fashion-MNIST, 70,000 x 784 pixels
  python benchmarks/jule_merge.py --source=digits      # a quick check

Prints a Markdown table for BENCHMARKS.md and the ACC/NMI/ARI of the pixel-level agglomeration
(JULE without any CNN training: the starting point the unrolled training improves on).

The peer (``--peer``): the same merge scan written in NumPy (:func:`numpy_merge_scan`, float32 like
jclust's, each cluster's K_c best affinities kept and re-scanned only where a merge touched them),
run pass by pass from the same state; the table gives both times and how many of the merges are
the same pair in the same order.
"""

from __future__ import annotations

import argparse
import datetime
import math
import resource
import time

import jax
import numpy as np

from jclust import config_lib, metrics
from jclust import loader
from jclust.cluster import graph as jgraph


def numpy_merge_scan(affinity_us, sizes, num_merges: int, *, num_neighbours: int = 5,
                     local_weight: float = 1.0, block: int = 1024):
    """JULE's merge scan in NumPy: the peer of ``jclust.cluster.graph.merge_clusters``.

    Same criterion, same fast update and the same tie rules (highest score, lowest index; nearest
    neighbour of lowest index; the lower slot survives). A row's K_c best affinities change only
    where a merge touched that row: rows whose cached best include the two merged clusters, rows
    to which the merged cluster's new affinity enters the cached best, and the merged row itself
    are re-scanned (O(C) each); every other row keeps its cache.

    Args:
      affinity_us: [C, C] unnormalised directed GDL affinities (modified in place).
      sizes: [C] cluster sizes (modified in place).
      num_merges: how many merges.

    Returns:
      merges [num_merges, 2] int32 (survivor, absorbed) slots in order; ``affinity_us`` and
      ``sizes`` end as the scan left them.
    """
    a, s = affinity_us, sizes
    c = a.shape[0]
    k = min(num_neighbours, c - 1)
    active = s > 0
    top_values = np.full((c, k), -np.inf, np.float32)
    top_index = np.zeros((c, k), np.int64)

    def rescan(rows):
        sq = np.maximum(s, np.float32(1.0)) ** 2
        for lo in range(0, len(rows), block):
            r = rows[lo:lo + block]
            aff = a[r, :] / sq[None, :] + a[:, r].T / sq[r][:, None]
            aff[:, ~active] = -np.inf
            aff[np.arange(len(r)), r] = -np.inf
            part = np.argpartition(-aff, k - 1, axis=1)[:, :k]
            part.sort(axis=1)  # ties: the lower index first (stable sort below)
            values = np.take_along_axis(aff, part, 1)
            order = np.argsort(-values, axis=1, kind="stable")
            top_values[r] = np.take_along_axis(values, order, 1)
            top_index[r] = np.take_along_axis(part, order, 1)

    def scores():
        first = top_values[:, 0]
        finite = np.isfinite(top_values[:, 1:])
        with np.errstate(invalid="ignore"):  # -inf - -inf in rows with fewer than K_c active
            gaps = np.where(finite, first[:, None] - top_values[:, 1:], 0.0).sum(1) / max(k - 1, 1)
        out = first + local_weight * gaps if k > 1 else first.copy()
        out[~active | ~np.isfinite(first)] = -np.inf
        return out

    rescan(np.flatnonzero(active))
    merges = np.zeros((num_merges, 2), np.int32)
    for step in range(num_merges):
        i = int(np.argmax(scores()))
        j = int(top_index[i, 0])
        keep, gone = min(i, j), max(i, j)
        a[keep, :] += a[gone, :]
        a[:, keep] += a[:, gone]
        a[gone, :] = 0.0
        a[:, gone] = 0.0
        s[keep] += s[gone]
        s[gone] = 0.0
        active[gone] = False
        top_values[gone] = -np.inf
        sq = np.maximum(s, np.float32(1.0)) ** 2
        column = a[:, keep] / sq[keep] + a[keep, :] / sq
        touched = ((top_index == gone) | (top_index == keep)).any(1) | (column > top_values[:, -1])
        touched[keep] = True
        rescan(np.flatnonzero(touched & active))
        merges[step] = keep, gone
    return merges


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="fashion_mnist")
    parser.add_argument("--neighbours", type=int, default=20, help="K_s (reference 20)")
    parser.add_argument("--target", type=int, default=10)
    parser.add_argument("--eta", type=float, default=0.9, help="unrolling rate per pass")
    parser.add_argument("--cache", type=int, default=16)
    parser.add_argument("--peer", action="store_true",
                        help="also run the NumPy merge scan (numpy_merge_scan) from the same state")
    args = parser.parse_args()

    config = config_lib.load_config("configs/dec.py")
    config.data.source = args.source
    if args.source == "digits":
        config.data.image_shape = (8, 8, 1)
    dataset = loader.load_dataset(config)
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
    sizes = np.bincount(np.asarray(labels), minlength=c).astype(np.float32)
    state = jgraph.merge_state(a_us, sizes)
    peer_a, peer_sizes = (np.array(a_us, np.float32), sizes.copy()) if args.peer else (None, None)
    del a_us
    active, passes, merges_done, merge_time, peer_time, same = c, 0, 0, 0.0, 0.0, 0
    while active > args.target:
        merges = min(math.ceil(args.eta * active), active - args.target)
        start = time.perf_counter()
        state, done = jgraph.merge_clusters(state, merges, cache_size=args.cache)
        jax.block_until_ready(state)
        merge_time += time.perf_counter() - start
        if args.peer:
            start = time.perf_counter()
            peer = numpy_merge_scan(peer_a, peer_sizes, merges)
            peer_time += time.perf_counter() - start
            done = np.asarray(done)
            diverged = np.flatnonzero(np.any(done != peer, axis=1))
            same += merges if len(diverged) == 0 else int(diverged[0])
            if len(diverged):
                i = int(diverged[0])
                print(f"  merge {merges_done + i}: jclust {done[i].tolist()}, NumPy "
                      f"{peer[i].tolist()}", flush=True)
            print(f"pass {passes}: {merges} merges, jclust {merge_time:.1f} s, NumPy "
                  f"{peer_time:.1f} s so far; "
                  + ("same merges" if len(diverged) == 0 else
                     f"first different merge: {int(diverged[0])}"), flush=True)
        active -= merges
        merges_done += merges
        passes += 1
        if args.peer and same < merges_done:
            # From here on the two scans merge different clusters: timing them further would not
            # compare like with like.
            break
    stopped = " (stopped after the pass with the first different merge)" if active > args.target else ""
    rows.append((f"merge scan: {merges_done} merges in {passes} passes (eta {args.eta}){stopped}",
                 merge_time, peak_rss_gib()))
    if args.peer:
        rows.append((f"NumPy peer, the same passes ({same} of {merges_done} merges identical; "
                     f"time ratio jclust / NumPy {merge_time / peer_time:.2f})",
                     peer_time, peak_rss_gib()))
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
