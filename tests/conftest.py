"""Shared helpers: a tiny DEC config on real data (digits) and subprocess runners."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jclust import config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
    """DEC on the first 256 digits with a small autoencoder: a few seconds end to end."""
    config = config_lib.load_config(os.path.join(ROOT, "configs", "dec.py:digits"))
    base = {
        "data.limit": 256, "batch_size": 32, "eval_batch_size": 128,
        "model.hidden": (32, 32), "model.embed_dim": 4,
        "pretrain.epochs": 3, "pretrain.optimizer": "adam", "pretrain.learning_rate": 1e-3,
        "dec.max_steps": 40, "dec.update_interval": 10, "dec.tol": 0.0,
        "kmeans.n_init": 2, "kmeans.max_iter": 50,
        "log_every_steps": 10, "checkpoint_every_steps": 20,
        "pictures.every_evals": 0,  # matplotlib costs ~1 s a picture; tests that want them ask
    }
    base.update(overrides)
    return config_lib.apply_overrides(config, base)


def cli_args(config_overrides: dict, workdir: str, config_file: str = "configs/dec.py:digits"):
    """argv for `python -m jclust.main` with the tiny overrides as --config.k=v flags."""
    args = [sys.executable, "-m", "jclust.main", f"--config={os.path.join(ROOT, config_file)}",
            f"--workdir={workdir}"]
    for key, value in config_overrides.items():
        args.append(f"--config.{key}={value}")
    return args


TINY_CLI = {
    "data.limit": 256, "batch_size": 32, "eval_batch_size": 128, "model.hidden": "(32,32)",
    "model.embed_dim": 4, "pretrain.epochs": 3, "pretrain.optimizer": "adam",
    "pretrain.learning_rate": "0.001", "dec.max_steps": 40, "dec.update_interval": 10,
    "dec.tol": 0.0, "kmeans.n_init": 2, "kmeans.max_iter": 50, "log_every_steps": 10,
    "checkpoint_every_steps": 20, "pictures.every_evals": 0,
}


def run(args, env_extra=None, **kwargs):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env.update(env_extra or {})
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, **kwargs)


def final_params(workdir):
    """Flat list of numpy arrays of the newest checkpoint's params."""
    from jclust import train
    _, _, state, _ = train.load_run(workdir)
    return [np.asarray(x) for x in jax.tree.leaves(state.params)], state


@pytest.fixture
def tiny():
    return tiny_config
