"""Clustering primitives side by side with their peers, in one run, as time ratios.

Sections (each prints a Markdown table for BENCHMARKS.md):

* ``kmeans``: jclust's ``kmeans`` against scikit-learn's ``KMeans(algorithm="lloyd")`` and faiss's
  ``Kmeans`` on the same data from the same initial centroids (k distinct random points of a
  seeded generator), 50 Lloyd iterations at most (``tol=0``: only strict convergence stops
  early), at k = 10 on raw Fashion-MNIST (70,000 x 784) and k = 1000 on its PCA-256 projection.
  Time per iteration = wall time of a whole fit / iterations run (jclust after one warm-up fit of
  the same shapes, so compilation is excluded; faiss includes its final search, jclust its final
  assignment), each fit after a 2 s pause so that no library's spinning worker threads (OpenBLAS,
  OpenMP) slow the next one. Agreement: fraction of labels equal to scikit-learn's, and the SSE ratio.
* ``streamed``: ``kmeans_streamed`` on 1,000,000 x 256 points (a seeded Gaussian mixture,
  float32, 1 GiB) into 10,000 clusters, in a fresh subprocess whose peak resident memory
  (``VmHWM``, the data and the JAX runtime included) is reported.
* ``sinkhorn``: ``sinkhorn_knopp`` (3 iterations, epsilon 0.05) on a 4096 x 3000 score batch
  against the same algorithm in torch (float32), median of 20 calls after 3 warm-ups; the codes
  are compared.

Usage:
  python benchmarks/primitives_speed.py [--sections kmeans,streamed,sinkhorn] [--seeds 0,1,2]
  python benchmarks/primitives_speed.py --synthetic   # where Fashion-MNIST cannot be installed

``--synthetic`` replaces the Fashion-MNIST pixels by seeded uniform noise of the same shape (a lent
GPU that cannot download): the time per iteration does not depend on the values (``tol=0``), the
label agreement does.

Peers are optional imports (``pip install scikit-learn faiss-cpu torch`` in the benchmark's
environment, or ``PYTHONPATH`` to a folder holding them); a missing peer is reported, not faked.
Threads: faiss and torch are set to 2 threads (the CI machine's cores).
"""

import argparse
import datetime
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jclust import cluster, data  # noqa: E402

THREADS = 2


def optional(name):
    try:
        return __import__(name)
    except ImportError:
        return None


def fashion_mnist() -> np.ndarray:
    images = data.load("fashion_mnist", image_shape=(28, 28, 1)).inputs
    return images.reshape(images.shape[0], -1).astype(np.float32) / 255.0


def sse(x, centroids, labels) -> float:
    diff = x.astype(np.float64) - np.asarray(centroids, np.float64)[labels]
    return float(np.einsum("ij,ij->", diff, diff))


def time_jclust(x, c0, max_iter):
    def fit():
        out = cluster.kmeans(x, c0.shape[0], key=jax.random.PRNGKey(0), init=c0,
                             max_iter=max_iter, tol=0.0)
        jax.block_until_ready(out)
        return out
    fit()  # compiles for these shapes
    t = time.perf_counter()
    out = fit()
    total = time.perf_counter() - t
    return total, int(out.n_iter), np.asarray(out.labels), np.asarray(out.centroids)


def time_sklearn(x, c0, max_iter):
    from sklearn.cluster import KMeans
    t = time.perf_counter()
    km = KMeans(c0.shape[0], init=c0, n_init=1, max_iter=max_iter, tol=0.0,
                algorithm="lloyd").fit(x)
    total = time.perf_counter() - t
    return total, int(km.n_iter_), km.labels_.astype(np.int32), km.cluster_centers_


def time_faiss(faiss, x, c0, max_iter):
    faiss.omp_set_num_threads(THREADS)
    km = faiss.Kmeans(x.shape[1], c0.shape[0], niter=max_iter, seed=0,
                      max_points_per_centroid=10**7, verbose=False)
    t = time.perf_counter()
    km.train(x, init_centroids=c0)
    _, labels = km.index.search(x, 1)
    total = time.perf_counter() - t
    return total, max_iter, labels[:, 0].astype(np.int32), km.centroids


def settled(fn, *args):
    time.sleep(2.0)
    return fn(*args)


def kmeans_section(seeds, max_iter=50, synthetic=False):
    sklearn, faiss = optional("sklearn"), optional("faiss")
    if synthetic:
        pixels = np.random.default_rng(0).random((70000, 784), dtype=np.float32)
    else:
        pixels = fashion_mnist()
    centred = pixels - pixels.mean(0)
    # PCA-256 by SVD of the covariance (float64), as scikit-learn's covariance_eigh solver does.
    cov = centred.T.astype(np.float64) @ centred.astype(np.float64) / (len(centred) - 1)
    vals, vecs = np.linalg.eigh(cov)
    pca256 = (centred @ vecs[:, ::-1][:, :256].astype(np.float32)).astype(np.float32)
    kind = "uniform noise" if synthetic else "raw pixels"
    cases = [(f"k = 10, {kind} 70,000 x 784", pixels, 10),
             (f"k = 1000, PCA-256 of the {kind} 70,000 x 256", pca256, 1000)]
    print("\n### k-means, same initial centroids\n")
    print("| data, k | implementation | s / iteration median [min, max] | iterations | "
          "labels equal to scikit-learn | SSE / scikit-learn's | jclust / this |")
    print("|---|---|---|---|---|---|---|")
    for title, x, k in cases:
        rows = {"jclust": [], "scikit-learn": [], "faiss-cpu": []}
        for seed in seeds:
            c0 = x[np.random.default_rng(seed).choice(len(x), k, replace=False)]
            # A pause before each timed fit: BLAS and OpenMP worker threads of the previous one
            # spin-wait for a while, and on 2 cores they would slow whatever runs next.
            runs = {"jclust": settled(time_jclust, x, c0, max_iter)}
            if sklearn is not None:
                runs["scikit-learn"] = settled(time_sklearn, x, c0, max_iter)
            if faiss is not None:
                runs["faiss-cpu"] = settled(time_faiss, faiss, x, c0, max_iter)
            ref = runs.get("scikit-learn")
            for name, (total, iters, labels, centroids) in runs.items():
                agree = float(np.mean(labels == ref[2])) if ref else float("nan")
                ratio = sse(x, centroids, labels) / sse(x, ref[3], ref[2]) if ref else float("nan")
                rows[name].append((total / iters, iters, agree, ratio))
        ours = np.median([r[0] for r in rows["jclust"]])
        for name, values in rows.items():
            if not values:
                print(f"| {title} | {name} | not installed | | | | |")
                continue
            per_iter = [v[0] for v in values]
            med = np.median(per_iter)
            print(f"| {title} | {name} | {med:.4f} [{min(per_iter):.4f}, {max(per_iter):.4f}] | "
                  f"{', '.join(str(v[1]) for v in values)} | "
                  f"{', '.join(f'{v[2]:.4f}' for v in values)} | "
                  f"{', '.join(f'{v[3]:.6f}' for v in values)} | {ours / med:.2f}x |")
        sys.stdout.flush()


def peak_gib() -> float:
    """This process's peak resident memory (VmHWM; ``ru_maxrss`` would include the parent's peak,
    which Linux carries across fork and exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def streamed_child(n, d, k, iters):
    """Runs in a fresh process: builds the data, clusters it, prints one result line."""
    rng = np.random.default_rng(0)
    x = np.empty((n, d), np.float32)
    centres = rng.normal(size=(k, d)).astype(np.float32)
    for start in range(0, n, 65536):  # filled in blocks: no float64 temporary of the whole set
        m = min(65536, n - start)
        x[start:start + m] = centres[rng.integers(0, k, m)] + 0.5 * rng.standard_normal(
            (m, d), dtype=np.float32)
    rss_data = peak_gib()
    t = time.perf_counter()
    out = cluster.kmeans_streamed(x, k, key=jax.random.PRNGKey(0), max_iter=iters, tol=0.0)
    total = time.perf_counter() - t
    peak = peak_gib()
    print(f"RESULT {total:.1f} {int(out.n_iter)} {peak:.3f} {rss_data:.3f} "
          f"{len(np.unique(out.labels))} {float(out.inertia) / n:.4f}")


def streamed_section(n=1_000_000, d=256, k=10_000, iters=3):
    result = subprocess.run([sys.executable, __file__, "--streamed-child",
                             f"{n},{d},{k},{iters}"], capture_output=True, text=True)
    line = next((l for l in result.stdout.splitlines() if l.startswith("RESULT")), None)
    if line is None:
        print(result.stdout[-2000:], result.stderr[-3000:])
        raise SystemExit("streamed k-means child failed")
    total, n_iter, peak, rss_data, used, mse = line.split()[1:]
    gflop = 2.0 * n * d * k * (int(n_iter) + 1) / 1e9
    print("\n### Memory-bounded k-means (`kmeans_streamed`)\n")
    print("| points | k | iterations (+ final assignment) | wall s | GFLOP/s (distance matmuls) | "
          "peak host memory, data included | data alone | clusters used |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {n:,} x {d} float32 | {k:,} | {n_iter} (+1) | {float(total):.0f} | "
          f"{gflop / float(total):.0f} | **{float(peak):.2f} GiB** | {float(rss_data):.2f} GiB | "
          f"{used} |")
    sys.stdout.flush()


def torch_sinkhorn(torch, scores, epsilon, iters):
    q = torch.exp((scores - scores.max()) / epsilon)
    q = q / q.sum()
    b, k = q.shape
    for _ in range(iters):
        q = q / (q.sum(dim=0, keepdim=True) * k)
        q = q / (q.sum(dim=1, keepdim=True) * b)
    return q * b


def sinkhorn_section(b=4096, k=3000, iters=3, epsilon=0.05, repeats=20):
    torch = optional("torch")
    scores = np.random.default_rng(0).uniform(-1, 1, (b, k)).astype(np.float32)
    fn = jax.jit(lambda s: cluster.sinkhorn_knopp(s, epsilon=epsilon, num_iters=iters).codes)
    x = jnp.asarray(scores)

    def timed(call):
        for _ in range(3):
            call()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
        return times

    ours = timed(lambda: fn(x).block_until_ready())
    rows = [("jclust `sinkhorn_knopp` (jit)", ours, "")]
    if torch is not None:
        torch.set_num_threads(THREADS)
        ts = torch.from_numpy(scores)
        with torch.no_grad():
            theirs = timed(lambda: torch_sinkhorn(torch, ts, epsilon, iters))
            diff = np.max(np.abs(torch_sinkhorn(torch, ts, epsilon, iters).numpy()
                                 - np.asarray(fn(x))))
        rows.append((f"torch {torch.__version__} ({THREADS} threads)", theirs,
                     f"largest absolute difference of the codes {diff:.1e}"))
    print(f"\n### Sinkhorn-Knopp, {b} x {k} scores, {iters} iterations, epsilon {epsilon}\n")
    print("| implementation | ms median [min, max] (n) | jclust / this | note |")
    print("|---|---|---|---|")
    for name, times, note in rows:
        med = np.median(times)
        print(f"| {name} | {1e3 * med:.1f} [{1e3 * min(times):.1f}, {1e3 * max(times):.1f}] "
              f"({len(times)}) | {np.median(ours) / med:.2f}x | {note} |")
    if torch is None:
        print("| torch | not installed | | |")
    sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default="kmeans,streamed,sinkhorn")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--synthetic", action="store_true",
                        help="uniform noise of Fashion-MNIST's shape instead of the data")
    parser.add_argument("--streamed-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.streamed_child:
        streamed_child(*map(int, args.streamed_child.split(",")))
        return
    versions = [f"jax {jax.__version__}"]
    for name in ("sklearn", "faiss", "torch"):
        module = optional(name)
        versions.append(f"{name} {module.__version__}" if module else f"{name} absent")
    command, found = " ".join(sys.argv), ", ".join(versions)
    print(f"`python {command}`, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, backend "
          f"{jax.default_backend()} ({jax.devices()[0].device_kind}); "
          f"Python {platform.python_version()}, {found}")
    seeds = [int(s) for s in args.seeds.split(",")]
    sections = args.sections.split(",")
    if "kmeans" in sections:
        kmeans_section(seeds, synthetic=args.synthetic)
    if "sinkhorn" in sections:
        sinkhorn_section()
    if "streamed" in sections:
        streamed_section()


if __name__ == "__main__":
    main()
