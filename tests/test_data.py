"""Tests of jclust.data: every source form, on small files written into tmp_path."""

import gzip
import pathlib
import subprocess
import sys
import warnings

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jclust.data import DataError, Dataset, DataWarning, describe, load
from jclust.data import sources

FASHION_DIR = pathlib.Path(sources.FASHION_MNIST_DIR)
HAS_DEBIAN_FASHION = all(
    (FASHION_DIR / f"{p}-{k}-idx{n}-ubyte.gz").exists()
    for p in ("train", "t10k") for k, n in (("images", 3), ("labels", 1)))


def write_idx(path: pathlib.Path, array: np.ndarray) -> pathlib.Path:
    """Writes a uint8 array as an IDX file (gzipped when the name ends in .gz)."""
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    data = header + np.ascontiguousarray(array, np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_idx_pair(folder, prefix, images, labels=None, gz=True):
    """Writes PREFIX-images-idx3-ubyte[.gz] and (optionally) PREFIX-labels-idx1-ubyte[.gz]."""
    ext = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
    if labels is not None:
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)


def images_with_values(start, n, shape=(3, 2)):
    """uint8 [n, *shape] where image i is filled with start + i."""
    return np.broadcast_to((start + np.arange(n, dtype=np.uint8))[:, None, None], (n, *shape)).copy()


# ---------------------------------------------------------------------------------------------
# idx:


def test_idx_merges_train_then_others_then_t10k(tmp_path):
    write_idx_pair(tmp_path, "t10k", images_with_values(100, 2), np.array([7, 8], np.uint8), gz=False)
    write_idx_pair(tmp_path, "train", images_with_values(0, 3), np.array([0, 1, 2], np.uint8))
    write_idx_pair(tmp_path, "extra", images_with_values(50, 1), np.array([5], np.uint8))
    ds = load(f"idx:{tmp_path}")
    assert ds.inputs.shape == (6, 3, 2, 1) and ds.inputs.dtype == np.uint8
    np.testing.assert_array_equal(ds.inputs[:, 0, 0, 0], [0, 1, 2, 50, 100, 101])
    np.testing.assert_array_equal(ds.labels, [0, 1, 2, 5, 7, 8])
    assert ds.labels.dtype == np.int32
    np.testing.assert_array_equal(ds.index, np.arange(6))
    assert ds.names is None and ds.class_names is None and ds.source == f"idx:{tmp_path}"


def test_idx_without_labels_is_unlabelled(tmp_path):
    write_idx_pair(tmp_path, "train", images_with_values(0, 4))
    ds = load(f"idx:{tmp_path}", image_shape=(3, 2, 1))
    assert ds.labels is None and ds.num_examples == 4


def test_idx_prefers_uncompressed_copy(tmp_path):
    write_idx_pair(tmp_path, "train", images_with_values(0, 2), gz=True)
    write_idx_pair(tmp_path, "train", images_with_values(9, 2), gz=False)
    np.testing.assert_array_equal(load(f"idx:{tmp_path}").inputs[:, 0, 0, 0], [9, 10])


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated_file_is_a_data_error(tmp_path, gz):
    write_idx_pair(tmp_path, "train", images_with_values(0, 4), np.arange(4, dtype=np.uint8), gz=gz)
    path = tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match="train-images"):
        load(f"idx:{tmp_path}")


def test_idx_bad_magic_label_mismatch_and_missing_files(tmp_path):
    bad, short, partial, empty = (tmp_path / n for n in ("bad", "short", "partial", "empty"))
    for folder in (bad, short, partial, empty):
        folder.mkdir()
    (bad / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x03" + bytes(12))
    with pytest.raises(DataError, match="magic"):
        load(f"idx:{bad}")
    write_idx_pair(short, "train", images_with_values(0, 4), np.arange(3, dtype=np.uint8))
    with pytest.raises(DataError, match="3 labels for 4 images"):
        load(f"idx:{short}")
    write_idx_pair(partial, "train", images_with_values(0, 2), np.arange(2, dtype=np.uint8))
    write_idx_pair(partial, "t10k", images_with_values(0, 1))
    with pytest.raises(DataError, match="no labels file: .*t10k-images"):
        load(f"idx:{partial}")
    for folder in (empty, tmp_path / "missing"):
        with pytest.raises(DataError, match=str(folder)):
            load(f"idx:{folder}")


# ---------------------------------------------------------------------------------------------
# fashion_mnist


@pytest.mark.skipif(not HAS_DEBIAN_FASHION, reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_from_debian_files(monkeypatch):
    monkeypatch.delenv(sources.FASHION_MNIST_ENV, raising=False)
    ds = load("fashion_mnist", image_shape=(28, 28, 1))
    assert ds.inputs.shape == (70_000, 28, 28, 1) and ds.inputs.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(ds.labels), [7_000] * 10)
    assert ds.class_names[0] == "T-shirt/top" and len(ds.class_names) == 10
    for prefix, row in (("train", 0), ("t10k", 60_000)):  # train first, then test
        with gzip.open(FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz") as f:
            first = np.frombuffer(f.read(16 + 784)[16:], np.uint8).reshape(28, 28)
        np.testing.assert_array_equal(ds.inputs[row, ..., 0], first)
    assert describe(ds) == "fashion_mnist: 70000 examples, images 28x28x1 uint8, labelled, 10 classes"


def test_fashion_mnist_env_var_overrides_the_folder(tmp_path, monkeypatch):
    write_idx_pair(tmp_path, "train", images_with_values(0, 3), np.array([0, 1, 9], np.uint8))
    write_idx_pair(tmp_path, "t10k", images_with_values(10, 2), np.array([3, 3], np.uint8), gz=False)
    monkeypatch.setenv(sources.FASHION_MNIST_ENV, str(tmp_path))
    ds = load("fashion_mnist")
    np.testing.assert_array_equal(ds.inputs[:, 0, 0, 0], [0, 1, 2, 10, 11])
    np.testing.assert_array_equal(ds.labels, [0, 1, 9, 3, 3])
    assert ds.class_names == sources.FASHION_MNIST_CLASS_NAMES and ds.source == "fashion_mnist"


def test_fashion_mnist_falls_back_to_tfds(tmp_path, monkeypatch):
    monkeypatch.setenv(sources.FASHION_MNIST_ENV, str(tmp_path))
    with tfds.testing.mock_data(num_examples=6):
        ds = load("fashion_mnist")
    assert ds.inputs.shape == (6, 28, 28, 1) and ds.source == "fashion_mnist"
    assert ds.class_names == sources.FASHION_MNIST_CLASS_NAMES


def test_fashion_mnist_error_names_both_remedies(tmp_path, monkeypatch):
    def tfds_fails(name, split, data_dir):
        raise DataError("offline")

    monkeypatch.setenv(sources.FASHION_MNIST_ENV, str(tmp_path))
    monkeypatch.setattr(sources, "_load_tfds", tfds_fails)
    with pytest.raises(DataError) as info:
        load("fashion_mnist")
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "JCLUST_FASHION_MNIST_DIR" in message and "tfds build fashion_mnist" in message
    assert str(tmp_path) in message and "offline" in message


# ---------------------------------------------------------------------------------------------
# tfds:


class JclustTestTiny(tfds.core.GeneratorBasedBuilder):
    """A real (not mocked) 3-split TFDS dataset with Tensor features, preparable without TF."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(4, 4, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=["a", "b", "c"]),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 5), "validation": self._generate_examples(100, 2),
                "test": self._generate_examples(200, 3)}

    def _generate_examples(self, offset, n):
        for i in range(n):
            yield i, {"image": np.full((4, 4, 1), offset + i, np.uint8), "label": i % 3}


@pytest.fixture(scope="module")
def tiny_tfds_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    JclustTestTiny(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir


def test_tfds_mock_data_loads_without_tensorflow():
    with tfds.testing.mock_data(num_examples=5):
        ds = load("tfds:mnist:train", image_shape=(28, 28, 1))
        versioned = load("tfds:mnist:3.0.1:test[:50%]")
    assert ds.inputs.shape == (5, 28, 28, 1) and ds.inputs.dtype == np.uint8
    assert ds.labels.dtype == np.int32 and ds.labels.min() >= 0 and ds.labels.max() <= 9
    assert ds.class_names == tuple(str(d) for d in range(10)) and ds.source == "tfds:mnist:train"
    assert versioned.num_examples == 5
    assert "tensorflow" not in sys.modules


def test_tfds_mock_data_without_split_asks_for_one():
    with tfds.testing.mock_data(num_examples=3), pytest.raises(DataError, match="tfds:mnist:train"):
        load("tfds:mnist")


def test_tfds_merges_all_splits_train_others_test(tiny_tfds_dir):
    ds = load("tfds:jclust_test_tiny", data_dir=tiny_tfds_dir)
    values = ds.inputs[:, 0, 0, 0]
    # TFDS shuffles records within a split, so check each split's block as a set.
    assert sorted(values[:5]) == [0, 1, 2, 3, 4]
    assert sorted(values[5:7]) == [100, 101] and sorted(values[7:]) == [200, 201, 202]
    np.testing.assert_array_equal(ds.labels, (values % 100) % 3)
    assert ds.class_names == ("a", "b", "c")
    test = load("tfds:jclust_test_tiny:test", data_dir=tiny_tfds_dir)
    assert sorted(test.inputs[:, 0, 0, 0]) == [200, 201, 202]
    with pytest.raises(DataError, match="do not match the expected shape"):
        load("tfds:jclust_test_tiny:train", data_dir=tiny_tfds_dir, image_shape=(28, 28, 1))


def test_tfds_errors_are_data_errors(tiny_tfds_dir):
    with pytest.raises(DataError, match="unknown TFDS dataset 'no_such_dataset_xyz'"):
        load("tfds:no_such_dataset_xyz:train")
    with pytest.raises(DataError, match="cannot load TFDS dataset 'jclust_test_tiny'"):
        load("tfds:jclust_test_tiny:bogus_split", data_dir=tiny_tfds_dir)
    with pytest.raises(DataError, match="names no dataset"):
        load("tfds:")


# ---------------------------------------------------------------------------------------------
# digits


def test_digits():
    from sklearn.datasets import load_digits

    ds = load("digits", image_shape=(8, 8, 1))
    assert ds.inputs.shape == (1797, 8, 8, 1) and ds.inputs.dtype == np.uint8
    assert ds.inputs.min() == 0 and ds.inputs.max() == 255
    raw = load_digits().images[..., None]
    np.testing.assert_array_equal(ds.inputs[raw == 16], 255)
    np.testing.assert_array_equal(ds.inputs[raw == 8], 128)
    np.testing.assert_array_equal(ds.labels, load_digits().target)
    # Read from scikit-learn's CSV without importing scikit-learn; the same table as its loader.
    pixels, target = sources._digits_table()
    np.testing.assert_array_equal(pixels, load_digits().data)
    np.testing.assert_array_equal(target, load_digits().target)
    code = ("import sys; from jclust import data; data.load('digits', image_shape=(8, 8, 1)); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr[-2000:]
    assert ds.labels.dtype == np.int32 and ds.class_names == tuple("0123456789")
    mismatch = r"images of shape \(8, 8, 1\) do not match the expected shape \(28, 28, 1\)"
    with pytest.raises(DataError, match=mismatch):
        load("digits", image_shape=(28, 28, 1))


# ---------------------------------------------------------------------------------------------
# npz:


def test_npz_images_3d_with_labels_and_names(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, image=images_with_values(0, 3), label=np.array([2, 0, 1], np.int64),
             name=np.array(["x", "y", "z"]))
    ds = load(f"npz:{path}")
    assert ds.inputs.shape == (3, 3, 2, 1) and ds.labels.dtype == np.int32
    np.testing.assert_array_equal(ds.labels, [2, 0, 1])
    assert ds.names == ("x", "y", "z") and ds.is_image


def test_npz_images_4d_without_labels(tmp_path):
    path = tmp_path / "b.npz"
    np.savez(path, image=np.zeros((2, 5, 4, 3), np.uint8))
    ds = load(f"npz:{path}", image_shape=(5, 4, 3))
    assert ds.labels is None and ds.names is None and ds.input_shape == (5, 4, 3)


def test_npz_features(tmp_path):
    path = tmp_path / "f.npz"
    np.savez(path, feature=np.random.default_rng(0).normal(size=(6, 16)), label=np.arange(6) % 2)
    ds = load(f"npz:{path}")
    assert ds.inputs.shape == (6, 16) and ds.inputs.dtype == np.float32 and not ds.is_image
    assert describe(ds) == f"npz:{path}: 6 examples, features of dim 16 float32, labelled, 2 classes"
    # Feature vectors have no image shape: image_shape (the model's image size) is not applied.
    assert load(f"npz:{path}", image_shape=(4, 4, 1)).inputs.shape == (6, 16)


@pytest.mark.parametrize("arrays, match", [
    (dict(image=np.zeros((3, 2, 2), np.uint8), label=np.zeros(2, np.int32)), "do not match 3 examples"),
    (dict(image=np.zeros((3, 2, 2), np.float32)), "must be uint8"),
    (dict(image=np.zeros((3, 2), np.uint8)), r"\[N, H, W\]"),
    (dict(label=np.zeros(3, np.int32)), "needs an 'image' or a 'feature'"),
    (dict(image=np.zeros((1, 2, 2), np.uint8), feature=np.zeros((1, 2))), "both"),
    (dict(image=np.zeros((2, 2, 2), np.uint8), label=np.zeros(2, np.float32)), "must be integers"),
    (dict(image=np.zeros((2, 2, 2), np.uint8), label=np.array([0, -1])), r"\[0, 2\*\*31\)"),
    (dict(feature=np.array([[np.nan, 1.0]])), "NaN"),
    (dict(feature=np.zeros((2, 2), np.int32)), "float"),
    (dict(image=np.zeros((2, 2, 2), np.uint8), name=np.array(["a"])), "'name'"),
    (dict(image=np.zeros((0, 2, 2), np.uint8)), "no examples"),
])
def test_npz_bad_inputs(tmp_path, arrays, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=match):
        load(f"npz:{path}")


def test_npz_bad_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load(f"npz:{tmp_path / 'missing.npz'}")
    np.save(tmp_path / "plain.npy", np.zeros(3))
    with pytest.raises(DataError, match="not an .npz"):
        load(f"npz:{tmp_path / 'plain.npy'}")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        load(f"npz:{tmp_path / 'junk.npz'}")
    np.savez(tmp_path / "obj.npz", image=np.array([object()] * 2, dtype=object))
    with pytest.raises(DataError, match="cannot read"):
        load(f"npz:{tmp_path / 'obj.npz'}")
    # Half-written (no central directory), and a damaged compressed member (bad CRC or deflate).
    np.savez_compressed(tmp_path / "full.npz",
                        image=np.arange(4096, dtype=np.uint8).reshape(64, 8, 8))
    whole = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "half.npz").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(DataError, match="cannot read npz file .*BadZipFile"):
        load(f"npz:{tmp_path / 'half.npz'}")
    damaged = bytearray(whole)
    damaged[100:140] = b"x" * 40
    (tmp_path / "damaged.npz").write_bytes(bytes(damaged))
    with pytest.raises(DataError, match="cannot read npz file"):
        load(f"npz:{tmp_path / 'damaged.npz'}")


# ---------------------------------------------------------------------------------------------
# folder:


def save_image(path: pathlib.Path, size, color, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


@pytest.fixture
def labelled_folder(tmp_path):
    root = tmp_path / "imgs"
    save_image(root / "dog" / "b.png", (20, 10), (255, 0, 0))
    save_image(root / "dog" / "a.jpg", (7, 13), (0, 255, 0))
    save_image(root / "cat" / "z.png", (8, 8), 200, mode="L")
    save_image(root / "cat" / "deeper" / "c.jpeg", (30, 30), (0, 0, 255))
    save_image(root / "cat" / ".hidden.png", (8, 8), (1, 2, 3))
    save_image(root / ".thumbs" / "x.png", (8, 8), (1, 2, 3))
    return root


def test_folder_labelled_grayscale_and_rgb(labelled_folder):
    gray = load(f"folder:{labelled_folder}", image_shape=(8, 8, 1))
    assert gray.inputs.shape == (4, 8, 8, 1) and gray.inputs.dtype == np.uint8
    assert gray.class_names == ("cat", "dog")
    assert gray.names == ("cat/deeper/c.jpeg", "cat/z.png", "dog/a.jpg", "dog/b.png")
    np.testing.assert_array_equal(gray.labels, [0, 0, 1, 1])
    assert gray.inputs[1].min() == gray.inputs[1].max() == 200
    assert gray.inputs[3].min() == gray.inputs[3].max() == 76  # PIL's L = 0.299 R + ...
    rgb = load(f"folder:{labelled_folder}", image_shape=(8, 6, 3))
    assert rgb.inputs.shape == (4, 8, 6, 3) and rgb.names == gray.names
    np.testing.assert_array_equal(rgb.inputs[3], np.broadcast_to([255, 0, 0], (8, 6, 3)))
    np.testing.assert_array_equal(rgb.inputs[1], np.full((8, 6, 3), 200))


def test_folder_flat_is_unlabelled(tmp_path):
    save_image(tmp_path / "b.png", (5, 9), (10, 20, 30))
    save_image(tmp_path / "a.bmp", (12, 3), (10, 20, 30))
    ds = load(f"folder:{tmp_path}", image_shape=(4, 4, 3))
    assert ds.labels is None and ds.class_names is None and ds.names == ("a.bmp", "b.png")
    assert describe(ds) == f"folder:{tmp_path}: 2 examples, images 4x4x3 uint8, unlabelled"


def test_folder_skips_undecodable_files_with_one_warning(labelled_folder):
    (labelled_folder / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    (labelled_folder / "cat" / "notes.txt").write_text("not an image")
    with pytest.warns(DataWarning) as record:
        ds = load(f"folder:{labelled_folder}", image_shape=(8, 8, 1))
    assert len(record) == 1
    message = str(record[0].message)
    assert "dog/broken.png" in message and "cat/notes.txt" in message
    assert ds.num_examples == 4 and "dog/broken.png" not in ds.names


def test_folder_top_level_files_are_ignored_with_a_warning(labelled_folder):
    save_image(labelled_folder / "stray.png", (8, 8), (0, 0, 0))
    with pytest.warns(DataWarning, match="stray.png"):
        ds = load(f"folder:{labelled_folder}", image_shape=(8, 8, 1))
    assert ds.num_examples == 4


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="holds no files"):
        load(f"folder:{tmp_path}", image_shape=(8, 8, 1))
    with pytest.raises(DataError, match="does not exist"):
        load(f"folder:{tmp_path / 'missing'}", image_shape=(8, 8, 1))
    (tmp_path / "junk.txt").write_text("x")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        with pytest.raises(DataError, match="no decodable image"):
            load(f"folder:{tmp_path}", image_shape=(8, 8, 1))
    save_image(tmp_path / "ok.png", (3, 3), (0, 0, 0))
    with pytest.raises(DataError, match="image_shape"):
        load(f"folder:{tmp_path}")
    with pytest.raises(DataError, match="C = 1 or 3"):
        load(f"folder:{tmp_path}", image_shape=(8, 8, 2))
    (tmp_path / "a_empty" / "deeper").mkdir(parents=True)
    save_image(tmp_path / "b_full" / "ok.png", (3, 3), (0, 0, 0))
    with pytest.warns(DataWarning), pytest.raises(DataError, match="without any decodable image: a_empty"):
        load(f"folder:{tmp_path}", image_shape=(8, 8, 1))


def test_unlistable_folders_are_data_errors(tmp_path, monkeypatch):
    save_image(tmp_path / "imgs" / "cat" / "a.png", (3, 3), (0, 0, 0))
    write_idx_pair(tmp_path, "train", images_with_values(0, 2))

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(pathlib.Path, "iterdir", refuse)  # chmod would not stop root
    with pytest.raises(DataError, match="cannot list image folder .*Permission denied"):
        load(f"folder:{tmp_path / 'imgs'}", image_shape=(8, 8, 1))
    with pytest.raises(DataError, match="cannot list IDX folder .*Permission denied"):
        load(f"idx:{tmp_path}")
    monkeypatch.undo()
    monkeypatch.setattr(sources.os, "walk", lambda folder, onerror: onerror(
        PermissionError(13, "Permission denied", str(folder))))
    with pytest.raises(DataError, match="cannot list image folder .*Permission denied"):
        load(f"folder:{tmp_path / 'imgs'}", image_shape=(8, 8, 1))


# ---------------------------------------------------------------------------------------------
# Source strings and the Dataset type


@pytest.mark.parametrize("source", ["mnist", "cifar10:train", "fashion_mnist:train", "", "folder"])
def test_unknown_source_lists_valid_forms(source):
    with pytest.raises(DataError, match="valid forms: fashion_mnist, digits, tfds:NAME"):
        load(source)


def test_dataset_subset_and_properties():
    ds = Dataset(np.arange(5 * 4, dtype=np.uint8).reshape(5, 2, 2, 1), np.arange(5, dtype=np.int32),
                 tuple("abcde"), None, "mem")
    assert ds.num_examples == 5 and ds.input_shape == (2, 2, 1) and ds.is_image
    assert ds.index.dtype == np.int32
    first = ds.subset(slice(0, 2))
    assert first.names == ("a", "b") and first.num_examples == 2
    picked = ds.subset(np.array([4, 1]))
    np.testing.assert_array_equal(picked.labels, [4, 1])
    np.testing.assert_array_equal(picked.inputs, ds.inputs[[4, 1]])
    assert picked.names == ("e", "b") and picked.source == "mem"
    np.testing.assert_array_equal(picked.index, [0, 1])
    with pytest.raises(DataError):
        Dataset(np.zeros((3, 4), np.float32), np.zeros(2, np.int32), None, None, "mem")
