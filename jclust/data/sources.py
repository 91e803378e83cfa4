"""Data sources: turn a source string into an in-memory `Dataset` of numpy arrays.

Source strings:

- ``fashion_mnist``: Debian's IDX files (``apt-get install dataset-fashion-mnist``) under
  ``/usr/share/datasets/fashion-mnist`` (``$JCLUST_FASHION_MNIST_DIR`` overrides the folder), else TFDS
  ``fashion_mnist``. Train then test: 70,000 examples.
- ``tfds:NAME[:SPLIT]``: a TFDS dataset read through ``tfds.data_source`` (no TensorFlow needed).
  NAME may carry a config and a version (``NAME/CONFIG:1.2.0``). Without SPLIT every split is merged.
- ``idx:DIR``: the ``*-images-idx3-ubyte[.gz]`` / ``*-labels-idx1-ubyte[.gz]`` pairs in a folder.
- ``digits``: scikit-learn's built-in 8x8 digits.
- ``npz:PATH``: a numpy archive holding ``image`` (or ``feature``) plus optional ``label`` and ``name``.
- ``folder:DIR``: image files of any size, decoded and resized with PIL; labelled by sub-folder.
  Files that are not usable images (not images, damaged, decompression bombs: see
  :mod:`jclust.data.images`) are skipped and named in one warning.

Merged splits are always ordered train first, then any other split in alphabetical order, then
test (``t10k`` for IDX files), so an example's index (its row) never depends on the file system.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.util
import os
import pathlib
import re
import warnings
import zipfile
import zlib
from typing import Any, Sequence

import numpy as np

from jclust.data import images as jimages

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_ENV = "JCLUST_FASHION_MNIST_DIR"
FASHION_MNIST_CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

SOURCE_FORMS = (
    "fashion_mnist",
    "digits",
    "tfds:NAME[:SPLIT]",
    "idx:DIR",
    "npz:PATH",
    "folder:DIR",
)

_IMAGE_KEYS = ("image", "img", "x")
_TFDS_BATCH = 1024
_IDX_IMAGES = re.compile(r"^(?P<prefix>.+?)-images[-.]idx3-ubyte(?P<gz>\.gz)?$")
_IDX_LABELS = re.compile(r"^(?P<prefix>.+?)-labels[-.]idx1-ubyte(?P<gz>\.gz)?$")
# A TFDS version after the name ("mnist:3.0.1", "mnist:3.*.*"); anything else after ":" is a split.
_TFDS_VERSION = re.compile(r"^[0-9*]+(\.[0-9*]+){0,2}$")


class DataError(ValueError):
    """A data source could not be loaded or holds invalid data."""


class DataWarning(UserWarning):
    """Something in a data source was skipped (e.g. files that are not images)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """An in-memory data set; an example's index is its row in these arrays.

    Attributes:
        inputs: uint8 images [N, H, W, C] (C=1 for grayscale), or float32 feature vectors [N, D].
        labels: int32 [N], or None when unlabelled.
        names: per-example identifiers (N strings; relative file paths for ``folder:``), or None.
        class_names: the name of each label value, or None when unknown.
        source: the source string the data set was loaded from.
    """

    inputs: np.ndarray
    labels: np.ndarray | None
    names: tuple[str, ...] | None
    class_names: tuple[str, ...] | None
    source: str

    def __post_init__(self):
        n = self.inputs.shape[0]
        if self.inputs.ndim not in (2, 4):
            raise DataError(
                f"inputs must be [N, H, W, C] images or [N, D] features, got shape {self.inputs.shape}")
        if self.labels is not None and self.labels.shape != (n,):
            raise DataError(f"labels of shape {self.labels.shape} do not match {n} examples")
        if self.names is not None and len(self.names) != n:
            raise DataError(f"{len(self.names)} names do not match {n} examples")

    @property
    def num_examples(self) -> int:
        """N, the number of examples."""
        return int(self.inputs.shape[0])

    @property
    def index(self) -> np.ndarray:
        """int32 [N]: each example's index, which is its row."""
        return np.arange(self.num_examples, dtype=np.int32)

    @property
    def is_image(self) -> bool:
        """True for images [N, H, W, C], False for feature vectors [N, D]."""
        return self.inputs.ndim == 4

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one example: (H, W, C) or (D,)."""
        return tuple(self.inputs.shape[1:])

    def subset(self, indices: Any) -> Dataset:
        """The examples at `indices` (int array [M], boolean mask [N] or slice), in that order.

        Labels and names stay aligned with inputs; the result is re-indexed 0..M-1.
        """
        rows = np.arange(self.num_examples)[indices]
        if rows.ndim != 1:
            raise DataError(f"subset indices must select a 1-D list of rows, got shape {rows.shape}")
        return Dataset(
            inputs=self.inputs[rows],
            labels=None if self.labels is None else self.labels[rows],
            names=None if self.names is None else tuple(self.names[i] for i in rows),
            class_names=self.class_names,
            source=self.source,
        )


def load(
    source: str,
    *,
    image_shape: Sequence[int] | None = None,
    data_dir: str | None = None,
    fit: str = "stretch",
) -> Dataset:
    """Loads the data set named by `source` (see the module docstring for the forms).

    Args:
        source: e.g. "fashion_mnist", "tfds:mnist:train", "idx:/data/mnist", "folder:/photos".
        image_shape: (H, W, C). Required for ``folder:`` (the size images are resized to, C=1 for
            grayscale or 3 for RGB); for every other image source the loaded shape must equal it
            (feature vectors from ``npz:`` are not checked).
        data_dir: TFDS data directory (``tfds:`` and the TFDS fallback of ``fashion_mnist``).
        fit: how ``folder:`` images are resized to image_shape: ``"stretch"`` (the whole image,
            its aspect ratio ignored) or ``"crop"`` (ImageNet's evaluation view, the central
            224/256 of the shorter side); see :func:`jclust.data.images.decode`.

    Returns:
        A Dataset with uint8 images [N, H, W, C] (or float32 features [N, D] from ``npz:``).

    Raises:
        DataError: unknown source form, missing or corrupt data, or an image_shape mismatch.
    """
    shape = _check_image_shape(image_shape)
    kind, sep, arg = source.partition(":")
    if not sep and kind == "fashion_mnist":
        dataset = _load_fashion_mnist(data_dir)
    elif not sep and kind == "digits":
        dataset = _load_digits()
    elif sep and kind == "tfds":
        dataset = _load_tfds_source(arg, data_dir)
    elif sep and kind == "idx":
        dataset = _load_idx_dir(_path_arg(arg, source))
    elif sep and kind == "npz":
        dataset = _load_npz(_path_arg(arg, source))
    elif sep and kind == "folder":
        if shape is None:
            raise DataError(f"{source}: folder sources need image_shape=(H, W, C) to resize images to")
        dataset = _load_folder(_path_arg(arg, source), shape, fit)
    else:
        raise DataError(f"unknown data source {source!r}; valid forms: {', '.join(SOURCE_FORMS)}")
    if dataset.num_examples == 0:
        raise DataError(f"{source}: holds no examples")
    # Pre-computed feature vectors have no image shape to check.
    if shape is not None and dataset.is_image and dataset.input_shape != shape:
        raise DataError(
            f"{source}: images of shape {dataset.input_shape} do not match the expected shape {shape}")
    return dataclasses.replace(dataset, source=source)


def describe(dataset: Dataset) -> str:
    """One line: source, N, input shape and dtype, labelled or not, number of classes."""
    if dataset.is_image:
        what = "images " + "x".join(str(d) for d in dataset.input_shape)
    else:
        what = f"features of dim {dataset.input_shape[0]}"
    if dataset.labels is None:
        labels = "unlabelled"
    else:
        n_classes = (len(dataset.class_names) if dataset.class_names is not None
                     else len(np.unique(dataset.labels)))
        labels = f"labelled, {n_classes} classes"
    return f"{dataset.source}: {dataset.num_examples} examples, {what} {dataset.inputs.dtype}, {labels}"


# ---------------------------------------------------------------------------------------------
# Shared helpers


def _check_image_shape(image_shape: Sequence[int] | None) -> tuple[int, int, int] | None:
    """Validates image_shape → (H, W, C) with C in {1, 3}, or None."""
    if image_shape is None:
        return None
    shape = tuple(int(d) for d in image_shape)
    if len(shape) != 3 or min(shape) < 1 or shape[2] not in (1, 3):
        raise DataError(f"image_shape must be (H, W, C) with C = 1 or 3, got {tuple(image_shape)}")
    return shape


def _path_arg(arg: str, source: str) -> pathlib.Path:
    """The path after "idx:", "npz:" or "folder:", with ~ expanded."""
    if not arg:
        raise DataError(f"{source!r} names no path")
    return pathlib.Path(arg).expanduser()


def _split_rank(name: str) -> tuple[int, str]:
    """Sort key for merging splits: train, then others alphabetically, then test (or t10k)."""
    if name == "train":
        return (0, name)
    if name in ("test", "t10k"):
        return (2, name)
    return (1, name)


def _as_images(images: np.ndarray, what: str) -> np.ndarray:
    """uint8 [N, H, W] or [N, H, W, C] → uint8 [N, H, W, C]."""
    if images.dtype != np.uint8:
        raise DataError(f"{what}: images must be uint8, got {images.dtype}")
    if images.ndim == 3:
        return images[..., None]
    if images.ndim != 4:
        raise DataError(f"{what}: images must be [N, H, W] or [N, H, W, C], got shape {images.shape}")
    return images


def _as_labels(labels: np.ndarray, n: int, what: str) -> np.ndarray:
    """Non-negative integer labels [N] → int32 [N]."""
    if labels.dtype.kind not in "iu":
        raise DataError(f"{what}: labels must be integers, got {labels.dtype}")
    if labels.shape != (n,):
        raise DataError(f"{what}: labels of shape {labels.shape} do not match {n} examples")
    if n and (labels.min() < 0 or labels.max() > np.iinfo(np.int32).max):
        raise DataError(f"{what}: labels must lie in [0, 2**31), got [{labels.min()}, {labels.max()}]")
    return labels.astype(np.int32)


# ---------------------------------------------------------------------------------------------
# IDX files


def _read_bytes(path: pathlib.Path) -> bytes:
    """The (gunzipped, for *.gz) contents of a file."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise DataError(f"cannot read {path}: {e}") from e


def _parse_idx(data: bytes, path: pathlib.Path) -> np.ndarray:
    """Parses an uint8 IDX file: magic 00 00 08 ND, ND big-endian uint32 dims, then the bytes."""
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or not 1 <= data[3] <= 4:
        raise DataError(f"{path}: not an uint8 IDX file (bad magic {data[:4].hex()!r})")
    ndim = data[3]
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise DataError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = offset + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise DataError(
            f"{path}: truncated or corrupt IDX file: header {dims} needs {expected} bytes, got {len(data)}")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(dims)


def _read_idx(path: pathlib.Path, ndim: int) -> np.ndarray:
    """The uint8 array of an IDX file that must have `ndim` dimensions."""
    array = _parse_idx(_read_bytes(path), path)
    if array.ndim != ndim:
        raise DataError(f"{path}: expected a {ndim}-D IDX array, got shape {array.shape}")
    return array


def _find_idx_files(folder: pathlib.Path, pattern: re.Pattern) -> dict[str, pathlib.Path]:
    """prefix → file for the names matching `pattern`; an uncompressed copy wins over its .gz."""
    found: dict[str, pathlib.Path] = {}
    try:
        paths = sorted(folder.iterdir())
    except OSError as e:  # e.g. no read permission
        raise DataError(f"cannot list IDX folder {folder}: {e}") from e
    for path in paths:
        match = pattern.match(path.name)
        if match and path.is_file() and (match["prefix"] not in found or not match["gz"]):
            found[match["prefix"]] = path
    return found


def _find_idx_pairs(folder: pathlib.Path) -> list[tuple[str, pathlib.Path, pathlib.Path | None]]:
    """(prefix, images file, labels file or None) in merge order (train, others, t10k/test)."""
    images = _find_idx_files(folder, _IDX_IMAGES)
    labels = _find_idx_files(folder, _IDX_LABELS)
    return [(p, images[p], labels.get(p)) for p in sorted(images, key=_split_rank)]


def _load_idx_pairs(pairs: list[tuple[str, pathlib.Path, pathlib.Path | None]], what: str) -> Dataset:
    """Reads and concatenates IDX image (and label) files in the given order."""
    labelled = [label_path is not None for _, _, label_path in pairs]
    if any(labelled) and not all(labelled):
        missing = [str(images) for (_, images, label_path) in pairs if label_path is None]
        raise DataError(f"{what}: some IDX image files have no labels file: {', '.join(missing)}")
    all_images, all_labels = [], []
    for _, images_path, labels_path in pairs:
        images = _read_idx(images_path, 3)
        all_images.append(images)
        if labels_path is not None:
            labels = _read_idx(labels_path, 1)
            if len(labels) != len(images):
                raise DataError(
                    f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}")
            all_labels.append(labels)
    shapes = {images.shape[1:] for images in all_images}
    if len(shapes) > 1:
        raise DataError(f"{what}: IDX image files have different image shapes {sorted(shapes)}")
    inputs = _as_images(np.concatenate(all_images), what)
    labels = np.concatenate(all_labels).astype(np.int32) if all_labels else None
    return Dataset(inputs, labels, None, None, what)


def _load_idx_dir(folder: pathlib.Path) -> Dataset:
    """All IDX image/label pairs of a folder, merged train, others (alphabetical), t10k/test."""
    if not folder.is_dir():
        raise DataError(f"IDX folder {folder} does not exist or is not a directory")
    pairs = _find_idx_pairs(folder)
    if not pairs:
        raise DataError(f"no *-images-idx3-ubyte[.gz] files in {folder}")
    return _load_idx_pairs(pairs, f"idx:{folder}")


# ---------------------------------------------------------------------------------------------
# fashion_mnist and digits


def _fashion_mnist_pairs(folder: pathlib.Path) -> list | None:
    """The labelled train and t10k IDX pairs in `folder`, or None when any file is missing."""
    if not folder.is_dir():
        return None
    pairs = [pair for pair in _find_idx_pairs(folder) if pair[0] in ("train", "t10k")]
    if len(pairs) != 2 or any(labels is None for _, _, labels in pairs):
        return None
    return pairs


def _load_fashion_mnist(data_dir: str | None) -> Dataset:
    """Fashion-MNIST train + test (70,000 examples, train first), from IDX files or TFDS."""
    folder = pathlib.Path(os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR)
    pairs = _fashion_mnist_pairs(folder)
    if pairs is not None:
        dataset = _load_idx_pairs(pairs, "fashion_mnist")
        return dataclasses.replace(dataset, class_names=FASHION_MNIST_CLASS_NAMES)
    try:
        return _load_tfds("fashion_mnist", "train+test", data_dir)
    except DataError as e:
        raise DataError(
            f"fashion_mnist: no Fashion-MNIST IDX files in {folder} and TFDS failed ({e}). Either "
            f"`apt-get install dataset-fashion-mnist` (or set ${FASHION_MNIST_ENV} to a folder holding "
            f"train-/t10k-images-idx3-ubyte[.gz] and train-/t10k-labels-idx1-ubyte[.gz]), or download "
            f"TFDS fashion_mnist once online (`tfds build fashion_mnist --file_format=array_record`) "
            f"and pass its data_dir.") from e


def _load_digits() -> Dataset:
    """scikit-learn's 1,797 8x8 digits as uint8 [1797, 8, 8, 1].

    Pixel values 0..16 are scaled to 0..255 by round(v * 255 / 16) (round half to even; v = 8
    is the only tie and becomes 128).
    """
    pixels, target = _digits_table()
    images = np.rint(pixels.reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return Dataset(images, target.astype(np.int32), None, tuple(str(d) for d in range(10)),
                   "digits")


def _digits_table() -> tuple[np.ndarray, np.ndarray]:
    """The digits' pixels [1797, 64] (0..16) and labels, read from the CSV that scikit-learn
    ships without importing scikit-learn: ``sklearn.datasets`` takes ~2 s to import, which every
    digits run (and the test suite's ~60 subprocesses) would pay for a 1,797-row table. Where that
    file is not at its place (another scikit-learn layout), ``load_digits`` reads it."""
    spec = importlib.util.find_spec("sklearn")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(location, "datasets", "data", "digits.csv.gz")
        if os.path.exists(path):
            table = np.loadtxt(path, delimiter=",")
            return table[:, :-1], table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits  # scikit-learn missing: its ImportError says so
    digits = load_digits()
    return digits.data, digits.target


# ---------------------------------------------------------------------------------------------
# TFDS (through tfds.data_source, which needs no TensorFlow)


def _parse_tfds_arg(arg: str) -> tuple[str, str | None]:
    """"NAME[/CONFIG][:VERSION][:SPLIT]" → (TFDS name, split or None)."""
    name, _, rest = arg.partition(":")
    version, sep, split = rest.partition(":")
    if _TFDS_VERSION.match(version):
        name, rest = f"{name}:{version}", split if sep else ""
    if not name:
        raise DataError(f"'tfds:{arg}' names no dataset; use tfds:NAME[:SPLIT]")
    return name, rest or None


def _load_tfds_source(arg: str, data_dir: str | None) -> Dataset:
    """The Dataset for "tfds:NAME[:SPLIT]"."""
    name, split = _parse_tfds_arg(arg)
    return _load_tfds(name, split, data_dir)


def _tfds_error(name: str, split: str | None, error: Exception) -> DataError:
    """A DataError explaining what to do about a failed tfds.data_source call."""
    first_line = (str(error).strip().splitlines() or [""])[0][:300]
    where = f"TFDS dataset {name!r}" + (f" (split {split!r})" if split else "")
    if type(error).__name__ == "DatasetNotFoundError":
        return DataError(f"unknown {where}: {first_line}")
    if isinstance(error, NotImplementedError):
        return DataError(
            f"{where} is prepared as TFRecord, which needs TensorFlow; re-prepare it with "
            f"`tfds build {name} --file_format=array_record` ({first_line})")
    return DataError(
        f"cannot load {where}: {type(error).__name__}: {first_line}. jclust reads TFDS without "
        f"TensorFlow through tfds.data_source, which needs the data prepared in ArrayRecord format: "
        f"download it once online (`tfds build {name} --file_format=array_record`, which may need "
        f"TensorFlow to encode images) and pass its data_dir")


def _tfds_data_sources(name: str, split: str | None, data_dir: str | None) -> list[Any]:
    """Random-access TFDS sources: [the split], or every split in merge order when split is None."""
    import tensorflow_datasets as tfds

    try:
        result = tfds.data_source(name, split=split, data_dir=data_dir, download=True)
    except Exception as e:  # noqa: BLE001 - TFDS raises many types; all mean "not available"
        raise _tfds_error(name, split, e) from e
    if split is not None:
        return [result]
    if not result:  # e.g. tfds.testing.mock_data, whose metadata lists no splits
        raise DataError(f"TFDS reports no splits for {name!r}; name one, e.g. tfds:{name}:train")
    return [result[s] for s in sorted(result, key=_split_rank)]


def _read_records(source: Any) -> list[dict[str, Any]]:
    """Every record of a TFDS data source, in order, as dicts of numpy values."""
    n = len(source)
    try:
        return [record for start in range(0, n, _TFDS_BATCH)
                for record in source.__getitems__(list(range(start, min(n, start + _TFDS_BATCH))))]
    except TypeError:  # the data sources of tfds.testing.mock_data only support source[i]
        return [source[i] for i in range(n)]


def _load_tfds(name: str, split: str | None, data_dir: str | None) -> Dataset:
    """A TFDS dataset's images [N, H, W, C] (first of "image"/"img"/"x") and "label" if present."""
    sources = _tfds_data_sources(name, split, data_dir)
    features = sources[0].dataset_info.features
    what = f"tfds:{name}" + (f":{split}" if split else "")
    image_key = next((k for k in _IMAGE_KEYS if k in features), None)
    if image_key is None:
        raise DataError(f"{what}: no image feature (looked for {_IMAGE_KEYS}); it has {sorted(features)}")
    records = [record for source in sources for record in _read_records(source)]
    shapes = {np.shape(r[image_key]) for r in records}
    if len(shapes) > 1:
        raise DataError(f"{what}: images have different shapes {sorted(shapes)[:5]}; use a fixed-size "
                        f"dataset or export the images to a folder: source")
    images = _as_images(np.stack([np.asarray(r[image_key]) for r in records]), what)
    labels, class_names = None, None
    if "label" in features:
        labels = _as_labels(np.asarray([r["label"] for r in records]), len(records), what)
        names = getattr(features["label"], "names", None)  # only ClassLabel features have names
        class_names = tuple(names) if names else None
    return Dataset(images, labels, None, class_names, what)


# ---------------------------------------------------------------------------------------------
# npz archives


def _read_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
    """All arrays of an .npz archive (object arrays are refused: no pickle)."""
    if path.is_dir():
        raise DataError(f"npz:{path} is a folder; name an .npz file (or use folder:{path})")
    if not path.is_file():
        raise DataError(f"npz file {path} does not exist")
    # A half-written archive fails as BadZipFile (its central directory is at the end), a damaged
    # member as BadZipFile (CRC) or zlib.error, pickled object arrays as ValueError.
    unreadable = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
    try:
        archive = np.load(path, allow_pickle=False)
    except unreadable as e:
        raise DataError(f"cannot read npz file {path} ({type(e).__name__}: {e}); is it complete? "
                        "Write it again with numpy.savez") from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path} is a single .npy array, not an .npz archive; write it with "
                        "numpy.savez(path, image=...) or numpy.savez(path, feature=...)")
    with archive:
        try:
            return {key: archive[key] for key in archive.files}
        except unreadable as e:
            raise DataError(f"cannot read npz file {path} ({type(e).__name__}: {e}); is it "
                            "complete? Write it again with numpy.savez") from e


def _npz_inputs(arrays: dict[str, np.ndarray], what: str) -> np.ndarray:
    """uint8 images [N, H, W, C] from "image", or float32 features [N, D] from "feature"."""
    if "image" in arrays and "feature" in arrays:
        raise DataError(f"{what}: holds both 'image' and 'feature'; keep only one")
    if "image" in arrays:
        return _as_images(arrays["image"], what)
    if "feature" not in arrays:
        raise DataError(f"{what}: needs an 'image' or a 'feature' array, found {sorted(arrays)}")
    features = arrays["feature"]
    if features.dtype.kind != "f" or features.ndim != 2:
        raise DataError(
            f"{what}: 'feature' must be a float [N, D] array, got {features.dtype} {features.shape}")
    if not np.all(np.isfinite(features)):
        raise DataError(f"{what}: 'feature' holds NaN or infinite values")
    return features.astype(np.float32)


def _npz_names(names: np.ndarray, n: int, what: str) -> tuple[str, ...]:
    """A string array [N] → a tuple of N str."""
    if names.dtype.kind not in "US" or names.shape != (n,):
        raise DataError(
            f"{what}: 'name' must be a string array of shape ({n},), got {names.dtype} {names.shape}")
    if names.dtype.kind == "S":
        return tuple(b.decode("utf-8", errors="replace") for b in names)
    return tuple(str(s) for s in names)


def _load_npz(path: pathlib.Path) -> Dataset:
    """An .npz with "image" uint8 [N, H, W(, C)] or "feature" float [N, D], optional "label" [N]
    (non-negative integers) and "name" [N] (strings). Other arrays are ignored."""
    what = f"npz:{path}"
    arrays = _read_npz(path)
    inputs = _npz_inputs(arrays, what)
    n = inputs.shape[0]
    labels = _as_labels(arrays["label"], n, what) if "label" in arrays else None
    names = _npz_names(arrays["name"], n, what) if "name" in arrays else None
    return Dataset(inputs, labels, names, None, what)


# ---------------------------------------------------------------------------------------------
# Image folders


def _visible_files(folder: pathlib.Path) -> list[pathlib.Path]:
    """Every non-hidden file under `folder` (hidden folders pruned), sorted by path components."""
    files = []

    def fail(error: OSError):
        raise error  # os.walk would skip an unreadable folder without a word

    for root, dirs, names in os.walk(folder, onerror=fail):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        files.extend(pathlib.Path(root, n) for n in names if not n.startswith("."))
    return sorted(files, key=lambda p: p.relative_to(folder).parts)


def _folder_files(folder: pathlib.Path) -> tuple[list[tuple[pathlib.Path, int]], tuple[str, ...] | None]:
    """(file, label) pairs and class names (None for a flat folder: label -1)."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    class_names = tuple(sorted(p.name for p in entries if p.is_dir()))
    if not class_names:
        return [(p, -1) for p in _visible_files(folder)], None
    top_files = sorted(p.name for p in entries if not p.is_dir())
    if top_files:
        warnings.warn(f"folder {folder} has class sub-folders, so its {len(top_files)} top-level "
                      f"files are ignored: {', '.join(top_files)}", DataWarning, stacklevel=5)
    files = [(p, label) for label, c in enumerate(class_names) for p in _visible_files(folder / c)]
    return files, class_names


@dataclasses.dataclass(frozen=True, eq=False)
class FolderListing:
    """The files of an image folder, listed but not decoded.

    Attributes:
        folder: the folder.
        paths: its files in example order (relative path components).
        labels: int32 [M] class of each file (its first-level sub-folder), or None (flat folder).
        class_names: the sub-folders, sorted, or None.
    """

    folder: pathlib.Path
    paths: tuple[pathlib.Path, ...]
    labels: np.ndarray | None
    class_names: tuple[str, ...] | None

    @property
    def names(self) -> tuple[str, ...]:
        """Each file's path relative to the folder, with "/"."""
        return tuple(p.relative_to(self.folder).as_posix() for p in self.paths)

    def fingerprint(self) -> str:
        """sha256 of every file's relative path, size and modification time: changes when a file
        is added, removed, renamed, rewritten or touched (cheap: no file is read)."""
        digest = hashlib.sha256()
        for name, path in zip(self.names, self.paths):
            stat = path.stat()
            digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()


def list_folder(folder: str | os.PathLike) -> FolderListing:
    """Lists an image folder as ``folder:`` reads it (see :func:`_load_folder`), decoding nothing.

    Raises:
        DataError: the folder is missing, unreadable or holds no files.
    """
    folder = pathlib.Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist or is not a directory")
    try:
        files, class_names = _folder_files(folder)
    except OSError as e:  # e.g. a folder without read permission
        raise DataError(f"cannot list image folder {folder}: {e}") from e
    if not files:
        raise DataError(f"image folder {folder} holds no files")
    labels = None if class_names is None else np.array([lab for _, lab in files], np.int32)
    return FolderListing(folder, tuple(p for p, _ in files), labels, class_names)


def warn_skipped(folder: pathlib.Path, skipped: Sequence[str]) -> None:
    """One warning naming every skipped file of ``folder`` with its reason."""
    if skipped:
        warnings.warn(f"skipped {len(skipped)} files in {folder} that are not usable images: "
                      + "; ".join(skipped), DataWarning, stacklevel=3)


def folder_dataset(listing: FolderListing, kept: np.ndarray, inputs: np.ndarray) -> Dataset:
    """The Dataset of the files ``kept`` (rows of the listing, increasing) with their ``inputs``
    [len(kept), ...] (decoded images, or their features).

    Raises:
        DataError: no file kept, or a class folder without any kept file.
    """
    folder = listing.folder
    if len(kept) == 0:
        raise DataError(f"image folder {folder} holds no decodable image")
    labels = None
    if listing.labels is not None:
        labels = listing.labels[kept]
        empty = [c for i, c in enumerate(listing.class_names) if not np.any(labels == i)]
        if empty:
            raise DataError(f"folder:{folder}: class folders without any decodable image: "
                            f"{', '.join(empty)}")
    names = listing.names
    return Dataset(inputs, labels, tuple(names[i] for i in kept), listing.class_names,
                   f"folder:{folder}")


def _load_folder(folder: pathlib.Path, shape: tuple[int, int, int], fit: str) -> Dataset:
    """Images of any size under `folder`, resized to `shape` (H, W, C) as ``fit`` says
    (:func:`jclust.data.images.decode`).

    Sub-folders of `folder` are classes (class_names sorted; files nested deeper belong to their
    first-level folder), and then top-level files are ignored with a warning; without sub-folders
    the images are unlabelled. Examples are ordered by relative path components; files that are
    not usable images (not images, damaged, decompression bombs) are skipped with one warning.
    """
    listing = list_folder(folder)
    images = np.empty((len(listing.paths), *shape), np.uint8)
    kept, skipped = [], []
    with jimages.bomb_warnings_as_errors():
        for row, (path, name) in enumerate(zip(listing.paths, listing.names)):
            try:
                images[len(kept)] = jimages.decode(path, shape, fit)
            except Exception as e:  # noqa: BLE001 - PIL raises many types for undecodable files
                skipped.append(f"{name} ({type(e).__name__}: {e})")
                continue
            kept.append(row)
    warn_skipped(folder, skipped)
    return folder_dataset(listing, np.array(kept, np.int64), images[:len(kept)])
