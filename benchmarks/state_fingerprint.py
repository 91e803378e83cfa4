"""Fingerprints of finished runs, to show that a refactor moves no number.

Trains each method's ``digits`` config (or the configs named) in a fresh workdir and prints, per
run, the final ACC/NMI/ARI, a SHA-256 of what training made (``trained``: step, rng, params,
model state, optimiser states) and one of the whole final TrainState (``state``: also the
clustering and evaluation states; every leaf's dtype, shape and bytes, in tree order). Two
commits give equal digests exactly when their runs end bit-equal; a change of the state's layout
alone changes ``state`` but not ``trained``.

  python benchmarks/state_fingerprint.py > before.txt   # on the old commit
  python benchmarks/state_fingerprint.py > after.txt    # on the new one
  diff before.txt after.txt

Args: config specs (default: every method's ``configs/<method>.py:digits``, the runs the
redesign issue names as the contract). Run times go to stderr so that the outputs diff cleanly.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tempfile
import time
from contextlib import redirect_stdout

import jax
import numpy as np

# Fingerprint the jclust of the tree this file is in, not whichever one the interpreter has
# installed (a venv shared by two git worktrees imports the other tree's code).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

METHODS = ("dec", "idec", "deepcluster", "deepclusterv2", "odc", "swav", "jule", "nmm")


def state_digest(state) -> str:
    """SHA-256 over every leaf of a pytree: dtype, shape and bytes, in tree order."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        array = np.asarray(jax.device_get(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape};".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _load_run(workdir: str):
    try:  # after the trainer was split (issue 27)
        from jclust.inference import load_run
    except ImportError:
        from jclust.train import load_run
    return load_run(workdir)


def fingerprint(spec: str) -> str:
    from jclust import config_lib
    from jclust import train
    config = config_lib.load_config(spec)
    with tempfile.TemporaryDirectory() as workdir:
        start = time.time()
        with redirect_stdout(io.StringIO()):
            record = train.train_and_evaluate(config, workdir, stdout=io.StringIO())
        seconds = time.time() - start
        _, _, state, _ = _load_run(workdir)
        metrics = " ".join(f"{k}={record[k]!r}" for k in ("step", "acc", "nmi", "ari") if k in record)
        print(f"{spec}: {seconds:.0f} s", file=sys.stderr)
        trained = (state.step, state.rng, state.params, state.model_state, state.opt_states)
        return f"{spec}: {metrics} trained={state_digest(trained)[:16]} state={state_digest(state)}"


def main(argv: list[str]) -> None:
    specs = argv or [f"configs/{m}.py:digits" for m in METHODS]
    for spec in specs:
        print(fingerprint(spec), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main(sys.argv[1:])
