"""``idx:DIR`` sources: the ``*-images-idx3-ubyte[.gz]`` / ``*-labels-idx1-ubyte[.gz]`` pairs in
a folder."""

from __future__ import annotations

import gzip
import pathlib
import re
import zlib

import numpy as np

from jclust.data.dataset import DataError, Dataset, _as_images, _split_rank

_IDX_IMAGES = re.compile(r"^(?P<prefix>.+?)-images[-.]idx3-ubyte(?P<gz>\.gz)?$")
_IDX_LABELS = re.compile(r"^(?P<prefix>.+?)-labels[-.]idx1-ubyte(?P<gz>\.gz)?$")


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
