"""The in-memory `Dataset` every data source loads into, its errors, and the checks every loader
applies to the arrays it read."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


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


# ---------------------------------------------------------------------------------------------
# Shared by the loaders


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
