"""Train-step throughput of jclust's SmallCNN (native vs im2col convs) and the DEC autoencoder.

Times one full training step (forward + backward + optimiser update, jitted, with
the train state donated) on random data, each step individually with
``block_until_ready``, and prints Markdown ready to paste into BENCHMARKS.md:

  * SmallCNN on 28x28x1, softmax cross-entropy on random labels, SGD momentum
    0.9, with ``conv_impl="native"`` and ``conv_impl="im2col"``;
  * the DEC autoencoder 784-500-500-2000-10-2000-500-500-784, MSE, Adam;
  * with ``--torch`` (and torch importable), the same two networks in torch
    (NCHW, ``torch.set_num_threads(2)``).

Usage:
  python benchmarks/conv_speed.py --batch 256 --steps 30 --warmup 5 --torch

torch is not a jclust dependency; to time it, run this script from a separate
environment that has both (e.g. jax + jclust installed with ``--no-deps`` next
to a CPU torch wheel).
"""

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
from typing import Callable

import numpy as np

import jax
import jax.numpy as jnp
import optax

from jclust.models import MLPAutoencoder, SmallCNN

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
AE_DIMS = (784, 500, 500, 2000, 10)


# ----------------------------------------------------------------- reporting


def cpu_model() -> str:
    """CPU description from /proc/cpuinfo, else ``platform.processor()``.

    VMs often report only "AMD EPYC", so the family/model numbers and the widest
    SIMD extension are added: they decide how fast XLA's convolutions are (an
    AVX2-only Zen 3 and an AVX-512 Zen 4 behave very differently).
    """
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    if "model name" not in info:
        return platform.processor() or "unknown"
    flags = info.get("flags", "").split()
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return (
        f"{info['model name']} (family {info.get('cpu family', '?')} "
        f"model {info.get('model', '?')}, {simd})"
    )


def usable_cpus() -> int:
    """CPUs this process may run on (what ``nproc`` prints)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 0


def time_steps(step: Callable[[], object], warmup: int, steps: int) -> tuple[float, list[float]]:
    """Runs ``step`` (which must block until done) warmup + steps times.

    Returns:
      (seconds for the first call, which includes compilation; list of the
      ``steps`` timed calls after the warm-up, in seconds).
    """
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return first, times


def table_row(name: str, variant: str, batch: int, first: float | None, times: list[float]) -> str:
    """One Markdown row: step time median [min, max] (n), images/s median [worst, best]."""
    t = np.asarray(times)
    med, lo, hi = np.median(t), t.min(), t.max()
    first_s = "–" if first is None else f"{first:.1f} s"
    return (
        f"| {name} | {variant} | {batch} | {med:.3f} [{lo:.3f}, {hi:.3f}] ({len(t)}) "
        f"| **{batch / med:,.0f}** [{batch / hi:,.0f}, {batch / lo:,.0f}] | {first_s} |"
    )


# ----------------------------------------------------------------- jax


def jax_cnn_step(impl: str, batch: int, seed: int) -> Callable[[], object]:
    """A SmallCNN SGD-momentum step closure on fixed random data (state donated)."""
    model = SmallCNN(conv_impl=impl, num_outputs=NUM_CLASSES)
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((batch, *IMAGE_SHAPE), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, NUM_CLASSES, batch))
    params = model.init(jax.random.key(seed), x[:1])
    tx = optax.sgd(0.01, momentum=0.9)

    def loss_fn(params, x, y):
        logits = model.apply(params, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def train_step(state, x, y):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    train_step = jax.jit(train_step, donate_argnums=0)
    state = [(params, tx.init(params))]

    def run():
        state[0], loss = train_step(state[0], x, y)
        loss.block_until_ready()

    return run


def jax_ae_step(batch: int, seed: int) -> Callable[[], object]:
    """A DEC-autoencoder Adam/MSE step closure on fixed random data (state donated)."""
    model = MLPAutoencoder(output_dim=AE_DIMS[0], hidden=AE_DIMS[1:-1], embed_dim=AE_DIMS[-1])
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.uniform(size=(batch, AE_DIMS[0])).astype(np.float32))
    params = model.init(jax.random.key(seed), x[:1])
    tx = optax.adam(1e-3)

    def loss_fn(params, x):
        _, x_rec = model.apply(params, x)
        return jnp.mean((x_rec - x) ** 2)

    def train_step(state, x):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, x)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    train_step = jax.jit(train_step, donate_argnums=0)
    state = [(params, tx.init(params))]

    def run():
        state[0], loss = train_step(state[0], x)
        loss.block_until_ready()

    return run


# ----------------------------------------------------------------- torch


def torch_cnn_step(torch, batch: int, seed: int) -> Callable[[], object]:
    """The same SmallCNN in torch (NCHW), SGD momentum 0.9."""
    nn = torch.nn
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128 * 7 * 7, 128), nn.ReLU(),
        nn.Linear(128, NUM_CLASSES),
    )  # fmt: skip
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 896_906, n_params
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal((batch, 1, 28, 28), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, NUM_CLASSES, batch))
    loss_fn = nn.CrossEntropyLoss()

    def run():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        loss.item()

    return run


def torch_ae_step(torch, batch: int, seed: int) -> Callable[[], object]:
    """The same DEC autoencoder in torch, Adam/MSE."""
    nn = torch.nn
    torch.manual_seed(seed)
    dims = list(AE_DIMS) + list(reversed(AE_DIMS[:-1]))
    layers = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        # ReLU everywhere except after the embedding and the reconstruction.
        if i not in (len(AE_DIMS) - 2, len(dims) - 2):
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.uniform(size=(batch, AE_DIMS[0])).astype(np.float32))

    def run():
        opt.zero_grad(set_to_none=True)
        loss = torch.mean((model(x) - x) ** 2)
        loss.backward()
        opt.step()
        loss.item()

    return run


# ----------------------------------------------------------------- main


def main(argv=None) -> None:
    """Parses arguments, runs the timings and prints the Markdown report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256, help="SmallCNN batch size")
    p.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (incl. compile)")
    p.add_argument("--torch", action="store_true", help="also time torch, if importable")
    p.add_argument(
        "--ae", action=argparse.BooleanOptionalAction, default=True,
        help="time the DEC autoencoder step too (default: on)",
    )  # fmt: skip
    p.add_argument("--ae-batch", type=int, default=256, help="autoencoder batch size")
    p.add_argument("--torch-threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch = None
    torch_note = "not requested (--torch)"
    if args.torch:
        try:
            import torch  # noqa: F811

            torch.set_num_threads(args.torch_threads)
            torch_note = f"{torch.__version__} ({torch.get_num_threads()} threads)"
        except ImportError:
            torch = None
            torch_note = "missing (`import torch` failed); torch rows skipped"

    import flax

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = " ".join(shlex.quote(a) for a in ["python", *sys.argv])
    print(f"- Command: `{cmd}`")
    print(f"- Date: {now}")
    print(
        f"- Machine: {cpu_model()} (platform.processor: {platform.processor() or 'n/a'}), "
        f"nproc {usable_cpus()}, os.cpu_count {os.cpu_count()}"
    )
    print(
        f"- Python {platform.python_version()}, jax {jax.__version__} "
        f"(backend {jax.default_backend()}, {jax.device_count()} device(s)), "
        f"flax {flax.__version__}, optax {optax.__version__}, torch {torch_note}"
    )
    # A busy machine distorts everything, torch's OpenMP barriers most of all.
    print("- Load average (1, 5, 15 min) at start: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg()))
    if os.environ.get("XLA_FLAGS"):
        print(f"- XLA_FLAGS: `{os.environ['XLA_FLAGS']}`")
    print(
        f"- Warm-up: {args.warmup} step(s), the first including compilation; "
        f"then {args.steps} steps, each timed alone."
    )
    print()
    print("| network | framework / variant | batch | step s median [min, max] (n) | images/s median [worst, best] | compile + 1st step |")
    print("|---|---|---|---|---|---|")

    median = {}  # key -> median step seconds

    def bench(key, network, variant, batch, make_step, jitted):
        first, times = time_steps(make_step(), args.warmup, args.steps)
        median[key] = float(np.median(times))
        print(table_row(network, variant, batch, first if jitted else None, times), flush=True)

    cnn = "small CNN 28×28×1"
    jv, tv = f"jax {jax.__version__}", f"torch {torch.__version__}" if torch else ""
    for impl in ("native", "im2col"):
        bench(impl, cnn, f"{jv}, conv_impl={impl}", args.batch,
              lambda: jax_cnn_step(impl, args.batch, args.seed), True)  # fmt: skip
    if torch is not None:
        bench("torch_cnn", cnn, tv, args.batch,
              lambda: torch_cnn_step(torch, args.batch, args.seed), False)  # fmt: skip
    if args.ae:
        ae = "DEC AE " + "-".join(map(str, AE_DIMS + AE_DIMS[-2::-1])) + " (MSE, Adam)"
        bench("jax_ae", ae, jv, args.ae_batch, lambda: jax_ae_step(args.ae_batch, args.seed), True)
        if torch is not None:
            bench("torch_ae", ae, tv, args.ae_batch,
                  lambda: torch_ae_step(torch, args.ae_batch, args.seed), False)  # fmt: skip

    print()
    print("- Load average (1, 5, 15 min) at end: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg()))
    print(
        f"- small CNN step time, native / im2col: **{median['native'] / median['im2col']:.2f}×** "
        "(median / median; > 1 means im2col is faster)"
    )
    if "torch_cnn" in median:
        print(f"- small CNN step time, im2col / torch: {median['im2col'] / median['torch_cnn']:.2f}×")
    if "torch_ae" in median:
        print(f"- DEC AE step time, jax / torch: {median['jax_ae'] / median['torch_ae']:.2f}×")


if __name__ == "__main__":
    main()
