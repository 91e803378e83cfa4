"""Polite stops: SIGTERM and Ctrl-C (SIGINT) sent to `python -m jclust.main` in the middle of a
phase save a checkpoint of the step reached and exit at once (0 / 130, one line saying where);
rerunning the same command resumes from that step and ends bit-equal to an uninterrupted run. With
two processes a SIGTERM to one of them stops both at the same step (JAX's preemption sync point).

The runs share a persistent XLA compilation cache: only the first run of each topology compiles
(the reference run, whose executables the resumed runs load and must match bit for bit), which
keeps the other runs to several seconds each on a 2-core machine."""

import importlib.metadata
import os
import re
import signal
import subprocess
import threading

import jax
import numpy as np
import pytest

from jclust import determinism, preemption, writers
from tests.conftest import ROOT, TINY_CLI, cli_args, final_params, run, with_test_xla_flags

# One pretraining epoch (8 steps), then 300 cluster steps with a recluster and an evaluation every
# 10; regular checkpoints only at the two phase ends, so a stop in between is a new save.
CLI = {**TINY_CLI, "pretrain.epochs": 1, "dec.max_steps": 300, "checkpoint_every_steps": 1000}
TOTAL_STEPS = 308
REGULAR_SAVES = {8, TOTAL_STEPS}
SIGNAL_AT = "[cluster] step 20/"  # the progress line after which the signal is sent
STOP_LINE = re.compile(r"^stopped by (SIGTERM|SIGINT) at step (\d+): checkpoint saved; rerun the "
                       r"same command to resume$", re.M)


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("xla_cache"))
    return {"JAX_COMPILATION_CACHE_DIR": cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0", "JAX_PLATFORMS": "cpu"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_env):
    """The uninterrupted run (through the CLI, which also fills the compilation cache)."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    result = run(cli_args(CLI, workdir), env_extra=cache_env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def start(args, env_extra, stderr_path):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env.update(env_extra)
    env["XLA_FLAGS"] = with_test_xla_flags(env.get("XLA_FLAGS", ""))
    # Tests started in the background of a script inherit SIGINT ignored, and the CLI keeps an
    # ignored SIGINT ignored (on purpose): a signal caught here is the default in the child.
    # (Not preexec_fn: forking a process that runs JAX's threads is unsafe.)
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with open(stderr_path, "w") as err:
            return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err,
                                    text=True, bufsize=1)
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def read_until(proc, mark, timeout=300):
    """Stdout lines of ``proc`` up to and including the first one starting with ``mark`` (the
    process is killed if that takes longer than ``timeout`` seconds)."""
    lines = []
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(mark):
                break
    finally:
        watchdog.cancel()
    assert lines and lines[-1].startswith(mark), "".join(lines)[-3000:]
    return lines


def finish(proc, lines, stderr_path, timeout=120):
    out, _ = proc.communicate(timeout=timeout)
    with open(stderr_path) as f:
        return proc.returncode, "".join(lines) + out, f.read()


def checkpoint_steps(workdir):
    return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())


def assert_same_end(workdir, reference):
    ours, state = final_params(workdir)
    ref, ref_state = final_params(reference)
    assert int(state.step) == int(ref_state.step) == TOTAL_STEPS
    for a, b in zip(ours, ref):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(state.cluster), jax.tree.leaves(ref_state.cluster)):
        np.testing.assert_array_equal(a, b)
    # The same evaluations (the first one after a resume has no previous labels to compare with).
    def evals(path):
        return [{k: v for k, v in r.items() if k not in ("time", "nmi_previous")}
                for r in writers.read_jsonl(os.path.join(path, writers.METRICS))]
    assert evals(workdir) == evals(reference)


@pytest.mark.slow
@pytest.mark.parametrize("sig, exit_code", [(signal.SIGTERM, 0), (signal.SIGINT, 130)],
                         ids=["SIGTERM", "SIGINT"])
def test_signal_saves_current_step_and_rerun_resumes_bit_exact(reference, cache_env, tmp_path,
                                                               sig, exit_code):
    workdir = str(tmp_path / "stopped")
    stderr_path = str(tmp_path / "stderr.txt")
    proc = start(cli_args(CLI, workdir), cache_env, stderr_path)
    try:
        lines = read_until(proc, SIGNAL_AT)
        proc.send_signal(sig)
        code, out, err = finish(proc, lines, stderr_path)
    finally:
        proc.kill()
    assert code == exit_code, (out[-2000:], err[-3000:])
    stops = STOP_LINE.findall(out)
    assert len(stops) == 1 and stops[0][0] == sig.name, (out[-2000:], err[-2000:])
    assert "stopped by" not in err
    step = int(stops[0][1])
    # Stopped after the signal, before the end, and not at a regular checkpoint: a new save.
    assert 20 <= step < TOTAL_STEPS and step not in REGULAR_SAVES
    assert checkpoint_steps(workdir)[-1] == step
    assert "final (step" not in out
    assert "Traceback" not in out + err
    # Said at once on stderr, with how to force a quit.
    assert (f"{sig.name} received: stopping after the current step, with a checkpoint (Ctrl-C "
            "again quits at once, without saving)") in err

    result = run(cli_args(CLI, workdir), env_extra=cache_env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from checkpoint step {step}\n" in result.stdout
    assert_same_end(workdir, reference)


main_thread_only = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="signal handlers can only be installed in the main thread")


@pytest.fixture
def sigint_not_ignored():
    """Python's own Ctrl-C handler for the test: a suite started in the background of a
    non-interactive shell inherits SIGINT ignored, which StopSignals rightly leaves alone."""
    original = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, original)


@main_thread_only
def test_handlers_are_restored_and_inert_outside_the_main_thread(sigint_not_ignored):
    before = {s: signal.getsignal(s) for s in preemption.SIGNALS}
    with preemption.StopSignals(announce=False) as stop:
        assert preemption.active() is stop
        assert signal.getsignal(signal.SIGINT) == stop._handle
        assert not stop.should_stop()
        signal.raise_signal(signal.SIGINT)  # recorded, not raised
        assert stop.received == "SIGINT"
        assert signal.getsignal(signal.SIGINT) == before[signal.SIGINT]  # a 2nd Ctrl-C: as before
        assert stop.should_stop() and stop.signal_name == "SIGINT"
        stopped = stop.stopped(42)
        assert isinstance(stopped, KeyboardInterrupt) and stopped.exit_code == 130
        assert str(stopped) == preemption.stop_line("SIGINT", 42)
    assert {s: signal.getsignal(s) for s in preemption.SIGNALS} == before
    assert not preemption.active().should_stop()

    seen = []
    thread = threading.Thread(target=lambda: seen.append(preemption.StopSignals().__enter__().mode))
    thread.start()
    thread.join()
    assert seen == ["inert"] and {s: signal.getsignal(s) for s in preemption.SIGNALS} == before


@main_thread_only
def test_trainer_entry_point_stops_on_sigterm_and_restores_handlers():
    before = {s: signal.getsignal(s) for s in preemption.SIGNALS}

    @preemption.stop_politely
    def fake_run():  # what train_and_evaluate does around its loop
        stop = preemption.active()
        assert stop.mode == "local" and not stop.should_stop()
        signal.raise_signal(signal.SIGTERM)  # recorded; the process goes on
        signal.raise_signal(signal.SIGTERM)  # a repeat is ignored
        assert stop.should_stop() and stop.should_stop()
        raise stop.stopped(7)

    with pytest.raises(preemption.Stopped) as info:
        fake_run()
    assert (info.value.signal_name, info.value.step, info.value.exit_code) == ("SIGTERM", 7, 0)
    assert {s: signal.getsignal(s) for s in preemption.SIGNALS} == before
    assert preemption.active().mode == "inert"


# ---------------------------------------------------------------------------------------------
# Two processes


# Stopped during a long pretraining: the run never compiles the cluster phase (every step of a
# 2-process run crosses gloo, and this one is not run to its end).
MULTI_CLI = {**TINY_CLI, "pretrain.epochs": 100, "checkpoint_every_steps": 1000}


@pytest.mark.slow
def test_two_processes_stop_at_the_same_step_when_one_gets_sigterm(cache_env, tmp_path):
    """A SIGTERM to process 1 only (one preempted host) stops both processes at one step, through
    JAX's preemption sync point; the checkpoint of that step is whole, and both exit 0."""
    from tests.test_multihost import free_port
    workdir = str(tmp_path / "multi")
    port = free_port()
    env = dict(cache_env, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = [start(cli_args(MULTI_CLI, workdir) + [f"--coordinator_address=127.0.0.1:{port}",
                                                   "--num_processes=2", f"--process_id={i}"],
                   env, str(tmp_path / f"stderr{i}.txt"))
             for i in range(2)]
    try:
        lines = read_until(procs[0], "[pretrain] step 20/")  # only process 0 prints
        procs[1].send_signal(signal.SIGTERM)
        results = [finish(p, lines if i == 0 else [], str(tmp_path / f"stderr{i}.txt"))
                   for i, p in enumerate(procs)]
    finally:
        for p in procs:
            p.kill()
    for i, (code, out, err) in enumerate(results):
        assert code == 0, (i, out[-2000:], err[-3000:])
        assert "Traceback" not in out + err, (i, err[-3000:])
    stops = STOP_LINE.findall(results[0][1])
    assert len(stops) == 1 and stops[0][0] == "SIGTERM", results[0][1][-2000:]
    assert not STOP_LINE.search(results[1][1])
    step = int(stops[0][1])
    assert 20 <= step < 800  # in pretraining, whose end is the first regular checkpoint
    assert checkpoint_steps(workdir) == [step]
    _, state = final_params(workdir)  # the cooperative write of both processes restores whole
    assert int(state.step) == step


def test_deterministic_gpu_ops_are_asked_for_where_a_gpu_plugin_is(monkeypatch):
    """The command line adds XLA's deterministic GPU ops where a JAX GPU plugin is installed, so
    that a resumed GPU run is bit-equal too, and leaves XLA_FLAGS alone elsewhere or where the
    user set the flag either way."""
    forced = "--xla_force_host_platform_device_count=2"
    environ = {"XLA_FLAGS": forced}
    assert not determinism.request_deterministic_gpu_ops(environ, gpu=False)
    assert environ == {"XLA_FLAGS": forced}
    assert determinism.request_deterministic_gpu_ops(environ, gpu=True)
    assert environ == {"XLA_FLAGS": f"{forced} --xla_gpu_deterministic_ops=true"}
    assert not determinism.request_deterministic_gpu_ops(environ, gpu=True)  # once only
    users = {"XLA_FLAGS": "--xla_gpu_deterministic_ops=false"}
    assert not determinism.request_deterministic_gpu_ops(users, gpu=True)
    assert users == {"XLA_FLAGS": "--xla_gpu_deterministic_ops=false"}
    empty = {}
    assert determinism.request_deterministic_gpu_ops(empty, gpu=True)
    assert empty == {"XLA_FLAGS": "--xla_gpu_deterministic_ops=true"}
    # Detection: JAX's CUDA plugins register under the "jax_plugins" entry-point group.
    if jax.default_backend() == "gpu":
        assert determinism.gpu_plugin_installed()
    # Hermetic: only the entry points below exist.
    monkeypatch.setattr(determinism.pkgutil, "iter_modules", lambda *args: [])
    monkeypatch.setattr(determinism.importlib.util, "find_spec", lambda name: None)
    for name, gpu in (("xla_cuda13", True), ("xla_rocm7", True), ("xla_tpu", False), (None, False)):
        fake = ([importlib.metadata.EntryPoint(name, f"{name}_plugin", "jax_plugins")]
                if name else [])
        monkeypatch.setattr(importlib.metadata, "entry_points", lambda group, fake=fake: fake)
        assert determinism.gpu_plugin_installed() == gpu, name
