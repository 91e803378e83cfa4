"""Device-count and process-count equivalence of whole runs, in float64 (conftest.X64_TOLERANCE):
`python -m jclust.main` as 2 cooperating processes on localhost (JAX's distributed runtime, CPU
collectives over gloo) of 4 simulated devices each, so 8 devices in all, ends where the run on 1
device ends; a 2-process run killed after a checkpoint resumes bit-exactly, with its sharded
clustering state. DEC and ODC (its memories and splits see the whole sharded batch). One run
covers both claims, several devices in a process and several processes: each process here runs
the single-process multi-device path on its 4 devices (which the other methods' own 8-device
tests, conftest.assert_eight_devices_match_one, check alone)."""

import os
import shutil
import socket
import subprocess

import numpy as np
import pytest

from jclust import writers
from tests.conftest import (ROOT, TINY_DEC, X64_ENV, as_flags, assert_same_state, cli_args,
                            final_params, train_on_one_device, with_test_xla_flags)
from tests.test_odc import EVAL_UNDETERMINED, TINY_ODC

# Fewer steps than the other DEC tests: every step of a 2-process run crosses gloo.
DEC = {**TINY_DEC, "pretrain.epochs": 1, "dec.max_steps": 20}
ODC = {**TINY_ODC, "optim.epochs": 2}  # 16 steps: the recluster and evaluation at 8 and 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(overrides, workdir, config_file, num_processes=2, devices_each=4, x64=False):
    """Runs the CLI as ``num_processes`` processes of one distributed run; returns their stdouts.
    ``x64``: train in float64."""
    port = free_port()
    devices = f"--xla_force_host_platform_device_count={devices_each}"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=with_test_xla_flags(devices))
    env.pop("JAX_ENABLE_X64", None)
    env.update(X64_ENV if x64 else {})
    procs = [subprocess.Popen(
        cli_args(overrides, workdir, config_file=config_file)
        + [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
           f"--process_id={i}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(num_processes)]
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            outputs.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            proc.kill()
    for i, (code, out, err) in enumerate(outputs):
        assert code == 0, f"process {i} exited with {code}:\n{err[-3000:]}"
    return [out for _, out, _ in outputs]


def assert_same_run(ours_dir, ref_dir, skip=()):
    """Two float64 runs (on several devices or processes, and on 1 device) with the same
    evaluations and assignments, and the same state within X64_TOLERANCE (they sum over the
    devices in different orders; float32 would hold them to nothing a CPU-independent tolerance
    can say). Returns both final states."""
    evals_ours = writers.read_jsonl(os.path.join(ours_dir, writers.METRICS))
    evals_ref = writers.read_jsonl(os.path.join(ref_dir, writers.METRICS))
    assert [r["step"] for r in evals_ours] == [r["step"] for r in evals_ref]
    for a, b in zip(evals_ours, evals_ref):
        for key in ("acc", "nmi", "ari", "clusters_used", "mean_confidence"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12), (key, a["step"])
    labels_ours = np.load(os.path.join(ours_dir, "assignments.npz"))["labels"]
    labels_ref = np.load(os.path.join(ref_dir, "assignments.npz"))["labels"]
    np.testing.assert_array_equal(labels_ours, labels_ref)
    _, state_ours = final_params(ours_dir, x64=True)
    _, state_ref = final_params(ref_dir, x64=True)
    assert int(state_ours.step) == int(state_ref.step) > 0
    assert_same_state(state_ours, state_ref, skip=skip)
    return state_ours, state_ref


def check_outputs(outputs, sharded):
    primary, secondary = outputs
    assert "8 device(s)" in primary
    line = next(l for l in primary.splitlines() if l.startswith("per-example clustering state"))
    assert line.startswith("per-example clustering state sharded along data over 8 devices"), line
    for name in sharded:
        assert f".{name} [" in line
    assert "final (step" in primary
    # Only process 0 prints. (Gloo's start-up lines, which its threads may interleave, aside.)
    for mark in ("jclust ", "eval step", "final (step", "assignment rule", "per-example"):
        assert mark not in secondary, secondary[-500:]


def test_dec_on_two_processes_of_four_devices_equals_one_device(tmp_path):
    """Pretraining, k-means, target updates and evaluations."""
    one, multi = str(tmp_path / "one"), str(tmp_path / "multi")
    train_on_one_device(DEC, one, "configs/dec.py:digits", x64=True)
    outputs = run_processes(as_flags(DEC), multi, "configs/dec.py:digits", x64=True)
    check_outputs(outputs, sharded=("target", "labels"))
    state_multi, _ = assert_same_run(multi, one)
    assert state_multi.cluster.target.shape == (256, 10)


def test_odc_on_two_processes_of_four_devices_equals_one_device_and_resumes(tmp_path):
    """The per-step memory updates and splits see the whole (sharded) batch."""
    one, multi = str(tmp_path / "one"), str(tmp_path / "multi")
    train_on_one_device(ODC, one, "configs/odc.py:digits", x64=True)
    outputs = run_processes(as_flags(ODC), multi, "configs/odc.py:digits", x64=True)
    check_outputs(outputs, sharded=("features", "labels", "recluster_labels"))
    state_multi, _ = assert_same_run(multi, one, skip=EVAL_UNDETERMINED)

    # Killed right after the step-8 checkpoint: the 2 processes resume from it together and end
    # bit-equal to their uninterrupted run, memories and labels included.
    resumed = str(tmp_path / "resumed")
    shutil.copytree(multi, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", "16"))
    outputs = run_processes(as_flags(ODC), resumed, "configs/odc.py:digits", x64=True)
    assert "resumed from checkpoint step 8" in outputs[0]
    params_resumed, state_resumed = final_params(resumed, x64=True)
    params_ref, _ = final_params(multi, x64=True)
    for a, b in zip(params_resumed, params_ref):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(state_resumed.cluster, state_multi.cluster):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    steps = [r["step"] for r in writers.read_jsonl(os.path.join(resumed, writers.METRICS))]
    assert steps == sorted(set(steps))  # records after step 8 were dropped before the rerun
