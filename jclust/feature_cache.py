"""A data source's pretrained features, cached: :func:`load` (any image source -> the features of
:mod:`jclust.features`), one ``.npz`` per key, so that a rerun, a resumed run or a second method
on the same data does not extract the same features again.

  loaded = feature_cache.load("folder:/photos", features.Spec("efficientnet_lite0"),
                              read_dirs=["cache"], write_dir="cache")
  loaded.dataset.inputs                                              # [N, 1280] float32

The key is the sha256 of what determines the features (:func:`cache_key`); the file name is the
key. A file is written whole or not at all (a temporary file in the same folder, flushed to disk,
then ``os.replace``), so a run killed while writing leaves no half file; a file that cannot be
read, or holds something else than its key says, is an error naming it and the fix, never used.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import zipfile
import zlib
from typing import Any, Callable, Iterable, NamedTuple

import numpy as np

from jclust import data as jdata
from jclust import distributed
from jclust import features

# Bump when a change in jclust changes the features of the same inputs (decoding, resizing,
# pooling): the cached files of older versions are then not used.
FEATURE_VERSION = 1
FOLDER = "features"  # a run's own cache: WORKDIR/features


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    del size, mtime_ns  # part of the memo's key only: a rewritten file is hashed again
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes, once per (path, size, modification time) in a process: 0.09 s
    for Lite0's 19 MB of weights, so the weights are identified by what they hold, not where."""
    stat = os.stat(path)
    return _file_sha256(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


def array_sha256(array: np.ndarray) -> str:
    """sha256 of an array's shape, dtype and bytes (0.1 s for Fashion-MNIST's 55 MB)."""
    digest = hashlib.sha256(f"{array.shape} {array.dtype}\n".encode())
    digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def cache_key(*, source: str, limit: int, content: str, backbone: str, weights_sha256: str,
              layers: tuple[str, ...], image_size: int) -> tuple[str, dict]:
    """(sha256 hex, the dict it hashes): the source string and the data limit, the digest of the
    source's content, the backbone's name and its weights' sha256, the layers, the image size
    and :data:`FEATURE_VERSION`."""
    what = {"version": FEATURE_VERSION, "source": source, "limit": int(limit), "content": content,
            "backbone": backbone, "weights_sha256": weights_sha256, "layers": list(layers),
            "image_size": int(image_size)}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest(), what


Entry = features.Extracted  # what a cache file holds


def _damaged(path: str, why: str) -> jdata.DataError:
    return jdata.DataError(f"feature cache file {path} is damaged ({why}); move it away (or delete "
                           "it) to extract the features again")


def _check_kept(path: str, kept, rows: int) -> None:
    if (kept is None or kept.dtype != np.int64 or kept.ndim != 1
            or np.any(np.diff(kept) <= 0) or (kept.size and (kept[0] < 0 or kept[-1] >= rows))):
        raise _damaged(path, "no valid 'kept' rows")


def read(path: str, what: dict, widths: dict[str, int], rows: int) -> Entry:
    """The entry saved at ``path`` for ``what`` (:func:`cache_key`'s dict), with the features of
    each layer of ``widths`` ({layer: channels}) for a source of ``rows`` rows.

    Raises:
      DataError: the file is unreadable, is for another key, or holds arrays of the wrong kind.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise _damaged(path, f"{type(err).__name__}: {err}") from None
    if str(arrays.get("what", "")) != json.dumps(what, sort_keys=True):
        raise _damaged(path, "it was written for another key")
    kept = arrays.get("kept")
    if arrays.get("rows") != rows:
        raise _damaged(path, f"it was written for {arrays.get('rows')} source rows, not {rows}")
    _check_kept(path, kept, rows)
    features = {}
    for layer, width in widths.items():
        f = arrays.get(f"layer/{layer}")
        if f is None or f.dtype != np.float32 or f.shape != (kept.size, width):
            raise _damaged(path, f"no float32 [{kept.size}, {width}] features of layer {layer}")
        if not np.all(np.isfinite(f)):
            raise _damaged(path, f"non-finite features of layer {layer}")
        features[layer] = f
    skipped_rows = arrays.get("skipped_rows", np.zeros(0, np.int64))
    reasons = arrays.get("skipped_reasons", np.zeros(0, str))
    if skipped_rows.shape != reasons.shape:
        raise _damaged(path, "skipped rows and reasons do not match")
    return Entry(features, kept, dict(zip(skipped_rows.tolist(), reasons.tolist())), rows)


def write(path: str, what: dict, entry: Entry) -> None:
    """Saves an entry for :func:`read`: whole or not at all."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    arrays = {f"layer/{layer}": np.asarray(f, np.float32) for layer, f in entry.features.items()}
    try:
        with open(tmp, "wb") as f:
            np.savez(f, what=np.array(json.dumps(what, sort_keys=True)), rows=np.int64(entry.rows),
                     kept=np.asarray(entry.kept, np.int64),
                     skipped_rows=np.array(list(entry.skipped), np.int64),
                     skipped_reasons=np.array(list(entry.skipped.values()), str), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def find(key: str, folders) -> str | None:
    """The first ``<folder>/<key>.npz`` that exists, or None."""
    for folder in folders:
        path = os.path.join(folder, f"{key}.npz")
        if os.path.isfile(path):
            return path
    return None


# ---------------------------------------------------------------------------------------------
# A data source's features, from the cache or extracted


class _Source(NamedTuple):
    """An image source as extraction and the cache see it."""
    images: Any  # a row reader
    content: str  # the digest of what the source holds
    build: Callable[[np.ndarray, np.ndarray], jdata.Dataset]  # (kept rows, inputs) -> Dataset
    folder: Any  # the folder of a folder: source, else None
    names: tuple[str, ...] | None  # each row's name (a folder's files), else None


def _source(source: str, spec: features.Spec, limit: int, data_dir: str | None) -> _Source:
    """A folder's files listed (decoded later, a batch at a time, in ImageNet's evaluation view at
    the spec's size) or any other source's images loaded at their own size (``limit`` applied)."""
    kind, _, arg = source.partition(":")
    if kind == "folder" and arg:
        listing = jdata.list_folder(arg)
        images = jdata.FolderImages(listing.paths, (spec.image_size, spec.image_size, 3), "crop")
        return _Source(images, listing.fingerprint(),
                       functools.partial(jdata.folder_dataset, listing), listing.folder,
                       listing.names)
    dataset = jdata.load(source, data_dir=data_dir)
    if not dataset.is_image:
        raise jdata.DataError(f"{source} holds feature vectors, not images, so no backbone can "
                              "read it: set config.data.backbone.name='' to use them as they are")
    if limit and limit < dataset.num_examples:
        dataset = dataset.subset(np.arange(limit))

    def build(kept: np.ndarray, inputs: np.ndarray) -> jdata.Dataset:
        return dataclasses.replace(dataset.subset(kept), inputs=inputs)

    return _Source(jdata.ArrayImages(dataset.inputs), array_sha256(dataset.inputs),
                   build, None, None)


class Loaded(NamedTuple):
    """What :func:`load` returns.

    Attributes:
      dataset: inputs float32 [N, sum D] (:func:`jclust.features.combine`), labels and names of
        the usable images.
      record: what the features are (JSON): cache key, backbone, weights file and its sha256,
        {layer: width}, image size, version, how layers were combined, the cache file or None.
      entry: the per-layer features and kept rows, as a cache file holds them.
      what: the dict the key hashes (:func:`cache_key`).
    """
    dataset: jdata.Dataset
    record: dict
    entry: Entry
    what: dict


def load(source: str, spec: features.Spec, *, limit: int = 0, data_dir: str | None = None,
         read_dirs: Iterable[str] = (), write_dir: str | None = None,
         say: Callable[[str], None] | None = None, expect_key: str | None = None) -> Loaded:
    """A data source's features (:func:`jclust.features.combine`) as a Dataset of feature
    vectors, from the cache or extracted (and then cached).

    Args:
      source: any image source (see :func:`jclust.data.load`); ``folder:`` files are decoded in
        ImageNet's evaluation view at the spec's size, a batch at a time.
      spec: the network, layers and size.
      limit: the first ``limit`` usable images only (0: all).
      data_dir: TFDS data directory.
      read_dirs: folders to look for the key's file in, in order.
      write_dir: where newly extracted features are saved (None: not saved).
      say: where progress lines go.
      expect_key: the cache key the features must have (a resumed run's), checked before any
        extraction.

    Returns:
      A :class:`Loaded`.

    Raises:
      ConfigError: a bad spec (:func:`jclust.features.resolve`). DataError: the source cannot
        be read, has no usable image, a cache file is damaged, or the key is not expect_key.
    """
    resolved = features.resolve(spec)
    src = _source(source, spec, limit, data_dir)
    key, what = cache_key(
        source=source, limit=limit, content=src.content, backbone=spec.name,
        weights_sha256=file_sha256(resolved.weights), layers=spec.layers,
        image_size=spec.image_size)
    if expect_key is not None and key != expect_key:
        raise jdata.DataError(
            f"the features of {source} (cache key {key}) are not those this run was trained on "
            f"({expect_key}): the weights file or the images changed; use a new workdir, or the "
            "old weights and images")
    path = find(key, read_dirs)
    if path is not None:
        extracted = read(path, what, resolved.widths, len(src.images))
        (say or features.say_default)(f"features: read from the cache, {path}")
    else:
        extracted = features.extract(src.images, spec, limit=limit, say=say)
        if write_dir is not None and distributed.is_primary():
            path = os.path.join(write_dir, f"{key}.npz")
            write(path, what, extracted)
    if extracted.skipped:
        jdata.warn_skipped(src.folder, [f"{src.names[row]} ({why})"
                                        for row, why in extracted.skipped.items()])
    dataset = src.build(extracted.kept, features.combine(extracted.features, spec.layers,
                                                          spec.normalize_layers))
    record = {"key": key, "backbone": spec.name, "weights": resolved.weights,
              "weights_sha256": what["weights_sha256"], "layers": resolved.widths,
              "image_size": spec.image_size, "version": what["version"], "file": path,
              "combined": ("each layer L2-normalised" if len(spec.layers) > 1
                           and spec.normalize_layers else "as is")}
    described = f"{source} as {spec.name} {'+'.join(spec.layers)} features at {spec.image_size}px"
    return Loaded(dataclasses.replace(dataset, source=described), record, extracted, what)
