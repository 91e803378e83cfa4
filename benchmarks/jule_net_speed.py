"""Train-step cost of JULE's two networks on this backend: the reference's MNIST network
(``jule_cnn``, 5x5 VALID convs, native or im2col lowering) against the small CNN of ``:small_cnn``.

  python benchmarks/jule_net_speed.py [--batch=100] [--repeats=5] [--steps=20]

Times a jitted forward + backward of the backbone and the 160-d head on a batch of 28x28 images
(what one JULE step costs apart from the triplet loss and the optimiser), min over repeats.
"""

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jclust import cluster as jcluster  # noqa: E402
from jclust import config_lib, models  # noqa: E402


def step_seconds(model_config, x, repeats, steps):
    backbone = models.make_backbone(model_config, x.shape[1:])
    params, state = backbone.init(jax.random.PRNGKey(0), x[:2])
    head = jax.random.normal(jax.random.PRNGKey(1), (backbone.feature_dim, 160)) * 0.01

    def loss(p):
        feats, _ = backbone.apply(p[0], state, x, True)
        return jnp.sum(jcluster.l2_normalize(feats @ p[1]) ** 2)

    grad = jax.jit(jax.grad(loss))
    jax.block_until_ready(grad((params, head)))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            out = grad((params, head))
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - start) / steps)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (args.batch, 28, 28, 1), np.uint8))
    rows = []
    for impl in ("im2col", "native"):
        cfg = config_lib.jule_cnn_model()
        cfg.conv_impl = impl
        rows.append((f"jule_cnn, {impl}", step_seconds(cfg, x, args.repeats, args.steps)))
    small = config_lib.small_cnn_model(pool_first=True)
    rows.append(("small_cnn (pool_first), auto", step_seconds(small, x, args.repeats, args.steps)))
    base = rows[0][1]
    print(f"backend {jax.default_backend()}, batch {args.batch}, min of {args.repeats} x "
          f"{args.steps} steps")
    print("| network | ms / step | ratio to jule_cnn im2col |\n|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds * 1e3:.1f} | {seconds / base:.2f} |")


if __name__ == "__main__":
    main()
