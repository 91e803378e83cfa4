"""Bad input on the command line: one `error:` line naming the problem and the fix, a non-zero exit,
no traceback, and nothing written (a new workdir is not created, an existing run is unchanged)."""

import hashlib
import json
import os
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from jclust import config_lib, train
from jclust import workdir as jworkdir
from tests.conftest import ROOT, TINY_CLI, cli_args, run, tiny_config

# A shorter tiny run than TINY_CLI's: its checkpoints are all these tests need.
SHORT = {"pretrain.epochs": 1, "dec.max_steps": 10, "checkpoint_every_steps": 5}
SHORT_CLI = dict(TINY_CLI, **SHORT)


def assert_one_error_line(result, *words):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def tree_hash(folder) -> dict:
    """Every file under ``folder`` (relative path) -> sha256 of its bytes; folders -> "dir"."""
    out = {}
    for root, dirs, names in os.walk(folder):
        out.update({os.path.relpath(os.path.join(root, d), folder): "dir" for d in dirs})
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("finished") / "run")
    train.train_and_evaluate(tiny_config(**SHORT), workdir)
    return workdir


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A copy of the finished run and the hashes of all its files."""
    workdir = str(tmp_path / "run")
    shutil.copytree(finished_run, workdir)
    return workdir, tree_hash(workdir)


def main(overrides, workdir, timeout=120):
    return run(cli_args(overrides, str(workdir)), timeout=timeout)


def predict(*flags, timeout=120):
    return run([sys.executable, "-m", "jclust.predict", *flags], timeout=timeout)


# ---------------------------------------------------------------------------------------------
# Files the program reads: config files, data, run.json, checkpoints, another run


@pytest.mark.parametrize("content, words", [
    ("def get_config(:\n    pass\n", ("syntax error at line 1",)),
    ("x = 1\n", ("no get_config",)),
    ("def get_config():\n    return {}['a']\n", ("KeyError", "line 2")),
    ("def get_config():\n    return {}\n", ("returned a dict", "ConfigDict")),
    (None, ("does not exist",)),
])
def test_bad_config_file(tmp_path, content, words):
    path = tmp_path / "config.py"
    if content is not None:
        path.write_text(content)
    workdir = tmp_path / "never"
    result = run([sys.executable, "-m", "jclust.main", f"--config={path}", f"--workdir={workdir}"],
                 timeout=60)
    assert_one_error_line(result, str(path), *words)
    assert not workdir.exists()


def test_truncated_npz(tmp_path):
    path = tmp_path / "half.npz"
    np.savez(path, image=np.zeros((300, 8, 8), np.uint8))
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    workdir = tmp_path / "never"
    result = main(dict(SHORT_CLI, **{"data.source": f"npz:{path}", "data.limit": 0}), workdir)
    assert_one_error_line(result, "cannot read npz file", str(path), "numpy.savez")
    assert not workdir.exists()


def test_encoder_workdir_without_a_run(tmp_path):
    workdir = tmp_path / "never"
    result = main(dict(SHORT_CLI, **{"data.encoder_workdir": str(tmp_path / "nothing")}), workdir)
    assert_one_error_line(result, "config.data.encoder_workdir", "not a jclust workdir")
    assert not workdir.exists()


@pytest.mark.parametrize("overrides, words", [
    ({"data.backbone.layers": "('group9',)"},
     ("config.data.backbone.layers", "unknown EfficientNet-Lite layer 'group9'", "group7")),
    ({"data.backbone.weights": "/nonexistent/lite0.pth"},
     ("config.data.backbone.weights='/nonexistent/lite0.pth': no such file",)),
    ({"data.backbone.image_size": 8}, ("config.data.backbone.image_size=8", "224")),
    ({"data.backbone.name": "resnet50"}, ("config.data.backbone.name='resnet50'",
                                          "efficientnet_lite0")),
    ({"data.encoder_workdir": "runs/dec"}, ("both set", "--config.data.backbone.name=")),
])
def test_bad_backbone(tmp_path, overrides, words):
    """DELIUS on a folder with a bad data.backbone: one line naming the key, nothing written
    (all checked before an image is decoded or a weight read)."""
    folder = tmp_path / "paintings"
    folder.mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(folder / "a.png")
    workdir = tmp_path / "never"
    result = run(cli_args(overrides, str(workdir), f"configs/delius.py:folder:{folder}"),
                 timeout=120)
    assert_one_error_line(result, *words)
    assert not workdir.exists()


@pytest.mark.parametrize("overrides, words", [
    ({"model.embed_dim": 6}, ("model.embed_dim: 4 -> 6",)),  # another model
    ({"data.limit": 300}, ("data.limit: 256 -> 300",)),        # other data
])
def test_resume_with_another_config_touches_nothing(run_copy, overrides, words):
    workdir, before = run_copy
    result = main(dict(SHORT_CLI, **overrides), workdir)
    assert_one_error_line(result, *words, "use a new workdir", "restore the old values")
    assert "corrupt" not in result.stdout + result.stderr
    assert tree_hash(workdir) == before


def test_resume_with_other_logging_goes_on_and_names_the_keys(run_copy):
    # Which keys may change is tested in-process below; here, that the CLI's config is the one
    # run.json recorded, and that a finished run resumes without touching its checkpoints.
    workdir, before = run_copy
    result = main(dict(SHORT_CLI, **{"log_every_steps": 3, "keep_checkpoints": 3}), workdir)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr[-3000:]
    assert ("note: config keys changed since this workdir was started: keep_checkpoints, "
            "log_every_steps") in result.stdout
    assert "final (step 18)" in result.stdout  # 8 pretraining steps + 10
    after = tree_hash(workdir)
    assert {k: v for k, v in after.items() if k.startswith("checkpoints")} == {
        k: v for k, v in before.items() if k.startswith("checkpoints")}


def test_damaged_run_json_touches_nothing(run_copy):
    workdir, _ = run_copy
    path = os.path.join(workdir, "run.json")
    with open(path, "r+") as f:
        f.truncate(os.path.getsize(path) // 2)
    before = tree_hash(workdir)
    result = main(SHORT_CLI, workdir)
    assert_one_error_line(result, path, "damaged", "restore it from a copy")
    assert tree_hash(workdir) == before


def test_a_workdir_of_the_older_checkpoint_layout_touches_nothing(run_copy, tmp_path):
    """run.json version 2: checkpoints with the evaluation inside the method's state."""
    workdir, _ = run_copy
    path = os.path.join(workdir, "run.json")
    info = json.loads(open(path).read())
    with open(path, "w") as f:
        json.dump({**info, "version": 2}, f)
    before = tree_hash(workdir)
    words = ("older jclust (run.json version 2)", "train again in a new workdir",
             jworkdir.LAST_JCLUST_OF_VERSION_2)
    assert_one_error_line(main(SHORT_CLI, workdir), *words)
    out = tmp_path / "out"
    assert_one_error_line(predict(f"--workdir={workdir}", "--data=digits", f"--out={out}"), *words)
    assert not out.exists() and tree_hash(workdir) == before


def test_nan_before_the_first_checkpoint_says_there_is_none(tmp_path):
    features = np.random.default_rng(0).normal(size=(64, 16)).astype(np.float32)
    features[0] = 1e30  # overflows the squared reconstruction error at step 1
    np.savez(tmp_path / "bad.npz", feature=features)
    result = main(dict(SHORT_CLI, **{"data.source": f"npz:{tmp_path}/bad.npz", "data.limit": 0,
                                     "data.shuffle": False, "checkpoint_every_steps": 1000}),
                  tmp_path / "run")
    line = assert_one_error_line(result, "at step 1", "No checkpoint was written yet")
    assert "step -1" not in line


# ---------------------------------------------------------------------------------------------
# Places it writes, and its flags


@pytest.mark.parametrize("make, words", [
    (lambda tmp: tmp / "file", ("is a file, not a directory",)),
    (lambda tmp: tmp / "file" / "run", ("cannot be created", "is a file")),
])
def test_workdir_that_cannot_be_a_directory(tmp_path, make, words):
    (tmp_path / "file").write_text("x")
    result = main(SHORT_CLI, make(tmp_path))
    assert_one_error_line(result, "--workdir", *words)
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.parametrize("args, words", [
    (["--config=configs/dec.py:digits"], ("--workdir",)),
    (["--config=configs/dec.py:digits", "--workdir=/nonexistent/x", "--wokdir=y"], ("wokdir",)),
])
def test_flag_errors(args, words):
    assert_one_error_line(run([sys.executable, "-m", "jclust.main", *args], timeout=60), *words)


def test_predict_out_that_is_a_file(finished_run, tmp_path):
    out = tmp_path / "out"
    out.write_text("x")
    result = predict(f"--workdir={finished_run}", "--data=digits", f"--out={out}")
    assert_one_error_line(result, "out=", "is a file")
    assert out.read_text() == "x"


def test_predict_on_unreadable_checkpoints(run_copy, tmp_path):
    workdir, _ = run_copy
    for step in os.listdir(os.path.join(workdir, "checkpoints")):
        shutil.rmtree(os.path.join(workdir, "checkpoints", step, "state"))
    before = tree_hash(workdir)
    out = tmp_path / "out"
    result = predict(f"--workdir={workdir}", "--data=digits", f"--out={out}")
    assert_one_error_line(result, "none of the checkpoints", "could be restored")
    assert not out.exists() and tree_hash(workdir) == before


def test_predict_usage_error():
    assert_one_error_line(predict("--workdir=x"), "--data", "--out")


# ---------------------------------------------------------------------------------------------
# Which keys a resume may change (in-process: no subprocess needed)


def _fake_run(tmp_path, config):
    """A workdir whose run.json records ``config`` and which holds a (fake) checkpoint."""
    workdir = tmp_path / "fake"
    (workdir / "checkpoints" / "8").mkdir(parents=True)
    info = {"config": json.loads(json.dumps(config.to_dict(), default=list)),
            "data_spec": {"num_examples": 256, "input_shape": [8, 8, 1], "is_image": True},
            "version": jworkdir.VERSION}
    (workdir / "run.json").write_text(json.dumps(info))
    return str(workdir)


@pytest.mark.parametrize("config_file, base, overrides, resumable", [
    ("dec.py:digits", {}, {"eval_every_steps": 7, "pictures.projection": "tsne",
                           "tensorboard": False, "keep_checkpoints": 5, "dec.max_steps": 99}, True),
    ("dec.py:digits", {}, {"pretrain.epochs": 99}, False),  # the restored step's phase would move
    ("dec.py:digits", {}, {"seed": 1}, False),
    ("jule.py:digits", {}, {"jule.evaluation": "spectral", "optim.epochs": 99}, True),
    ("swav.py:digits", {}, {"optim.epochs": 99}, False),  # a cosine schedule over the epochs
    ("swav.py:digits", {"optim.lr_schedule": "constant"}, {"optim.epochs": 99}, True),
    ("odc.py:digits", {}, {"odc.eval_n_init": 3}, True),
    ("odc.py:digits", {}, {"odc.eval_pca_dim": 8}, False),  # the evaluation state's shape
])
def test_keys_a_resume_may_change(tmp_path, config_file, base, overrides, resumable):
    config = config_lib.apply_overrides(
        config_lib.load_config(os.path.join(ROOT, "configs", config_file)), base)
    workdir = _fake_run(tmp_path, config)
    changed = config_lib.apply_overrides(config, overrides)
    if resumable:
        keys, _ = jworkdir.check_resume(changed, workdir)
        assert keys == sorted(overrides)
    else:
        with pytest.raises(config_lib.ConfigError, match="use a new workdir"):
            jworkdir.check_resume(changed, workdir)
    # Without a checkpoint there is nothing to resume: any config starts over.
    shutil.rmtree(os.path.join(workdir, "checkpoints"))
    assert jworkdir.check_resume(changed, workdir) == ([], None)


def test_a_key_newer_than_run_json_is_named(tmp_path):
    config = config_lib.load_config(os.path.join(ROOT, "configs", "dec.py:digits"))
    workdir = _fake_run(tmp_path, config)
    info = json.loads(open(os.path.join(workdir, "run.json")).read())
    del info["config"]["kmeans"]["space"]  # as if written before the key existed
    with open(os.path.join(workdir, "run.json"), "w") as f:
        json.dump(info, f)
    with pytest.raises(config_lib.ConfigError,
                       match=r"kmeans.space: \(absent\) -> \"whitened\".*absent from run.json"):
        jworkdir.check_resume(config, workdir)


@pytest.mark.parametrize("edit, match", [
    (lambda info: info.pop("data_spec"), "lacks a valid data_spec"),
    (lambda info: info["data_spec"].pop("input_shape"), r"data_spec \(input_shape\)"),
    (lambda info: info.pop("config"), "holds no config"),
])
def test_run_json_without_its_sections(tmp_path, edit, match):
    config = config_lib.load_config(os.path.join(ROOT, "configs", "dec.py:digits"))
    workdir = _fake_run(tmp_path, config)
    info = json.loads(open(os.path.join(workdir, "run.json")).read())
    edit(info)
    with open(os.path.join(workdir, "run.json"), "w") as f:
        json.dump(info, f)
    with pytest.raises(config_lib.ConfigError, match=match):
        jworkdir.read_run_info(workdir)


def test_other_data_under_the_same_config_is_refused():
    from jclust import data, methods
    recorded = {"num_examples": 256, "input_shape": [8, 8, 1], "is_image": True}
    jworkdir.check_same_data(recorded, methods.DataSpec(256, (8, 8, 1), True), "w")
    with pytest.raises(data.DataError, match=r"300 images .* trained on \(256 images"):
        jworkdir.check_same_data(recorded, methods.DataSpec(300, (8, 8, 1), True), "w")


def test_predict_checks_its_arguments_before_loading(tmp_path):
    from jclust import predict as jpredict
    with pytest.raises(config_lib.ConfigError, match="limit must be >= 0"):
        jpredict.predict(str(tmp_path / "nothing"), "digits", limit=-1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(config_lib.ConfigError, match="cannot be created: .*file is a file"):
        jpredict.predict(str(tmp_path / "nothing"), "digits", str(tmp_path / "file" / "out"))
