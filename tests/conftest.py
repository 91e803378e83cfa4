"""Shared helpers: a tiny DEC config on real data (digits) and subprocess runners."""

import contextlib
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jclust import config_lib, determinism

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _compilation_cache() -> dict:
    """One persistent XLA compilation cache for the whole test session, shared by the pytest
    workers and every subprocess they start: the suite compiles the same small programs many
    times (each run builds its method anew, each CLI test is a fresh process), and a program
    loaded from the cache is the very executable that was compiled, so no result changes.
    Set JCLUST_TEST_XLA_CACHE=0 to compile everything afresh. (JAX writes an entry in place: a
    process killed with SIGKILL while it compiles must not use the cache.)"""
    if os.environ.get("JCLUST_TEST_XLA_CACHE") == "0":
        return {}
    import tempfile
    session = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
    directory = os.path.join(tempfile.gettempdir(), f"jclust-test-xla-cache-{session}")
    os.makedirs(directory, exist_ok=True)
    return {"JAX_COMPILATION_CACHE_DIR": directory,
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


COMPILATION_CACHE_ENV = _compilation_cache()
os.environ.update(COMPILATION_CACHE_ENV)  # notebook kernels and every subprocess
if COMPILATION_CACHE_ENV:
    jax.config.update("jax_compilation_cache_dir", COMPILATION_CACHE_ENV["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# The suite's programs are tiny and run a few steps, so compiling them is most of its time:
# XLA's CPU backend with LLVM at optimisation level 0 compiles them faster (SwAV's 8-device step
# check, 3 compilations: 40.6 -> 27.6 s; the whole suite 857 -> 630 s; 2 Zen 4 cores,
# 2026-12-06; --xla_llvm_disable_expensive_passes alone saves nothing). Matrix products and
# convolutions stay the same library calls; elementwise code may round its last bit otherwise,
# so every process of the suite gets the flag and runs compared bit for bit are compiled alike
# (tolerances come from float64 controls, far above a bit). Users' runs keep XLA's default;
# JCLUST_TEST_XLA_FAST_COMPILE=0 runs the suite under it.
TEST_XLA_FLAGS = ("" if os.environ.get("JCLUST_TEST_XLA_FAST_COMPILE") == "0"
                  else "--xla_backend_optimization_level=0")


def with_test_xla_flags(flags: str = "") -> str:
    """``flags`` (an XLA_FLAGS value) with the suite's :data:`TEST_XLA_FLAGS` added."""
    if TEST_XLA_FLAGS in flags:
        return flags.strip()
    return f"{flags.strip()} {TEST_XLA_FLAGS}".strip()


os.environ["XLA_FLAGS"] = with_test_xla_flags(os.environ.get("XLA_FLAGS", ""))
# As the command line does: on a GPU, in-process runs compare bit-equal with CLI runs.
determinism.request_deterministic_gpu_ops()


# DEC on the first 256 digits with a small autoencoder: a few seconds end to end.
TINY_DEC = {
    "data.limit": 256, "batch_size": 32, "eval_batch_size": 128,
    "model.hidden": (32, 32), "model.embed_dim": 4,
    "pretrain.epochs": 3, "pretrain.optimizer": "adam", "pretrain.learning_rate": 1e-3,
    "dec.max_steps": 40, "dec.update_interval": 10, "dec.tol": 0.0,
    "kmeans.n_init": 2, "kmeans.max_iter": 50,
    "log_every_steps": 10, "checkpoint_every_steps": 20,
    "pictures.every_evals": 0,  # matplotlib costs ~1 s a picture; tests that want them ask
}


def tiny_config(**overrides):
    """configs/dec.py:digits with :data:`TINY_DEC` and ``overrides``."""
    config = config_lib.load_config(os.path.join(ROOT, "configs", "dec.py:digits"))
    return config_lib.apply_overrides(config, {**TINY_DEC, **overrides})


def as_flags(overrides: dict) -> dict:
    """Config overrides as ``--config.k=v`` values: tuples written ``(a,b)``."""
    return {k: (f"({','.join(map(str, v))})" if isinstance(v, tuple) else v)
            for k, v in overrides.items()}


def cli_args(config_overrides: dict, workdir: str, config_file: str = "configs/dec.py:digits"):
    """argv for `python -m jclust.main` with the tiny overrides as --config.k=v flags."""
    args = [sys.executable, "-m", "jclust.main", f"--config={os.path.join(ROOT, config_file)}",
            f"--workdir={workdir}"]
    for key, value in config_overrides.items():
        args.append(f"--config.{key}={value}")
    return args


TINY_CLI = as_flags(TINY_DEC)


def run(args, env_extra=None, **kwargs):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env.pop("JAX_ENABLE_X64", None)
    env.update(env_extra or {})
    env["XLA_FLAGS"] = with_test_xla_flags(env.get("XLA_FLAGS", ""))
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, **kwargs)


X64_ENV = {"JAX_ENABLE_X64": "1"}  # jclust computes in float64 (jclust/precision.py)


@contextlib.contextmanager
def x64_mode(enabled: bool = True):
    """JAX's x64 mode inside the block (to read a float64 run's checkpoints), as it was after."""
    previous = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", enabled)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


def final_params(workdir, x64=False):
    """Flat list of numpy arrays of the newest checkpoint's params, and the whole state (host
    arrays). ``x64``: the run trained in float64 (its checkpoints are read in x64 mode)."""
    from jclust import inference
    with x64_mode(x64):
        _, _, state, _ = inference.load_run(workdir)
        state = jax.device_get(state)
    return [np.asarray(x) for x in jax.tree.leaves(state.params)], state


# How far the float64 state of a run on 1 device may be from the same run on 8 devices (or on
# 2 processes): they differ only in the order of their reductions. Measured on the tiny runs of
# every method (DEC, DeepCluster, DeepCluster-v2, ODC, SwAV, JULE, NMM; 24-64 steps with their
# reclusterings; AMD EPYC, 2026-12-03, leaves of magnitude <= ~10): largest |difference| 2.3e-12
# (SwAV, whose exp(scores / epsilon) amplifies rounding ~2x a step), 2e-16..1.4e-13 for the
# others. The same runs in float32 differ by 1e-7 (DEC) up to flipped discrete decisions (1.6 %
# of SwAV's prototype labels, JULE's evaluation centroids): no float32 tolerance separates
# rounding from a bug there, and the drift depends on the CPU's kernels. 1e-9 is ~400x the
# largest float64 drift and ~1e-7 of the state's scale: a real difference (a gradient or a
# statistic that misses the other devices' rows) moves values by >= 1e-3.
X64_TOLERANCE = {"rtol": 1e-9, "atol": 1e-9}


def assert_same_state(ours, ref, skip=()):
    """Every leaf of two float64 TrainStates equal within :data:`X64_TOLERANCE` (integer and
    boolean leaves exactly); ``skip``: key paths (``jax.tree_util.keystr``) left out, each with
    its reason at the call."""
    ours_leaves = jax.tree_util.tree_leaves_with_path(ours)
    ref_leaves = jax.tree_util.tree_leaves_with_path(ref)
    assert len(ours_leaves) == len(ref_leaves)
    checked = 0
    for (path, a), (ref_path, b) in zip(ours_leaves, ref_leaves):
        name = jax.tree_util.keystr(path)
        assert name == jax.tree_util.keystr(ref_path)
        if name in skip:
            continue
        a, b = np.asarray(a), np.asarray(b)
        if np.issubdtype(a.dtype, np.floating):
            assert a.dtype == np.float64, (name, a.dtype)  # the control really ran in float64
            np.testing.assert_allclose(a, b, err_msg=name, **X64_TOLERANCE)
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)
        checked += 1
    assert checked > 0 and set(skip) <= {jax.tree_util.keystr(p) for p, _ in ours_leaves}, skip


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


def run_on_devices(overrides, workdir, config_file, count=8, sharded=(), x64=False):
    """Trains through the CLI on ``count`` simulated CPU devices; returns (params leaves, state).

    ``sharded``: names of per-example clustering-state leaves that the run must report as sharded
    along the data axis. ``x64``: train in float64 (JAX's x64 mode)."""
    flags = as_flags(overrides)
    env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={count}", **(X64_ENV if x64 else {})}
    result = run(cli_args(flags, workdir, config_file=config_file), env_extra=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{count} device(s)" in result.stdout
    if sharded:
        line = next((l for l in result.stdout.splitlines()
                     if l.startswith("per-example clustering state sharded along data")), "")
        for name in sharded:
            assert f".{name} [" in line, (name, result.stdout[-2000:])
    return final_params(workdir, x64=x64)


def train_on_one_device(overrides, workdir, config_file, x64=False):
    """The run of :func:`run_on_devices` with ``count=1``, in this process when it has one
    device (a pytest worker does: no process start, no imports again; ~5 s a run): returns
    (params leaves, state)."""
    if jax.device_count() != 1:  # pytest itself run on several simulated devices
        return run_on_devices(overrides, workdir, config_file, count=1, x64=x64)
    from jclust import train
    config = config_lib.apply_overrides(config_lib.load_config(os.path.join(ROOT, config_file)),
                                        dict(overrides))
    with x64_mode(x64):
        train.train_and_evaluate(config, workdir)
    return final_params(workdir, x64=x64)


def assert_eight_devices_match_one(overrides, config_file, tmp_path, sharded=(), skip=()):
    """The device-count equivalence of a whole run, in float64: a run on 1 device
    (:func:`train_on_one_device`) and the CLI on 8 simulated devices end with the same state within :data:`X64_TOLERANCE` (integer state, e.g.
    pseudo-labels, exactly), the 8-device run with ``sharded`` split along the data axis.
    Returns both final states (8 devices, 1 device)."""
    _, one = train_on_one_device(overrides, str(tmp_path / "one_x64"), config_file, x64=True)
    _, eight = run_on_devices(overrides, str(tmp_path / "eight_x64"), config_file, count=8,
                              sharded=sharded, x64=True)
    assert int(eight.step) == int(one.step) > 0
    assert_same_state(eight, one, skip=skip)
    from jclust import writers
    evals = [writers.read_jsonl(os.path.join(tmp_path, d, writers.METRICS))
             for d in ("eight_x64", "one_x64")]
    assert [r["step"] for r in evals[0]] == [r["step"] for r in evals[1]]
    for a, b in zip(*evals):
        for key in ("acc", "nmi", "ari", "clusters_used", "mean_confidence"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12), (key, a["step"])
    return eight, one


# A float32 result is "the float64 result up to float32 rounding" when it is no farther from the
# float64 result than the same computation's other float32 path is, up to this factor, plus
# this many float32 ulps of the leaf's scale (for leaves where the other path happens to round
# exactly). Measured on one train step of SwAV and NMM (AMD EPYC, 2026-12-04): the largest
# float32_excess is 0.13 (SwAV) and 0.20 (NMM), i.e. the 8-device step is at most ~1.6x as far
# from the float64 step as the 1-device step, plus ulps; the same step with the 8-device side's
# parameters scaled by 1 + 1e-4 (a tenth of what a missed cross-device reduction moves) gives 1.7
# and 8.7. That power needs the float64 step to be the same computation: the same random crops,
# flips and initial prototypes (precision.RANDOM_DTYPE). Drawn in float64 they were other draws,
# the float32 paths were ~the leaf's scale from the "truth", and the check passed whatever the
# 8-device step did; FLOAT32_NEAR_TRUTH asserts that this is not so.
FLOAT32_PATH_FACTOR = 8.0
FLOAT32_ULPS = 8.0
# The 1-device float32 step's distance to the float64 step, at most this times the leaf's scale
# plus FLOAT32_NEAR_TRUTH_ABS: measured at most 1.3e-7 relative (SwAV, NMM), 1.5e-8 absolute on
# leaves ~0; 1e-5 is ~75x that, and ~1e4x below what different random draws give.
FLOAT32_NEAR_TRUTH = 1e-5
FLOAT32_NEAR_TRUTH_ABS = 1e-6


def assert_whitened_backbone_probe(evaluation, feats, h, cluster, pca_dim, n_init):
    """A "backbone" k-means probe (``methods.evaluation.split_feature_probe``) on the feature
    pass ``feats`` whose backbone part is ``h``: its fit PCA-whitens h (identity covariance) and
    its assign gives back spherical k-means's own labels on the whitened unit rows."""
    import jax.numpy as jnp
    from jclust import cluster as jcluster
    key = jax.random.key(3)
    fitted = evaluation.fit(feats, cluster, key)
    whitened = (h - np.asarray(fitted.mean)) @ np.asarray(fitted.projection)
    np.testing.assert_allclose(np.cov(whitened, rowvar=False), np.eye(pca_dim), atol=1e-3)
    unit = whitened / np.linalg.norm(whitened, axis=1, keepdims=True)
    expected = jcluster.kmeans(jnp.asarray(unit), 10, key=key, n_init=n_init, spherical=True)
    labels, _ = evaluation.assign(fitted, jnp.asarray(feats))
    np.testing.assert_array_equal(labels, expected.labels)


def float32_excess(ours32, ref32, truth64) -> float:
    """How far ``ours32`` is from ``truth64`` relative to how far ``ref32`` is (float32 leaves of
    the same computation by two paths, and the float64 computation): <= 1 when within
    :data:`FLOAT32_PATH_FACTOR` times the reference path's rounding plus :data:`FLOAT32_ULPS`."""
    truth = np.asarray(truth64, np.float64)
    ulp = float(np.spacing(np.float32(np.max(np.abs(truth), initial=0.0))))
    ours_err = float(np.max(np.abs(np.asarray(ours32, np.float64) - truth), initial=0.0))
    ref_err = float(np.max(np.abs(np.asarray(ref32, np.float64) - truth), initial=0.0))
    return ours_err / (FLOAT32_PATH_FACTOR * ref_err + FLOAT32_ULPS * ulp + 1e-300)


def one_step_each_side(method, state, batch, num_examples, sides, sharded_leaf):
    """For :func:`assert_sharded_steps_match`'s scripts: one train step from ``state`` on each
    side in ``sides`` ("one": jitted on the default device; "all": the trainer's step on a mesh of
    every device, with ``sharded_leaf(state)``, unless None, checked to be split over them). Returns
    ``{f"{side}/{leaf}": array}`` over the state's params, model state, clustering state and loss."""
    import jax.numpy as jnp
    from jax.sharding import Mesh
    from jclust import inference
    from jclust import state as jstate
    mesh = Mesh(np.array(jax.devices()), ("data",))
    runner = inference.Runner(method, mesh, 128, num_examples)
    saved = {}
    for side in sides:
        if side == "one":
            s, m = jax.jit(jstate.make_train_step(method, 0))(state, jax.tree.map(jnp.asarray, batch))
        else:
            step = jstate.jit_train_steps(method, mesh, num_examples)[0]
            s, m = step(runner.place(state), runner.put_batch(batch))
            if sharded_leaf is not None:
                assert len(sharded_leaf(s).sharding.device_set) == jax.device_count()
        leaves = jax.tree.leaves((s.params, s.model_state, s.cluster, m["loss"]))
        saved.update({f"{side}/{j}": np.asarray(x) for j, x in enumerate(leaves)})
    return saved


_STEPS_HARNESS = """
import sys
import jax
import numpy as np
assert jax.device_count() > 1 and not jax.config.jax_enable_x64
saved = {f"f32/{k}": v for k, v in first_step(("one", "all")).items()}
jax.config.update("jax_enable_x64", True)  # jclust reads the mode at call time (precision.py)
saved.update({f"x64/{k}": v for k, v in first_step(("one",)).items()})
np.savez(sys.argv[1], **saved)
print("OK")
"""


def assert_sharded_steps_match(script: str, tmp_path, devices: int = 8) -> None:
    """The float32 claim of a sharded train step: one step on ``devices`` simulated devices is
    the float64 step up to float32 rounding (:func:`float32_excess`; no fixed float32 tolerance
    can say this on every CPU).

    ``script`` defines ``first_step(sides)``: from one fresh initial state it trains one step on
    each side in ``sides`` (``"one"``: 1 device, ``"all"``: every device) and returns every state
    leaf and the loss as ``{f"{side}/{leaf}": array}``. It runs in one process, in float32 on
    both sides and then in float64 on one device (the truth): 3 compilations of the step. (That
    the float64 runs on 1 and on all devices agree over many steps is each method's end-to-end
    test, :func:`assert_eight_devices_match_one`.)"""
    out = str(tmp_path / "steps.npz")
    result = run([sys.executable, "-c", script + _STEPS_HARNESS, out],
                 env_extra={"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"},
                 timeout=300)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
    saved = dict(np.load(out))
    pairs = [(k, "f32/one/" + k[len("f32/all/"):]) for k in sorted(saved) if k.startswith("f32/all/")]
    assert pairs
    checked = 0
    for ours, ref in pairs:
        truth = saved["x64/" + ref[len("f32/"):]]
        assert saved[ours].dtype == saved[ref].dtype and saved[ours].shape == truth.shape, ours
        # Discrete leaves (labels from an argmax) may flip at a float32 near-tie on some CPU;
        # their exact equality is the float64 end-to-end test's.
        if np.issubdtype(truth.dtype, np.floating):
            assert truth.dtype == np.float64 and saved[ours].dtype == np.float32, ours
            scale = float(np.max(np.abs(truth), initial=0.0))
            np.testing.assert_allclose(saved[ref], truth, rtol=0, err_msg=ref,
                                       atol=FLOAT32_NEAR_TRUTH * scale + FLOAT32_NEAR_TRUTH_ABS)
            excess = float32_excess(saved[ours], saved[ref], truth)
            assert excess <= 1.0, (ours, excess)
            checked += 1
    assert checked > 0


# The suite runs as 2 pytest-xdist workers with --dist loadfile, which hands out whole files in
# collection order: a long file collected last would run alone at the end. Longest first (their
# seconds on 2 CPU cores, 2026-12-04): multihost 225, swav 212, nmm 178, backbones 160, jule 137,
# train 115, deepcluster 106, deepclusterv2 95, preemption 91, odc 83, notebooks 70,
# cli_errors 70, kmeans 59; the rest <= 45 each.
LONGEST_FILES_FIRST = ("test_multihost.py", "test_swav.py", "test_nmm.py", "test_backbones.py",
                       "test_jule.py", "test_train.py", "test_deepcluster.py",
                       "test_deepclusterv2.py", "test_preemption.py", "test_odc.py",
                       "test_notebooks.py", "test_cli_errors.py", "test_kmeans.py")


def pytest_configure(config):
    # pytest-xdist >= 3.8 reorders --dist loadfile's files by their number of tests unless told
    # not to, which sent the longest file (2 tests) last, alone, for ~2 minutes.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: in-file order kept


@pytest.fixture(scope="module")
def digits_features(tmp_path_factory):
    """scikit-learn's digits as 64-d feature vectors in an npz (the methods on frozen features
    read them as two 'layers' of 32): (path, features [1797, 64] float32, labels)."""
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    path = tmp_path_factory.mktemp("features") / "digits.npz"
    np.savez(path, feature=x.astype(np.float32), label=y)
    return str(path), x.astype(np.float32), y
