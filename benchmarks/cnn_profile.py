"""Where the small CNN's train step spends its time: each layer of jclust's SmallCNN alone, forward
and forward + backward, in jax (im2col and native convolutions) and, with ``--torch``, in torch.

  python benchmarks/cnn_profile.py --torch     # torch from a benchmark environment (PYTHONPATH)

Layers at batch 256 and Fashion-MNIST's 28x28x1 input, as in ``conv_speed.py``'s network:
conv3x3 1->32 (28x28), conv3x3 32->64 (28x28) + 2x2 max-pool, conv3x3 64->128 (14x14) + pool,
dense 6272->128; each with its ReLU. "forward + backward" is the value and the gradients with
respect to the layer's input and weights (what a train step needs), jitted in jax; in torch,
``loss.backward()`` on the layer output's sum. Median of ``--steps`` calls after 3 warm-ups.
Prints a Markdown table for BENCHMARKS.md with each layer's share of the jax step.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jclust.models.cnn import max_pool_2x2
from jclust.models.conv import conv3x3

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conv_speed import cpu_model, time_steps  # noqa: E402

BATCH = 256
# (name, input shape NHWC, output channels or dense units, pool after)
LAYERS = (("conv 1->32, 28x28", (28, 28, 1), 32, False),
          ("conv 32->64, 28x28, pool", (28, 28, 32), 64, True),
          ("conv 64->128, 14x14, pool", (14, 14, 64), 128, True),
          ("dense 6272->128", (6272,), 128, False))


def median_time(fn, steps: int) -> float:
    """Median seconds of ``steps`` calls of ``fn`` after 3 warm-up calls (the first compiles)."""
    return float(np.median(time_steps(fn, warmup=3, steps=steps)[1]))


def jax_layer(shape, out, pool, impl):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(BATCH,) + shape), jnp.float32)
    if len(shape) == 1:
        w = jnp.asarray(rng.normal(size=(shape[0], out)) * 0.01, jnp.float32)

        def layer(x, w):
            return jax.nn.relu(x @ w)
    else:
        w = jnp.asarray(rng.normal(size=(3, 3, shape[-1], out)) * 0.1, jnp.float32)

        def layer(x, w):
            y = jax.nn.relu(conv3x3(x, w, impl=impl))
            return max_pool_2x2(y) if pool else y

    forward = jax.jit(layer)
    both = jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(layer(x, w)), argnums=(0, 1)))
    return (lambda: jax.block_until_ready(forward(x, w)),
            lambda: jax.block_until_ready(both(x, w)))


def torch_layer(torch, shape, out, pool):
    torch.manual_seed(0)
    if len(shape) == 1:
        x = torch.randn(BATCH, shape[0], requires_grad=True)
        module = torch.nn.Sequential(torch.nn.Linear(shape[0], out), torch.nn.ReLU())
    else:
        x = torch.randn(BATCH, shape[-1], shape[0], shape[1], requires_grad=True)
        parts = [torch.nn.Conv2d(shape[-1], out, 3, padding=1), torch.nn.ReLU()]
        if pool:
            parts.append(torch.nn.MaxPool2d(2))
        module = torch.nn.Sequential(*parts)

    def forward():
        with torch.no_grad():
            module(x)

    def both():
        module.zero_grad()
        x.grad = None
        module(x).sum().backward()

    return forward, both


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--torch", action="store_true")
    parser.add_argument("--torch-threads", type=int, default=2)
    args = parser.parse_args()
    torch = None
    if args.torch:
        import torch
        torch.set_num_threads(args.torch_threads)
    rows = []
    for name, shape, out, pool in LAYERS:
        row = {"layer": name}
        impls = ("im2col", "native") if len(shape) > 1 else ("dense",)
        for impl in impls:
            fwd, both = jax_layer(shape, out, pool, impl)
            row[f"{impl} fwd"], row[f"{impl} both"] = median_time(fwd, args.steps), median_time(both, args.steps)
        if torch is not None:
            fwd, both = torch_layer(torch, shape, out, pool)
            row["torch fwd"], row["torch both"] = median_time(fwd, args.steps), median_time(both, args.steps)
        rows.append(row)
        print(row, flush=True)

    def jax_both(row):
        return row.get("im2col both", row.get("dense both"))

    total = sum(jax_both(r) for r in rows)
    print(f"\n{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
          f"`python benchmarks/cnn_profile.py {' '.join(sys.argv[1:])}`; {cpu_model()}, "
          f"{os.cpu_count()} CPUs; jax {jax.__version__}"
          + (f", torch {torch.__version__} ({args.torch_threads} threads)" if torch else "")
          + f"; batch {BATCH}; milliseconds, median of {args.steps}\n")
    print("| layer | jax fwd | jax fwd + bwd | share of the jax step | native conv fwd + bwd | "
          "torch fwd | torch fwd + bwd | jax / torch (fwd + bwd) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        fwd = r.get("im2col fwd", r.get("dense fwd"))
        both = jax_both(r)
        native = f"{r['native both'] * 1e3:.1f}" if "native both" in r else "–"
        t_fwd = f"{r['torch fwd'] * 1e3:.1f}" if "torch fwd" in r else "–"
        t_both = f"{r['torch both'] * 1e3:.1f}" if "torch both" in r else "–"
        ratio = f"{both / r['torch both']:.2f}" if "torch both" in r else "–"
        print(f"| {r['layer']} | {fwd * 1e3:.1f} | {both * 1e3:.1f} | {both / total:.0%} | "
              f"{native} | {t_fwd} | {t_both} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
