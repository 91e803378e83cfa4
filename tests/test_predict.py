"""Assigning data with a trained run (jclust.predict), the run's pictures and TensorBoard events."""

import csv
import json
import os
import struct
import sys

import numpy as np
import pytest
from PIL import Image

from jclust import data, predict, train, writers
from jclust import workdir as jworkdir
from tests.conftest import run, tiny_config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny DEC run on 256 digits that also writes its pictures."""
    workdir = str(tmp_path_factory.mktemp("trained"))
    final = train.train_and_evaluate(tiny_config(**{"pictures.every_evals": 3}), workdir)
    return workdir, final


def _digit_folder(folder, count, corrupt=False):
    """count digits as 8x8 grayscale PNGs in folder (no class sub-folders: unlabelled)."""
    images = data.load("digits").inputs[:count]
    os.makedirs(folder, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image[..., 0]).save(os.path.join(folder, f"img_{i:03d}.png"))
    if corrupt:
        with open(os.path.join(folder, "broken.png"), "wb") as f:
            f.write(b"not an image")
    return images


def test_training_writes_pictures_assignments_and_logs(trained):
    workdir, final = trained
    for name in ("clusters.png", "confusion.png", "embedding.png", "curves.png"):
        with open(os.path.join(workdir, "pictures", name), "rb") as f:
            assert f.read(8) == PNG_SIGNATURE, name
    saved = np.load(os.path.join(workdir, jworkdir.ASSIGNMENTS))
    assert int(saved["step"]) == final["step"] and saved["labels"].shape == (256,)
    train_log = writers.read_jsonl(os.path.join(workdir, writers.TRAIN_LOG))
    steps = [r["step"] for r in train_log]
    assert steps == sorted(set(steps)) and steps[-1] == final["step"]
    assert {"loss", "phase", "steps_per_s"} <= set(train_log[-1])


def _tensorboard_scalars(logdir):
    """{tag: [(step, value)]} read back from the TFRecord event files (no TensorFlow needed)."""
    from tensorboardX.proto import event_pb2
    scalars = {}
    for name in sorted(os.listdir(logdir)):
        with open(os.path.join(logdir, name), "rb") as f:
            blob = f.read()
        pos = 0
        while pos < len(blob):
            (length,) = struct.unpack("<Q", blob[pos:pos + 8])
            event = event_pb2.Event.FromString(blob[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_events_hold_the_logged_numbers(trained):
    workdir, final = trained
    scalars = _tensorboard_scalars(os.path.join(workdir, writers.TENSORBOARD))
    step, acc = scalars["eval/acc"][-1]
    assert step == final["step"] and acc == pytest.approx(final["acc"], abs=1e-6)
    assert len(scalars["train/loss"]) == len(writers.read_jsonl(os.path.join(workdir, writers.TRAIN_LOG)))


def test_predict_reproduces_the_training_evaluation(trained, tmp_path):
    workdir, final = trained
    out = str(tmp_path / "out")
    result = predict.predict(workdir, "digits", out, limit=256)
    saved = np.load(os.path.join(workdir, jworkdir.ASSIGNMENTS))
    np.testing.assert_array_equal(result.labels, saved["labels"])
    np.testing.assert_allclose(result.confidence, saved["confidence"], rtol=1e-6)
    for key in ("acc", "nmi", "ari"):
        assert result.summary[key] == pytest.approx(final[key], abs=1e-9)
    with open(os.path.join(out, "assignments.csv")) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "cluster", "confidence", "label"] and len(rows) == 257
    assert [int(r[1]) for r in rows[1:]] == result.labels.tolist()
    embeddings = np.load(os.path.join(out, "embeddings.npy"))
    assert embeddings.shape == (256, 4) and embeddings.dtype == np.float32
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["assignment_rule"] == result.summary["assignment_rule"]
    assert sum(summary["cluster_sizes"]) == 256
    confusion = np.loadtxt(os.path.join(out, "confusion.csv"), delimiter=",", dtype=int)
    assert confusion.sum() == 256 and confusion.shape == (10, 10)
    for name in ("clusters.png", "confusion.png", "embedding.png"):
        assert open(os.path.join(out, name), "rb").read(8) == PNG_SIGNATURE


def test_single_image_gets_the_same_cluster_as_in_a_batch(trained):
    workdir, _ = trained
    predictor = predict.Predictor.from_workdir(workdir)
    images = data.load("digits").inputs[:40]
    labels, confidence, embeddings = predictor.assign(images)
    for i in (0, 7, 39):
        one_label, one_conf, one_emb = predictor.assign(images[i])
        assert one_label.shape == (1,) and one_label[0] == labels[i]
        np.testing.assert_allclose(one_conf[0], confidence[i], rtol=1e-5)
        np.testing.assert_allclose(one_emb[0], embeddings[i], rtol=1e-5, atol=1e-6)
    with pytest.raises(data.DataError, match="do not match"):
        predictor.assign(np.zeros((2, 28, 28, 1), np.uint8))
    with pytest.raises(data.DataError, match="uint8"):
        predictor.assign(images.astype(np.float32))


def test_cli_on_an_unlabelled_folder_names_the_skipped_file(trained, tmp_path):
    workdir, _ = trained
    folder = str(tmp_path / "photos")
    _digit_folder(folder, 12, corrupt=True)
    out = str(tmp_path / "out")
    predict.predict(workdir, "digits", out, limit=20, pictures=False)  # labelled, into the same out
    assert os.path.exists(os.path.join(out, "confusion.csv"))
    proc = run([sys.executable, "-m", "jclust.predict", f"--workdir={workdir}", f"--data=folder:{folder}",
                f"--out={out}"])
    assert proc.returncode == 0, proc.stderr
    assert "broken.png" in proc.stdout and "no labels" in proc.stdout
    with open(os.path.join(out, "assignments.csv")) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "cluster", "confidence"]
    assert sorted(r[0] for r in rows[1:]) == [f"img_{i:03d}.png" for i in range(12)]
    assert not os.path.exists(os.path.join(out, "confusion.csv"))  # the labelled run's is gone
    assert not os.path.exists(os.path.join(out, "confusion.png"))
    assert os.path.exists(os.path.join(out, "clusters.png"))
    assert "broken.png" in " ".join(json.load(open(os.path.join(out, "summary.json")))["warnings"])


@pytest.mark.parametrize("case, match", [
    ("no_run", "not a jclust workdir"),
    ("no_checkpoint", "no checkpoint"),
    ("wrong_shape", "do not match"),
    ("empty_folder", "holds no files"),
    ("only_corrupt", "no decodable image"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(trained, tmp_path, case, match):
    workdir, _ = trained
    source = "digits"
    if case == "no_run":
        workdir = str(tmp_path / "nothing")
        os.makedirs(workdir)
    elif case == "no_checkpoint":
        workdir = str(tmp_path / "fresh")
        os.makedirs(workdir)
        with open(os.path.join(workdir, "run.json"), "w") as f:
            f.write(open(os.path.join(trained[0], "run.json")).read())
    elif case == "wrong_shape":
        path = str(tmp_path / "big.npz")
        np.savez(path, image=np.zeros((3, 28, 28, 1), np.uint8))
        source = f"npz:{path}"
    elif case == "empty_folder":
        os.makedirs(tmp_path / "empty")
        source = f"folder:{tmp_path / 'empty'}"
    elif case == "only_corrupt":
        os.makedirs(tmp_path / "bad")
        (tmp_path / "bad" / "x.png").write_bytes(b"garbage")
        source = f"folder:{tmp_path / 'bad'}"
    out = str(tmp_path / "out")
    proc = run([sys.executable, "-m", "jclust.predict", f"--workdir={workdir}", f"--data={source}",
                f"--out={out}", "--no-pictures"])
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], proc.stderr
    assert not os.path.exists(out)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".predict-")]
