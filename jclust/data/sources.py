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

The loaders of the forms are in ``sources_idx``, ``sources_tfds``, ``sources_npz`` and
``sources_folder``; `Dataset` and its errors in :mod:`jclust.data.dataset`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pathlib
from typing import Sequence

import numpy as np

from jclust.data.dataset import DataError, DataWarning, Dataset
from jclust.data.sources_folder import (FolderListing, _load_folder, folder_dataset, list_folder,
                                        warn_skipped)
from jclust.data.sources_idx import _find_idx_pairs, _load_idx_dir, _load_idx_pairs
from jclust.data.sources_npz import _load_npz
from jclust.data.sources_tfds import _load_tfds, _load_tfds_source

__all__ = ["FASHION_MNIST_CLASS_NAMES", "FASHION_MNIST_DIR", "FASHION_MNIST_ENV", "SOURCE_FORMS",
           "DataError", "DataWarning", "Dataset", "FolderListing", "describe", "folder_dataset",
           "list_folder", "load", "warn_skipped"]

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
