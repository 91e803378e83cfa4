"""The Colab notebooks run end to end (tiny configs): the quickstart as is, the TPU notebook on 8
simulated CPU devices."""

import os

import nbformat
from nbclient import NotebookClient

from tests.conftest import ROOT, TINY_CLI, with_test_xla_flags

COLAB = os.path.join(ROOT, "colab")


def _tiny_overrides(**extra):
    overrides = {k: v for k, v in TINY_CLI.items()}
    overrides.update({"model.hidden": (32, 32), "pretrain.learning_rate": 0.001,
                      "pictures.every_evals": 1}, **extra)
    return overrides


def _execute(name, parameters, tmp_path):
    """Runs colab/NAME with its "parameters" cell replaced (as papermill does); returns the notebook."""
    nb = nbformat.read(os.path.join(COLAB, name), as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "a notebook needs exactly one cell tagged 'parameters'"
    cells[0].source = "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    return nb


def _text_outputs(nb):
    return "\n".join(o.get("text", "") or str(o.get("data", {}).get("text/plain", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_quickstart_notebook_runs(tmp_path):
    workdir = str(tmp_path / "run")
    nb = _execute("quickstart.ipynb", {"CONFIG_DIR": os.path.join(ROOT, "configs"),
                                       "WORKDIR": workdir, "OVERRIDES": _tiny_overrides()},
                  tmp_path)
    text = _text_outputs(nb)
    assert "assignment rule:" in text and "-> cluster" in text
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 4  # clusters, confusion, embedding, curves
    assert os.path.exists(os.path.join(workdir, "predict_digits", "assignments.csv"))


def test_tpu_notebook_runs_on_eight_simulated_devices(tmp_path, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS",
                       with_test_xla_flags("--xla_force_host_platform_device_count=8"))
    workdir = str(tmp_path / "run")
    # Half the quickstart's steps: every step and evaluation here runs on 8 devices.
    overrides = _tiny_overrides(**{"data.source": "digits", "data.image_shape": (8, 8, 1),
                                   "eval_batch_size": 128, "pretrain.epochs": 1,
                                   "dec.max_steps": 20})
    nb = _execute("tpu.ipynb", {"CONFIG_DIR": os.path.join(ROOT, "configs"), "WORKDIR": workdir,
                                "MOUNT_DRIVE": False, "OVERRIDES": overrides}, tmp_path)
    text = _text_outputs(nb)
    assert "8 devices" in text and "on 8 devices" in text
    assert "resumed from checkpoint" in text
    assert os.path.exists(os.path.join(workdir, "predict", "summary.json"))


def test_notebooks_ask_for_deterministic_gpu_ops_before_jax_starts():
    """Each notebook calls determinism.request_deterministic_gpu_ops() (bit-exact resume on a GPU
    runtime, as the command line does) before its first line that starts JAX's backends."""
    import re
    starts_jax = re.compile(r"\bjax\.device|\bjnp\.|(?<![\w.])(train|predict|data)\.\w+\(")
    for name in ("quickstart.ipynb", "tpu.ipynb"):
        nb = nbformat.read(os.path.join(COLAB, name), as_version=4)
        lines = [line for c in nb.cells if c.cell_type == "code" for line in c.source.splitlines()]
        call = next(i for i, line in enumerate(lines)
                    if line.startswith("determinism.request_deterministic_gpu_ops()"))
        first_jax = next(i for i, line in enumerate(lines)
                         if starts_jax.search(line) and not line.startswith("#"))
        assert call < first_jax, (name, lines[first_jax])
