"""The trainer end to end on real data (digits): metrics, resume, DELIUS, bad input, devices."""

import collections
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import threading

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jclust import checkpointing, config_lib, data, metrics, monitor, train
from jclust import inference
from jclust import methods as jmethods
from jclust import loader
from jclust import schedule as jschedule
from jclust import state as jstate
from jclust import workdir as jworkdir
from tests.conftest import (COMPILATION_CACHE_ENV, ROOT, TINY_CLI, cli_args, final_params, run,
                            tiny_config, with_test_xla_flags)


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One uninterrupted tiny run shared by the resume tests."""
    workdir = str(tmp_path_factory.mktemp("ref"))
    final = train.train_and_evaluate(tiny_config(), workdir)
    return workdir, final


def test_end_to_end_writes_metrics_and_checkpoint(reference_run):
    workdir, final = reference_run
    records = _records(workdir)
    # No evaluation during pretraining (no centroids yet): the first is at its end, step 24.
    assert records[0]["step"] == 24 and records[0]["phase"] == "pretrain"
    assert records[-1]["step"] == final["step"] == 64  # 3 epochs x 8 batches + 40 cluster steps
    for key in ("acc", "nmi", "ari", "purity", "clusters_used", "size_entropy"):
        assert key in final
    assert 0.3 < final["acc"] <= 1.0  # 10 digit classes: far above chance (0.1)
    assert any("delta_label" in r for r in records)
    assert [r["step"] for r in records] == sorted(r["step"] for r in records)
    config, method, state, spec = inference.load_run(workdir)
    assert int(state.step) == 64 and spec.num_examples == 256
    # The assignment rule used by the evaluation gives the logged ACC again.
    runner = inference.Runner(method, jstate.make_mesh(), 128, spec.num_examples)
    dataset = loader.load_dataset(config)
    labels, confidence = runner.assign(state, runner.features(state, dataset.inputs))
    assert np.isclose(metrics.accuracy(dataset.labels, labels), final["acc"])
    assert np.all((confidence > 0) & (confidence <= 1))


def test_the_trainer_reads_its_data_only_through_the_loader(reference_run, tmp_path, monkeypatch):
    """The data seam: a loader over a read-only memory-mapped file (the stand-in for a data set
    larger than memory) trains to the very same parameters and final record; every batch and
    feature pass went through the loader's methods."""
    ref_dir, ref_final = reference_run
    in_memory = loader.load_dataset(tiny_config())
    np.save(tmp_path / "inputs.npy", in_memory.inputs)
    mapped = dataclasses.replace(in_memory, inputs=np.load(tmp_path / "inputs.npy", mmap_mode="r"))
    calls = collections.Counter()

    class MappedLoader(loader.Loader):
        def batch(self, indices, neighbours=None):
            calls["batch"] += 1
            return super().batch(indices, neighbours)

        def features(self, runner, state):
            calls["features"] += 1
            return super().features(runner, state)

    monkeypatch.setattr(loader, "load", lambda config, cache_dir=None, **_: MappedLoader(mapped))
    workdir = str(tmp_path / "run")
    final = train.train_and_evaluate(tiny_config(), workdir)
    assert calls["batch"] == 64 and calls["features"] >= 2  # 64 steps; the recluster, evaluations
    assert {k: v for k, v in final.items() if k != "time"} == {
        k: v for k, v in ref_final.items() if k != "time"}
    for ours, theirs in zip(final_params(workdir)[0], final_params(ref_dir)[0]):
        np.testing.assert_array_equal(ours, theirs)


def test_a_loader_batch_holds_the_examples_and_their_neighbours():
    dataset = loader.load_dataset(tiny_config())
    data = loader.Loader(dataset)
    indices, neighbours = np.array([5, 0, 7]), np.array([1, 5, 2])
    batch = data.batch(indices)
    assert set(batch) == {"x", "index"} and batch["index"].dtype == np.int32
    np.testing.assert_array_equal(batch["x"], dataset.inputs[indices])
    batch = data.batch(indices, neighbours)
    np.testing.assert_array_equal(batch["neighbour_x"], dataset.inputs[neighbours])
    np.testing.assert_array_equal(batch["neighbour_index"], neighbours)
    assert data.spec == loader.data_spec_of(dataset) and data.images().shape == (256, 8, 8, 1)
    np.testing.assert_array_equal(data.sample(3), dataset.inputs[:3])


def test_rerun_of_finished_workdir_resumes_without_training(reference_run, capsys):
    workdir, final = reference_run
    before = open(os.path.join(workdir, "metrics.jsonl")).read()
    again = train.train_and_evaluate(tiny_config(), workdir)
    out = capsys.readouterr().out
    assert "resumed from checkpoint step 64" in out
    assert "[cluster]" not in out  # no train step ran
    assert again == final
    assert open(os.path.join(workdir, "metrics.jsonl")).read() == before


def test_corrupt_latest_checkpoint_is_skipped(reference_run, tmp_path, capsys):
    ref_dir, _ = reference_run
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(tiny_config(keep_checkpoints=3), workdir)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    latest = max(int(s) for s in os.listdir(ckpt_dir) if s.isdigit())
    # Truncate every data file of the newest step, as a crash in the middle of a copy would.
    for root, _, files in os.walk(os.path.join(ckpt_dir, str(latest), "state")):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
    capsys.readouterr()
    train.train_and_evaluate(tiny_config(keep_checkpoints=3), workdir)
    out = capsys.readouterr().out
    assert f"checkpoint step {latest} is corrupt" in out
    assert f"moved corrupt checkpoint step {latest}" in out
    assert "resumed from checkpoint step" in out
    assert any(name.startswith(f"corrupt_checkpoint_{latest}_") for name in os.listdir(workdir))
    ours, _ = final_params(workdir)
    ref, _ = final_params(ref_dir)
    for a, b in zip(ours, ref):
        np.testing.assert_array_equal(a, b)


def test_all_checkpoints_corrupt_is_a_clear_error(tmp_path):
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(tiny_config(keep_checkpoints=1), workdir)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    for step in os.listdir(ckpt_dir):
        shutil.rmtree(os.path.join(ckpt_dir, step, "state"), ignore_errors=True)
    with pytest.raises(checkpointing.CheckpointError, match="none of the checkpoints"):
        train.train_and_evaluate(tiny_config(keep_checkpoints=1), workdir)


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    # One pretraining epoch, then 150 cluster steps with a target update (and an evaluation)
    # every 10 steps and a checkpoint every 50: the kill lands in the cluster phase after an
    # evaluation newer than the last checkpoint, so resume must restore the target distribution
    # and drop that evaluation.
    overrides = {"pretrain.epochs": 1, "dec.max_steps": 150, "checkpoint_every_steps": 50}
    reference = str(tmp_path / "reference")
    train.train_and_evaluate(tiny_config(**overrides), reference)

    workdir = str(tmp_path / "killed")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    # SIGKILL could cut a compilation cache entry short: no cache.
    env = {k: v for k, v in os.environ.items() if k not in COMPILATION_CACHE_ENV}
    env["XLA_FLAGS"] = with_test_xla_flags()
    proc = subprocess.Popen(cli_args(dict(TINY_CLI, **overrides), workdir), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
    # Killed on a progress line, not a clock: "[cluster] step 70/" comes after the checkpoint at
    # step 50 and the evaluation at step 68, 30 steps before the next checkpoint (step 100).
    # The watchdog only ends a run that hangs; it is as long as the resumed run's timeout.
    watchdog = threading.Timer(300, proc.kill)
    watchdog.start()
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("[cluster] step 70/"):
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait()
    finally:
        watchdog.cancel()
        proc.stdout.close()
    assert lines and lines[-1].startswith("[cluster] step 70/"), "".join(lines)[-3000:]
    assert proc.returncode == -signal.SIGKILL
    steps = [int(s) for s in os.listdir(ckpt_dir) if s.isdigit()]
    with open(metrics_path) as f:
        logged = [json.loads(line)["step"] for line in f if line.endswith("\n")]
    # Mid-phase: a checkpoint after pretraining, and an evaluation newer than it.
    assert max(steps) == 50 and logged[-1] == 68, (steps, logged)
    result = run(cli_args(dict(TINY_CLI, **overrides), workdir), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resumed from checkpoint step" in result.stdout
    ours, state = final_params(workdir)
    ref, ref_state = final_params(reference)
    assert int(state.step) == int(ref_state.step) == 158
    for a, b in zip(ours, ref):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(state.cluster.target, ref_state.cluster.target)
    # The evaluation newer than the restored checkpoint was dropped, then written again once.
    ours_log = [{k: v for k, v in r.items() if k not in ("time", "nmi_previous")} for r in _records(workdir)]
    ref_log = [{k: v for k, v in r.items() if k not in ("time", "nmi_previous")} for r in _records(reference)]
    assert ours_log == ref_log


def test_each_phase_step_is_traced_once_in_a_whole_run(tmp_path, monkeypatch):
    """No silent recompiles: across a whole run (pretraining, the k-means that starts the
    clustering phase, target updates every 10 steps, checkpoints, evaluations) each phase's train
    step is traced once; a clustering state that changed shape or dtype would retrace it."""
    make_train_step, made = jstate.make_train_step, []

    def traced_once(method, phase_index):
        made.append(phase_index)
        # chex counts traces by where the function was defined, which the phases share: at most
        # one trace for each of DEC's two phases.
        return chex.assert_max_traces(make_train_step(method, phase_index), n=2)

    chex.clear_trace_counter()
    monkeypatch.setattr(jstate, "make_train_step", traced_once)
    train.train_and_evaluate(tiny_config(), str(tmp_path / "run"))
    assert made == [0, 1]


def test_unlabelled_folder_trains_and_skips_label_metrics(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(48):
        bright = 40 if i % 2 else 200  # two visible groups
        pixels = np.clip(rng.normal(bright, 20, size=(10 + i % 5, 12, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{i:03d}.png")
    config = tiny_config(**{"data.source": f"folder:{folder}", "data.limit": 0, "num_clusters": 2,
                            "batch_size": 16, "data.image_shape": (8, 8, 1)})
    final = train.train_and_evaluate(config, str(tmp_path / "run"))
    out = capsys.readouterr().out
    assert out.count("no labels") == 1
    assert "acc" not in final and final["clusters_used"] >= 1


def test_delius_on_npz_features_and_on_a_jclust_encoder(reference_run, tmp_path, capsys):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 24)) * 4
    labels = np.repeat(np.arange(3), 40)
    features = (centers[labels] + rng.normal(size=(120, 24))).astype(np.float32)
    np.savez(tmp_path / "feats.npz", feature=features, label=labels)
    config = config_lib.load_config(os.path.join(ROOT, f"configs/delius.py:npz:{tmp_path}/feats.npz"))
    config = config_lib.apply_overrides(config, {
        "num_clusters": 3, "batch_size": 24, "model.hidden": (32, 32), "model.embed_dim": 3,
        "pretrain.epochs": 20, "dec.max_steps": 40, "dec.update_interval": 10,
        "kmeans.n_init": 3, "log_every_steps": 50})
    final = train.train_and_evaluate(config, str(tmp_path / "npz_run"))
    assert final["acc"] > 0.9  # three well separated blobs

    # A folder of images encoded by the encoder of a trained jclust run (the tiny digits run,
    # which the DELIUS run and predict only read: the other tests of reference_run check it).
    folder = tmp_path / "art"
    for cls in ("dark", "light"):
        (folder / cls).mkdir(parents=True)
        for i in range(20):
            value = 30 if cls == "dark" else 220
            pixels = np.clip(rng.normal(value, 25, size=(16, 16)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "L").save(folder / cls / f"{i}.png")
    encoder_dir, _ = reference_run
    config = config_lib.load_config(os.path.join(ROOT, f"configs/delius.py:folder:{folder}"))
    config = config_lib.apply_overrides(config, {
        "data.backbone.name": "", "data.encoder_workdir": encoder_dir, "num_clusters": 2,
        "batch_size": 8,
        "model.hidden": (16,), "model.embed_dim": 2, "pretrain.epochs": 5, "dec.max_steps": 10,
        "dec.update_interval": 5, "kmeans.n_init": 2, "log_every_steps": 50})
    capsys.readouterr()
    final = train.train_and_evaluate(config, str(tmp_path / "folder_run"))
    out = capsys.readouterr().out
    assert "features of dim 4" in out  # the encoder's 4-d embedding
    assert final["acc"] > 0.9

    # predict on a DELIUS run encodes the images with the same encoder first.
    from jclust import predict
    result = predict.predict(str(tmp_path / "folder_run"), f"folder:{folder}",
                             str(tmp_path / "predicted"), pictures=False)
    assert result.summary["acc"] == pytest.approx(final["acc"])
    assert result.ids[0].startswith("dark/") and result.embeddings.shape == (40, 2)


# ---------------------------------------------------------------------------------------------
# Bad input: a clear error, and nothing written


@pytest.mark.parametrize("overrides, expected", [
    ({"dec.tolerance": "0.1"}, ("dec.tolerance", "dec.tol")),  # unknown key: names valid keys
    ({"batch_size": "many"}, ("batch_size", "int")),            # wrong type: names the type
])
def test_cli_bad_override_is_one_line_and_writes_nothing(tmp_path, overrides, expected):
    workdir = tmp_path / "never"
    result = run(cli_args(overrides, str(workdir)), timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and all(text in lines[0] for text in expected)
    assert not workdir.exists()


def test_apply_overrides_errors():
    config = tiny_config()
    with pytest.raises(config_lib.ConfigError, match="unknown config key 'model.depth'.*model.hidden"):
        config_lib.apply_overrides(config, {"model.depth": 3})
    with pytest.raises(config_lib.ConfigError, match="pretrain.epochs"):
        config_lib.apply_overrides(config, {"pretrain.epochs": "ten"})
    with pytest.raises(config_lib.ConfigError, match="method"):
        config_lib.validate(config_lib.apply_overrides(config, {"method": "kmeans"}),
                            jmethods.REGISTRY)
    assert config_lib.apply_overrides(config, {"dec.tol": "1"}).dec.tol == 1.0


@pytest.mark.parametrize("overrides, error, match", [
    ({"data.source": "idx:/nonexistent/dir"}, data.DataError, "nonexistent"),
    ({"data.image_shape": (28, 28, 1)}, data.DataError, "do not match"),
    ({"num_clusters": 300}, config_lib.ConfigError, "larger than the number of examples"),
    ({"batch_size": 30, "data.limit": 20}, config_lib.ConfigError, "batch_size"),
])
def test_bad_input_fails_before_writing(tmp_path, overrides, error, match):
    workdir = tmp_path / "never"
    with pytest.raises(error, match=match):
        train.train_and_evaluate(tiny_config(**overrides), str(workdir))
    assert not workdir.exists()


def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path):
    features = np.random.default_rng(0).normal(size=(256, 16)).astype(np.float32)
    features[200] = 1e30  # overflows the squared reconstruction error to inf
    np.savez(tmp_path / "bad.npz", feature=features)
    config = tiny_config(**{"data.source": f"npz:{tmp_path}/bad.npz", "data.shuffle": False,
                            "checkpoint_every_steps": 5, "data.limit": 0})
    workdir = str(tmp_path / "run")
    # Example 200 is in batch 200 // 32 = 6 (0-based), i.e. the 7th step.
    with pytest.raises(monitor.NonFiniteLossError, match=r"at step 7 .*step 5\) is left intact"):
        train.train_and_evaluate(config, workdir)
    _, state = final_params(workdir)
    assert int(state.step) == 5
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))


def test_cli_unknown_config_argument_is_one_line(tmp_path):
    result = run(cli_args({}, str(tmp_path / "never"), config_file="configs/dec.py:nonsense"),
                 timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "nonsense" in lines[0]


def test_boolean_overrides_follow_absl():
    config = tiny_config()
    assert config_lib.apply_overrides(config, {"data.shuffle": "f"}).data.shuffle is False
    assert config_lib.apply_overrides(config, {"data.shuffle": "True"}).data.shuffle is True
    with pytest.raises(config_lib.ConfigError, match="data.shuffle"):
        config_lib.apply_overrides(config, {"data.shuffle": "yes"})  # absl would refuse it too
    assert config_lib.cli_overrides(["--config.data.shuffle", "--noconfig.data.shuffle"]) == {
        "data.shuffle": "false"}


@pytest.mark.parametrize("overrides, match", [
    ({"dec.update_interval": 0}, "dec.update_interval"),
    ({"dec.alpha": -1.0}, "dec.alpha"),
    ({"pretrain.optimizer": "lbfgs"}, "unknown optimizer"),
    ({"model.name": "small_cnn"}, "mlp_autoencoder"),
])
def test_out_of_range_method_values_are_config_errors(tmp_path, overrides, match):
    with pytest.raises(config_lib.ConfigError, match=match):
        train.train_and_evaluate(tiny_config(**overrides), str(tmp_path / "never"))
    assert not (tmp_path / "never").exists()


def test_phase_params_are_exported_and_initialise_another_run(reference_run, tmp_path, capsys):
    ref_dir, _ = reference_run
    pretrained = jworkdir.phase_params_path(ref_dir, "pretrain")
    assert os.path.exists(jworkdir.phase_params_path(ref_dir, "cluster"))
    # IDEC on DEC's pretrained autoencoder, as IDEC's reference code does with --ae_weights; with
    # a zero learning rate the autoencoder must come out exactly as it was loaded.
    workdir = str(tmp_path / "idec")
    config = tiny_config(method="idec", init_params=pretrained, **{
        "pretrain.epochs": 0, "dec.learning_rate": 0.0, "dec.max_steps": 10})
    train.train_and_evaluate(config, workdir)
    assert f"parameters initialised from {pretrained}" in capsys.readouterr().out
    like = inference.load_run(workdir)[2].params
    exported = jworkdir.import_params(pretrained, like)
    _, _, state, _ = inference.load_run(workdir)
    for a, b in zip(jax.tree.leaves(exported["autoencoder"]),
                    jax.tree.leaves(state.params["autoencoder"])):
        np.testing.assert_array_equal(a, np.asarray(b))


@pytest.mark.parametrize("overrides, match", [
    ({"init_params": "/nonexistent/params.msgpack"}, "no such file"),
    ({"model.embed_dim": 6}, "has shape"),
])
def test_bad_init_params_fail_before_writing(reference_run, tmp_path, overrides, match):
    ref_dir, _ = reference_run
    overrides = {"init_params": jworkdir.phase_params_path(ref_dir, "pretrain"), **overrides}
    workdir = str(tmp_path / "run")
    with pytest.raises(config_lib.ConfigError, match=match):
        train.train_and_evaluate(tiny_config(**overrides), workdir)
    assert not os.path.exists(workdir)


def test_method_order_is_used_as_given_then_reshuffled_in_later_epochs():
    schedule = jschedule.BatchSchedule(num_examples=12, batch_size=4, seed=3, shuffle=True)
    order = np.array([5, 5, 7, 7, 1, 1, 2, 2, 9, 9, 0, 0])  # a uniform-sampling multiset
    schedule.set_order(order, epoch=2)
    epoch = lambda e: np.concatenate([schedule.indices(e * 3 + b) for b in range(3)])
    np.testing.assert_array_equal(epoch(2), order)  # the epoch of the recluster: as given
    later = [epoch(3), epoch(4)]
    for e, got in zip((3, 4), later):
        # Same examples, in that epoch's seeded permutation, and reproducible after a resume.
        np.testing.assert_array_equal(got, order[jschedule.epoch_order(12, e, 3, True)])
        np.testing.assert_array_equal(np.sort(got), np.sort(order))
    assert not np.array_equal(later[0], later[1]) and not np.array_equal(later[0], order)
    schedule.set_order(None)
    np.testing.assert_array_equal(epoch(5), jschedule.epoch_order(12, 5, 3, True))


def test_order_of_several_epochs_is_read_a_slice_an_epoch_then_reshuffled():
    # 14 examples, batches of 4: an epoch is 3 batches (12 indices; the last 2 are dropped).
    schedule = jschedule.BatchSchedule(num_examples=14, batch_size=4, seed=3, shuffle=True)
    order = np.arange(24)[::-1] % 14  # two epochs' worth
    schedule.set_order(order, epoch=1)
    epoch = lambda e: np.concatenate([schedule.indices(e * 3 + b) for b in range(3)])
    np.testing.assert_array_equal(epoch(1), order[:12])
    np.testing.assert_array_equal(epoch(2), order[12:])
    # Past its end the order is read through each epoch's seeded permutation, as a one-epoch one.
    np.testing.assert_array_equal(epoch(3), order[jschedule.epoch_order(24, 3, 3, True)][:12])
    with pytest.raises(ValueError, match="shorter than an epoch"):
        schedule.set_order(order[:11])


def test_last_recluster_step_finds_the_recluster_a_resume_must_follow():
    method = jmethods.from_config(tiny_config(), jmethods.DataSpec(256, (8, 8, 1), True))
    bounds = jschedule.phase_bounds(method)
    due = [s for s in range(bounds[-1][1]) if jschedule.recluster_due(method, bounds, s)[0]]
    assert len(due) >= 2
    for step in range(bounds[-1][1]):
        assert jschedule.last_recluster_step(method, bounds, step) == max(
            [s for s in due if s <= step], default=0)


def test_checkpoints_keep_zero_size_state(tmp_path):
    """Orbax refuses zero-size arrays (SwAV's queue with queue_length=0, NMM without
    neighbours); the checkpointer writes a stand-in and restores the empty array."""
    from jclust import checkpointing
    state = {"queue": jnp.zeros((2, 0, 4)), "w": jnp.arange(3.0),
             "neighbours": jnp.zeros((5, 0), jnp.int32)}
    ckpt = checkpointing.Checkpointer(str(tmp_path / "ckpt"))
    ckpt.save(3, state, {"step": 3})
    ckpt.close()
    ckpt = checkpointing.Checkpointer(str(tmp_path / "ckpt"))
    restored, meta = ckpt.restore_latest(state)
    ckpt.close()
    assert meta["step"] == 3
    assert restored["queue"].shape == (2, 0, 4) and restored["neighbours"].dtype == jnp.int32
    assert restored["neighbours"].shape == (5, 0)
    np.testing.assert_array_equal(restored["w"], [0.0, 1.0, 2.0])


def test_an_evaluation_in_one_cluster_warns():
    """The one collapse rule every method's evaluation shares (printed by the trainer)."""
    from jclust import evaluators
    record = {"clusters_used": 1}
    assert "all 300 examples in one cluster" in evaluators.collapse_warning(record, 10, 300)
    assert evaluators.collapse_warning(record, 1, 300) is None  # K = 1: one cluster is right
    assert evaluators.collapse_warning({"clusters_used": 2}, 10, 300) is None
