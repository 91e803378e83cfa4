"""Where JULE's graph-degree linkage (GDL) collapses on Fashion-MNIST, and what the coarse merges do.

  python benchmarks/jule_linkage_check.py --pixels
      GDL agglomeration of the raw pixels (1-NN over-clustering, eta = 0.9 passes), with the
      cluster sizes, purity and NMI at fractions of every pass: where the big clusters form.
  python benchmarks/jule_linkage_check.py --workdir=runs/q_jule/seed0 --step=4000
      The last merge pass of a JULE run from its memberships at checkpoint ``--step`` (the
      training clusters before they reach the target) on that checkpoint's embeddings, by GDL
      (as the reference: lambda 1, lambda 0, eta 0.5 passes) and by linkages of the clusters'
      mean embeddings (average linkage as ``jule.coarse_linkage=average``, Ward, complete).

Prints Markdown tables for BENCHMARKS.md. Labels are used for the scores only.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import shutil
import tempfile

import jax
import numpy as np
from scipy.cluster import hierarchy

from jclust import config_lib, metrics
from jclust import inference
from jclust import loader
from jclust.cluster import graph as jgraph
from jclust.methods import jule


def describe(labels, y) -> str:
    sizes = np.sort(np.bincount(labels))[::-1]
    scores = metrics.evaluate(y, labels)
    return (f"{len(sizes)} | {', '.join(map(str, sizes[:5]))} | {sizes[0] / len(labels):.3f} | "
            f"{scores['purity']:.3f} | {scores['nmi']:.3f}")


def gdl_merges(graph, labels, count, *, local_weight=1.0):
    c = int(labels.max()) + 1
    a_us, _ = jgraph.gdl_affinity(graph, labels, c, symmetric=False)
    state = jgraph.merge_state(a_us, np.bincount(labels, minlength=c))
    state, _ = jgraph.merge_clusters(state, count, num_neighbours=5, local_weight=local_weight,
                                     cache_size=16)
    return np.asarray(jgraph.resolve_labels(state.parent, labels))


def pixels(eta: float) -> None:
    config = config_lib.load_config("configs/dec.py")
    dataset = loader.load_dataset(config)
    x = dataset.inputs.reshape(dataset.num_examples, -1).astype(np.float32)
    y = dataset.labels
    graph = jgraph.affinity_graph(x, 20)
    labels = np.asarray(jgraph.nearest_neighbour_clusters(graph.indices[:, 0]))
    print(f"\n{datetime.date.today()}, Fashion-MNIST pixels, GDL (K_s 20, K_c 5, lambda 1, "
          f"eta {eta})\n")
    print("| pass | merges done of the pass | clusters | largest five | largest share | purity "
          "| NMI |")
    print("|---|---|---|---|---|---|---|")
    print(f"| start | - | {describe(labels, y)} |")
    number = 0
    while labels.max() + 1 > 10:
        c = int(labels.max()) + 1
        count = min(math.ceil(eta * c), c - 10)
        number += 1
        for fraction in (0.5, 0.8, 1.0):
            done = max(1, int(count * fraction))
            merged = gdl_merges(graph, labels, done)
            print(f"| {number} (from {c}) | {done} of {count} | {describe(merged, y)} |",
                  flush=True)
        labels = merged


def run_at_step(workdir: str, step: int):
    """(config, method, state) of checkpoint ``step`` of a run (a read-only view of it)."""
    view = tempfile.mkdtemp()
    shutil.copy(os.path.join(workdir, "run.json"), view)
    os.mkdir(os.path.join(view, "checkpoints"))
    os.symlink(os.path.abspath(os.path.join(workdir, "checkpoints", str(step))),
               os.path.join(view, "checkpoints", str(step)))
    config, method, state, _ = inference.load_run(view)
    shutil.rmtree(view)
    return config, method, state


def last_pass(workdir: str, step: int) -> None:
    config, method, state = run_at_step(workdir, step)
    dataset = loader.load_dataset(config)
    y = dataset.labels
    embed = jax.jit(method.embed)
    z = np.concatenate([np.asarray(embed(state.params, state.model_state,
                                         dataset.inputs[i:i + 2048]))
                        for i in range(0, dataset.num_examples, 2048)])
    labels = np.unique(np.asarray(state.cluster.labels), return_inverse=True)[1].astype(np.int32)
    target = config.num_clusters
    c = int(labels.max()) + 1
    graph = jgraph.affinity_graph(z, config.jule.neighbours)
    sums = np.zeros((c, z.shape[1])); np.add.at(sums, labels, z.astype(np.float64))
    means = sums / np.bincount(labels)[:, None]

    def eta_passes(eta):
        out = labels
        while out.max() + 1 > target:
            k = int(out.max()) + 1
            out = gdl_merges(graph, out, min(math.ceil(eta * k), k - target))
        return out

    def of_means(method_name, metric):
        tree = hierarchy.linkage(means, method=method_name, metric=metric)
        return hierarchy.cut_tree(tree, n_clusters=target)[:, 0][labels]

    rules = {
        "GDL, one pass (the reference)": lambda: gdl_merges(graph, labels, c - target),
        "GDL, lambda 0": lambda: gdl_merges(graph, labels, c - target, local_weight=0.0),
        "GDL, eta 0.5 passes (graph rebuilt, no training)": lambda: eta_passes(0.5),
        "average linkage (cosine) of the cluster means (jule.coarse_linkage=average)":
            lambda: jule.coarse_merge(z, labels, target),
        "Ward linkage of the cluster means": lambda: of_means("ward", "euclidean"),
        "complete linkage (cosine) of the cluster means": lambda: of_means("complete", "cosine"),
    }
    start = metrics.evaluate(y, labels)
    print(f"\n{datetime.date.today()}, {workdir} at step {step}: {c} training clusters (purity "
          f"{start['purity']:.3f}, NMI {start['nmi']:.3f}) merged to {target}\n")
    print("| last pass | ACC | NMI | cluster sizes |")
    print("|---|---|---|---|")
    for name, rule in rules.items():
        merged = np.asarray(rule())
        scores = metrics.evaluate(y, merged)
        sizes = np.sort(np.bincount(merged))[::-1]
        print(f"| {name} | {scores['acc']:.4f} | {scores['nmi']:.4f} | "
              f"{', '.join(map(str, sizes))} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pixels", action="store_true")
    parser.add_argument("--eta", type=float, default=0.9)
    parser.add_argument("--workdir", default="")
    parser.add_argument("--step", type=int, default=0)
    args = parser.parse_args()
    if args.pixels:
        pixels(args.eta)
    if args.workdir:
        last_pass(args.workdir, args.step)
    if not (args.pixels or args.workdir):
        parser.error("give --pixels and/or --workdir with --step")


if __name__ == "__main__":
    main()
