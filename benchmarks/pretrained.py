"""Pretrained features on a labelled image source: k-means on them, the triangle method's fused
codes, and a linear probe of the codes against the raw features (Sitaula et al.'s claim).

  python benchmarks/openclipart_subset.py runs/openclipart7
  python benchmarks/pretrained.py --data=folder:runs/openclipart7 --seeds=0,1,2 \
      --cache=runs/feature_cache

One extraction (EfficientNet-Lite0's ImageNet weights, layers group5 and pooled at 224, cached)
serves every row. Per seed:

* clustering of every image, K = the number of classes, ACC/NMI/ARI: k-means (k-means++, 10
  restarts) on the pooled head's features as they are (what DELIUS's DEC starts from); on both
  layers (each standardised, then each L2-normalised and concatenated); and the triangle
  method's fit (configs/triangle.py's defaults: codebooks of 64 and 256, spherical k-means);
* linear probe (jclust.metrics.linear_probe, l2 = 1e-3): a stratified split, 70 % to fit and 30 %
  held out, drawn by the seed; the triangle codebooks and standardisation are fitted on the
  training split alone, then both splits encoded. Probes of the fused codes (320-d), of each
  layer's code, and of the raw features (112-d, 1280-d, both 1392-d); feature size, and the
  time to encode the held-out split (triangle codes) and to classify it.

Prints one markdown table of means ± sd over the seeds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jclust import cluster as jcluster  # noqa: E402
from jclust import feature_cache, features, metrics  # noqa: E402
from jclust.methods import triangle  # noqa: E402

LAYERS = ("group5", "pooled")
CODEBOOKS = (64, 256)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A boolean mask of the training rows: ``fraction`` of each class, drawn by ``seed``."""
    rng = np.random.default_rng(seed)
    train = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        train[rows[:int(round(fraction * len(rows)))]] = True
    return train


def standardised_l2(parts: list[np.ndarray]) -> np.ndarray:
    out = []
    for p in parts:
        p = (p - p.mean(0)) / np.maximum(p.std(0), 1e-12)
        out.append(p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12))
    return np.concatenate(out, axis=1)


def clustering_rows(x: np.ndarray, widths, labels: np.ndarray, k: int, seed: int,
                    codebooks=CODEBOOKS, triangle_row: bool = True) -> dict:
    key = jax.random.PRNGKey(seed)
    pooled = x[:, widths[0]:]
    rows = {}
    km = jcluster.kmeans(pooled, k, key=key, n_init=10)
    rows["k-means, pooled head (1280-d)"] = metrics.evaluate(labels, np.asarray(km.labels))
    both = standardised_l2([x[:, :widths[0]], pooled])
    km = jcluster.kmeans(both, k, key=key, n_init=10)
    rows["k-means, both layers (1392-d)"] = metrics.evaluate(labels, np.asarray(km.labels))
    if not triangle_row:
        return rows
    evaluation = triangle.triangle_evaluation(widths, codebooks, k, n_init=3, eval_n_init=10)
    fitted = evaluation.fit(x, None, key)
    assigned, _ = evaluation.assign(fitted, jnp.asarray(x))
    rows[f"triangle method, fused codes ({sum(codebooks)}-d)"] = metrics.evaluate(
        labels, np.asarray(assigned))
    return rows


def probe_rows(x: np.ndarray, widths, labels: np.ndarray, seed: int, codebooks=CODEBOOKS) -> dict:
    train = stratified_split(labels, 0.7, seed)
    evaluation = triangle.triangle_evaluation(widths, codebooks, 2, n_init=3, eval_n_init=1)
    fitted = evaluation.fit(x[train], None, jax.random.PRNGKey(seed))  # codebooks: train only
    encode = jax.jit(lambda f: triangle.fused_codes(fitted, f, widths))
    encode(x[~train]).block_until_ready()  # compiled before timing
    start = time.perf_counter()
    test_codes = np.asarray(encode(x[~train]))
    encode_seconds = time.perf_counter() - start
    codes = np.zeros((len(x), sum(codebooks)), np.float32)
    codes[train], codes[~train] = np.asarray(encode(x[train])), test_codes
    inputs = {"triangle codes, fused": (codes, encode_seconds),
              "triangle code, group5": (codes[:, :codebooks[0]], None),
              "triangle code, pooled": (codes[:, codebooks[0]:], None),
              "raw, both layers": (x, None), "raw, group5": (x[:, :widths[0]], None),
              "raw, pooled": (x[:, widths[0]:], None)}
    rows = {}
    for name, (f, seconds) in inputs.items():
        out = metrics.linear_probe(f[train], labels[train], f[~train], labels[~train], l2=1e-3)
        start = time.perf_counter()
        np.argmax((f[~train] - out.mean) / out.scale @ out.weights + out.biases, axis=1)
        rows[name] = {"probe_acc": out.accuracy, "dim": f.shape[1], "converged": out.converged,
                      "classify_ms": 1e3 * (time.perf_counter() - start),
                      **({"encode_ms": 1e3 * seconds} if seconds is not None else {})}
    return rows


def summary(values: list[float]) -> str:
    values = np.asarray(values, np.float64)
    return f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--cache", default="runs/feature_cache")
    parser.add_argument("--codebooks", default="64,256", help="K of each layer's codebook")
    parser.add_argument("--image-size", type=int, default=224,
                        help="the network's input size (Lite0 was trained at 224)")
    parser.add_argument("--limit", type=int, default=0, help="the first LIMIT images only (0: all)")
    parser.add_argument("--no-probe", action="store_true", help="the clustering rows only")
    parser.add_argument("--no-triangle", action="store_true",
                        help="k-means rows only (the triangle fit has its own command: "
                             "configs/triangle.py)")
    args = parser.parse_args()
    codebooks = tuple(int(c) for c in args.codebooks.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    spec = features.Spec("efficientnet_lite0", layers=LAYERS, image_size=args.image_size,
                         normalize_layers=False)
    os.makedirs(args.cache, exist_ok=True)
    start = time.perf_counter()
    loaded = feature_cache.load(args.data, spec, limit=args.limit, read_dirs=[args.cache],
                                write_dir=args.cache)
    seconds = time.perf_counter() - start
    x, labels = loaded.dataset.inputs, loaded.dataset.labels
    widths = tuple(loaded.record["layers"].values())
    k = int(labels.max()) + 1
    counts = dict(zip(loaded.dataset.class_names, np.bincount(labels).tolist()))
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"{args.data}: {len(x)} images, {k} classes {counts}; features {widths} at "
          f"{args.image_size}px ({seconds:.0f} s to extract or read); codebooks {codebooks}; "
          f"seeds {seeds}; {now}")
    clusters, probes = {}, {}
    for seed in seeds:
        for name, r in clustering_rows(x, widths, labels, k, seed, codebooks,
                                       triangle_row=not args.no_triangle).items():
            clusters.setdefault(name, []).append(r)
        if not args.no_probe:
            for name, r in probe_rows(x, widths, labels, seed, codebooks).items():
                probes.setdefault(name, []).append(r)
    print("\n| clustering (all images, K = classes) | ACC | NMI | ARI |\n|---|---|---|---|")
    for name, rs in clusters.items():
        cells = " | ".join(summary([r[m] for r in rs]) for m in ("acc", "nmi", "ari"))
        print(f"| {name} | {cells} |")
    if args.no_probe:
        return
    print("\n| linear probe (70/30 stratified) | held-out accuracy | dim | encode held-out (ms) "
          "| classify held-out (ms) | converged |\n|---|---|---|---|---|---|")
    for name, rs in probes.items():
        encode = summary([r["encode_ms"] for r in rs]) if "encode_ms" in rs[0] else "–"
        print(f"| {name} | {summary([r['probe_acc'] for r in rs])} | {rs[0]['dim']} | {encode} | "
              f"{summary([r['classify_ms'] for r in rs])} | {all(r['converged'] for r in rs)} |")


if __name__ == "__main__":
    main()
