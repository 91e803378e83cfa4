"""``tfds:NAME[:SPLIT]`` sources, read through ``tfds.data_source`` (which needs no TensorFlow)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from jclust.data.dataset import DataError, Dataset, _as_images, _as_labels, _split_rank

_IMAGE_KEYS = ("image", "img", "x")
_TFDS_BATCH = 1024
# A TFDS version after the name ("mnist:3.0.1", "mnist:3.*.*"); anything else after ":" is a split.
_TFDS_VERSION = re.compile(r"^[0-9*]+(\.[0-9*]+){0,2}$")


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
