"""Measurement (session 32) behind ``pretrain.max_input_power`` (configs/dec.py): how far DEC's
pretraining SGD (momentum 0.9, batch 256, the d-500-500-2000-10 autoencoder) is from diverging on
a panel member, per rate. Prints the member's E||x||^2 and the top eigenvalue of E[x x^T], then
per rate the mean reconstruction error of the last 20 of ``STEPS`` steps, or the step at which
it passed 1e3 or went non-finite:

  python docs/experiments/dec_input_power.py MEMBER STEPS RATES [sgd|adam|sgdclipC|sgdwarmN] [DATA_DIR]
  python docs/experiments/dec_input_power.py oc7 500 1,0.3,0.1,0.03

MEMBER is a member of benchmarks/panel.py ("fm70k" stands for its first 10,000 images);
``sgdclipC`` clips the gradient's global norm at C, ``sgdwarmN`` warms the rate up over N steps.
Session 32 (AMD EPYC Zen 4, seed 0, 500 steps):

  oc7:      E||x||^2 = 1682.9, lambda_max = 1528.0; rate 1: diverged at step 22; 0.3: 0.0565;
            0.1: 0.0660; 0.03: 0.0661; rate 1 clipped at norm 1: 0.0925; rate 1 warmed up over
            300 steps: diverged at step 192
  fm70k:    E||x||^2 = 162.5, lambda_max = 110.4; rate 1: 0.0354; 2: 0.0864; 4: diverged at 64;
            8: diverged at 8
  digits28: E||x||^2 = 155.7, lambda_max = 120.6; rate 1: 0.0324; 2: 0.0391; 4: diverged at 16
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from benchmarks import panel  # noqa: E402
from jclust.models.autoencoder import MLPAutoencoder, flatten_inputs  # noqa: E402


def member_images(name: str, data_dir: str) -> np.ndarray:
    if name == "fm70k":
        from jclust import data as jdata
        return jdata.load("fashion_mnist").inputs[:10_000]
    return np.load(panel.member_source(name, data_dir).removeprefix("npz:"))["image"]


def optimizer(name: str, rate: float) -> optax.GradientTransformation:
    if name == "sgd":
        return optax.sgd(rate, momentum=0.9)
    if name == "adam":
        return optax.adam(rate)
    if name.startswith("sgdclip"):
        return optax.chain(optax.clip_by_global_norm(float(name[7:])),
                           optax.sgd(rate, momentum=0.9))
    if name.startswith("sgdwarm"):
        return optax.sgd(optax.linear_schedule(0.0, rate, int(name[7:])), momentum=0.9)
    raise SystemExit(f"error: unknown optimiser {name!r}")


def pretrain(x: np.ndarray, tx: optax.GradientTransformation, steps: int, seed: int = 0) -> str:
    model = MLPAutoencoder(hidden=(500, 500, 2000), embed_dim=10, output_dim=x.shape[1])
    params = model.init(jax.random.PRNGKey(seed), x[:2])["params"]
    state = tx.init(params)

    @jax.jit
    def step(params, state, batch):
        def loss(p):
            return jnp.mean((model.apply({"params": p}, batch)[1] - batch) ** 2)
        value, grad = jax.value_and_grad(loss)(params)
        updates, state = tx.update(grad, state, params)
        return optax.apply_updates(params, updates), state, value

    rng, losses = np.random.default_rng(seed), []
    for t in range(steps):
        params, state, value = step(params, state, x[rng.integers(0, len(x), 256)])
        losses.append(float(value))
        if not np.isfinite(losses[-1]) or losses[-1] > 1e3:
            return f"diverged at step {t}"
    return f"{np.mean(losses[-20:]):.4f}"


def main(argv: list[str]) -> None:
    name, steps, rates = argv[0], int(argv[1]), [float(r) for r in argv[2].split(",")]
    opt = argv[3] if len(argv) > 3 else "sgd"
    x = np.asarray(flatten_inputs(jnp.asarray(member_images(name, argv[4] if len(argv) > 4
                                                            else "runs/panel/data"))))
    sample = x[:5000]
    top = np.linalg.eigvalsh(sample.T @ sample / len(sample))[-1]
    print(f"{name}: N={len(x)} D={x.shape[1]} E||x||^2={(x ** 2).sum(1).mean():.1f} "
          f"lambda_max(E xx^T)={top:.1f}", flush=True)
    for rate in rates:
        print(f"  {opt} rate {rate}: {pretrain(x, optimizer(opt, rate), steps)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
