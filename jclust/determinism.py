"""Bit-exact resume on GPUs: XLA's deterministic GPU ops, asked for before JAX starts its backends.

On CPU a resumed run ends bit-equal to an uninterrupted one. On a GPU it does not by default:
XLA's GPU reductions and scatter-adds may add in any order, and its autotuner picks cuBLAS/cuDNN
kernels by timing them in each process, so two processes computing the same step can differ in
the last bit (seen on an H200: 1.9e-9 in a parameter after a SIGKILL and resume).
``--xla_gpu_deterministic_ops=true`` makes both deterministic; on the steps jclust runs it cost
nothing measurable (BENCHMARKS.md, "The same table on a GPU"). The command line turns it on
wherever a JAX GPU plugin is installed; a notebook on a GPU should call
:func:`request_deterministic_gpu_ops` first. XLA reads XLA_FLAGS once, when the first backend
starts, so a call after any JAX computation changes nothing.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pkgutil
from typing import MutableMapping

FLAG = "--xla_gpu_deterministic_ops=true"


def gpu_plugin_installed() -> bool:
    """Whether a JAX CUDA or ROCm plugin is installed, found as JAX finds plugins (the
    "jax_plugins" entry points and namespace package) without starting its backends."""
    names = [entry.name for entry in importlib.metadata.entry_points(group="jax_plugins")]
    namespace = importlib.util.find_spec("jax_plugins")
    if namespace is not None and namespace.submodule_search_locations:
        names += [m.name for m in pkgutil.iter_modules(namespace.submodule_search_locations)]
    return any("cuda" in name or "rocm" in name for name in names)


def request_deterministic_gpu_ops(environ: MutableMapping[str, str] = os.environ,
                                  gpu: bool | None = None) -> bool:
    """Adds ``--xla_gpu_deterministic_ops=true`` to ``environ["XLA_FLAGS"]`` when a GPU plugin is
    installed (``gpu=None``) and the flags do not set it already (``=false`` there is kept: a
    user's choice). Returns whether the flag was added."""
    flags = environ.get("XLA_FLAGS", "")
    if "xla_gpu_deterministic_ops" in flags:
        return False
    if not (gpu_plugin_installed() if gpu is None else gpu):
        return False
    environ["XLA_FLAGS"] = f"{flags} {FLAG}".strip()
    return True
