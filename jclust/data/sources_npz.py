"""``npz:PATH`` sources: a numpy archive holding ``image`` (or ``feature``) plus optional ``label``
and ``name``."""

from __future__ import annotations

import pathlib
import zipfile
import zlib

import numpy as np

from jclust.data.dataset import DataError, Dataset, _as_images, _as_labels


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
