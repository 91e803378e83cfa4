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


def assert_resume_matches(ref_dir, workdir, cut, config):
    """Copies a finished run, drops its checkpoints after step ``cut`` (a run killed right after
    that checkpoint), resumes it with ``config`` and checks that it ends bit-equal to the
    uninterrupted run: parameters and the whole clustering state. Returns the resumed state."""
    import shutil
    from jclust import train
    shutil.copytree(ref_dir, workdir)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    steps = sorted(int(s) for s in os.listdir(ckpt_dir) if s.isdigit())
    assert cut in steps, steps
    for s in steps:
        if s > cut:
            shutil.rmtree(os.path.join(ckpt_dir, str(s)))
    train.train_and_evaluate(config, workdir)
    ours, state = final_params(workdir)
    ref, ref_state = final_params(ref_dir)
    assert int(state.step) == int(ref_state.step)
    for a, b in zip(ours, ref):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(state.cluster), jax.tree.leaves(ref_state.cluster)):
        np.testing.assert_array_equal(a, b)
    return state


def run_on_devices(overrides, workdir, config_file, count=8, sharded=()):
    """Trains through the CLI on ``count`` simulated CPU devices; returns (params leaves, state).

    ``sharded``: names of per-example clustering-state leaves that the run must report as sharded
    along the data axis."""
    flags = {k: (f"({','.join(map(str, v))})" if isinstance(v, tuple) else v)
             for k, v in overrides.items()}
    result = run(cli_args(flags, workdir, config_file=config_file),
                 env_extra={"XLA_FLAGS": f"--xla_force_host_platform_device_count={count}"},
                 timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{count} device(s)" in result.stdout
    if sharded:
        line = next((l for l in result.stdout.splitlines()
                     if l.startswith("per-example clustering state sharded along data")), "")
        for name in sharded:
            assert f".{name} [" in line, (name, result.stdout[-2000:])
    return final_params(workdir)
