"""``folder:DIR`` sources: image files of any size, decoded and resized with PIL, labelled by
sub-folder; and the listing a feature pass reads a folder's files by."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import warnings
from typing import Sequence

import numpy as np

from jclust.data import images as jimages
from jclust.data.dataset import DataError, DataWarning, Dataset


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
