"""Every method's train steps on this machine's backend: images/s of each phase's jitted step, the
feature pass and the clustering step that opens the phase, through the trainer's own functions.

  python benchmarks/method_steps.py                              # all methods, Fashion-MNIST
  python benchmarks/method_steps.py --methods=odc,swav --steps=50
  python benchmarks/method_steps.py --synthetic                  # random images of FM's shape
  python benchmarks/method_steps.py --methods=dec:digits,odc:digits --steps=5   # a quick check

For each config (``configs/NAME.py``) and each of its phases: the state of a fresh run is built
(``jstate.init_state`` on the mesh of all devices), the method's clustering step that opens the
phase runs on a feature pass of the whole data set (as training does: k-means for DeepCluster and
ODC, the 1-NN over-clustering and final agglomeration for JULE, ...), then ``--warmup`` untimed
steps (the compile) and ``--steps`` timed steps on batches of the config's size drawn in the
trainer's way (host gather, ``put_batch``, the jitted step; the clock stops when the step's
outputs are ready). Prints a Markdown table for BENCHMARKS.md with the backend and devices.

``--synthetic`` writes a random uint8 [70000, 28, 28, 1] npz data set first: for machines without
Fashion-MNIST (a lent GPU that cannot download); the timings do not depend on the pixel values.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time

import jax
import numpy as np

from jclust import config_lib, methods
from jclust import inference
from jclust import loader
from jclust import schedule as jschedule
from jclust import state as jstate
from jclust.methods import ReclusterContext

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conv_speed import cpu_model  # noqa: E402

METHODS = ("dec", "idec", "deepcluster", "deepclusterv2", "odc", "swav", "jule", "nmm")


def synthetic_source(directory: str, n: int = 70000) -> str:
    rng = np.random.default_rng(0)
    path = os.path.join(directory, "synthetic_fm.npz")
    np.savez(path, image=rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
             label=rng.integers(0, 10, n).astype(np.int32))
    return f"npz:{path}"


def time_method(name: str, source: str | None, steps: int, warmup: int, seed: int) -> list[dict]:
    base_name, _, arg = name.partition(":")
    config = config_lib.load_config(os.path.join("configs", f"{base_name}.py")
                                    + (f":{arg}" if arg else ""))
    if source:
        config.data.source = source
    dataset = loader.load_dataset(config)
    method = methods.from_config(config, loader.data_spec_of(dataset))
    mesh = jstate.make_mesh()
    runner = inference.Runner(method, mesh, config.eval_batch_size, dataset.num_examples)
    bounds = jschedule.phase_bounds(method)
    rng = np.random.default_rng(seed)
    rows = []
    for index, phase in enumerate(method.phases):
        # A fresh state per phase: the steps donate theirs.
        state = runner.place(jstate.init_state(method, seed, dataset.inputs[:config.batch_size]))
        runner.features(state, dataset.inputs[:config.eval_batch_size])  # compiles
        start = time.perf_counter()
        features = jax.block_until_ready(runner.features(state, dataset.inputs))
        feature_s = time.perf_counter() - start
        recluster_s = None
        due, first = jschedule.recluster_due(method, bounds, bounds[index][0])
        if due:
            start = time.perf_counter()
            context = ReclusterContext(features, jax.random.key(seed), phase=index, first=first,
                                       inputs=dataset.inputs)
            params, cluster, _ = method.recluster(*jax.device_get((state.params, state.cluster)),
                                                  context)
            state = runner.place(state.replace(params=params, cluster=cluster))
            recluster_s = time.perf_counter() - start
        plan = None if method.sampler is None else method.sampler(jax.device_get(state.cluster))
        table = None if plan is None or plan.neighbours is None else np.asarray(plan.neighbours)
        step_fn = jstate.jit_train_steps(method, mesh, dataset.num_examples)[index]

        def one_step(state, step):
            idx = rng.choice(dataset.num_examples, config.batch_size, replace=False)
            batch = {"x": dataset.inputs[idx], "index": idx.astype(np.int32)}
            if table is not None:
                nbr = jschedule.draw_neighbours(table, idx, seed, step)
                batch.update(neighbour_x=dataset.inputs[nbr], neighbour_index=nbr)
            state, metrics = step_fn(state, runner.put_batch(batch, config.batch_size))
            return jax.block_until_ready(state), metrics

        start = time.perf_counter()
        for step in range(warmup):
            state, _ = one_step(state, step)
        compile_s = time.perf_counter() - start
        times = []
        for step in range(warmup, warmup + steps):
            start = time.perf_counter()
            state, _ = one_step(state, step)
            times.append(time.perf_counter() - start)
        median = float(np.median(times))
        rows.append(dict(method=name, phase=phase.name, batch=config.batch_size, step_s=median,
                         images_s=config.batch_size / median, warmup_s=compile_s,
                         feature_images_s=dataset.num_examples / feature_s,
                         recluster_s=recluster_s, n=dataset.num_examples))
        print(f"{name}/{phase.name}: {median * 1e3:.1f} ms a step, "
              f"{config.batch_size / median:,.0f} images/s", flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated config names, each optionally NAME:ARG")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per phase")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compile)")
    parser.add_argument("--source", default="", help="data source (default: the config's)")
    parser.add_argument("--synthetic", action="store_true",
                        help="random images of Fashion-MNIST's shape instead of the data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    names = [m for m in args.methods.split(",") if m]
    unknown = sorted({m.partition(":")[0] for m in names} - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    with tempfile.TemporaryDirectory() as tmp:
        source = synthetic_source(tmp) if args.synthetic else args.source
        rows = [row for name in names
                for row in time_method(name, source, args.steps, args.warmup, args.seed)]
    devices = jax.devices()
    print(f"\n{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
          f"`python benchmarks/method_steps.py {' '.join(argv or sys.argv[1:])}`; backend "
          f"{jax.default_backend()}, {len(devices)} x {devices[0].device_kind}; "
          f"{cpu_model()}, {os.cpu_count()} CPUs; "
          f"jax {jax.__version__}; N = {rows[0]['n'] if rows else 0}\n")
    print("| method | phase | batch | step (ms, median) | images/s | first steps incl. compile (s) "
          "| feature pass (images/s) | clustering step opening the phase (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        recluster = "–" if r["recluster_s"] is None else f"{r['recluster_s']:.1f}"
        print(f"| {r['method']} | {r['phase']} | {r['batch']} | {r['step_s'] * 1e3:.1f} | "
              f"{r['images_s']:,.0f} | {r['warmup_s']:.1f} | {r['feature_images_s']:,.0f} | "
              f"{recluster} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
