"""Image files from strangers: decoded safely, converted to RGB (or grey) properly, and resized
either to a fixed shape or the way an ImageNet network was evaluated; and row readers that hand a
feature pass its images a batch at a time (:class:`ArrayImages`, :class:`FolderImages`).

What a folder of arbitrary files may hold, and what becomes of it:

- a decompression bomb (a small file declaring a huge image): refused before any pixel is
  decoded, from the size in its header (:data:`MAX_PIXELS`; PIL's own warning between 1x and 2x
  its limit is an error here too);
- a truncated or damaged file, a file with an image extension that is not an image: PIL's error;
- 16-bit grey ("I;16", "I"): scaled to 8 bits (65535 -> 255), not clipped as PIL's convert does
  (which turns a 16-bit photo white);
- transparency (RGBA, LA, PA, a palette's or a tRNS chunk's transparent colour): composited on
  white. Dropping alpha, as PIL's convert("RGB") does, shows whatever colour the file stores
  under transparent pixels (often black, sometimes noise); white is the page that clip art,
  icons and scanned drawings are meant to be seen on, and the background such objects have in
  ImageNet-like photos more often than black;
- a large JPEG is decoded at a reduced scale (``draft``: 1/2, 1/4 or 1/8 by the DCT) when the
  result still covers the output, which is cheap and loses nothing at the output size.

Every failure raises; :func:`jclust.data.sources` and :class:`FolderImages` skip the file and
name it with the error.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import os
import pathlib
import warnings
from typing import Sequence

import numpy as np

# PIL's default Image.MAX_IMAGE_PIXELS (~0.25 GB as RGB; a 50-megapixel photo is well below it),
# fixed here so that a program changing PIL's global does not change what jclust accepts.
MAX_PIXELS = 89_478_485
# ImageNet evaluation: the central 224/256 of the shorter side, resized to the network's size.
CROP_FRACTION = 224 / 256
FITS = ("stretch", "crop")


class ImageError(ValueError):
    """A file that is not an image jclust can use (with the reason)."""


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageError(f"declares {width}x{height} = {width * height} pixels, over the limit of "
                         f"{max_pixels} (a decompression bomb, or an image too large to decode)")


def _as_8bit(image):
    """16-bit and 32-bit integer grey images -> "L", scaled by 255 / 65535 (rounded); a float
    image ("F") is refused: its range is not defined."""
    from PIL import Image

    if image.mode == "F":
        raise ImageError("floating-point pixels (mode F) have no defined range; save the image "
                         "with 8 or 16 bits")
    if not (image.mode == "I" or image.mode.startswith("I;16")):
        return image
    pixels = np.asarray(image).astype(np.int64)
    if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
        raise ImageError(f"32-bit integer pixels in [{pixels.min()}, {pixels.max()}], beyond "
                         "16 bits; save the image with 8 or 16 bits")
    return Image.fromarray(((pixels * 255 + 32767) // 65535).astype(np.uint8), "L")


def to_mode(image, channels: int):
    """A PIL image of any mode -> "RGB" (channels 3) or "L" (channels 1): 16-bit scaled to 8 bits,
    transparency composited on white (see the module docstring)."""
    from PIL import Image

    image = _as_8bit(image)
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image.convert("L" if channels == 1 else "RGB")


def _draft_size(width: int, height: int, shape: tuple[int, int, int], fit: str) -> tuple[int, int]:
    """The smallest (width, height) a JPEG may be decoded at and still cover the output."""
    out_h, out_w = shape[:2]
    if fit == "crop":
        scale = out_h / (CROP_FRACTION * min(width, height))
    else:  # EXIF may swap the sides: cover the larger output side either way
        scale = max(out_h, out_w) / min(width, height)
    return math.ceil(width * scale), math.ceil(height * scale)


def centre_crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The ImageNet evaluation crop of a width x height image: the centred square of side
    round(CROP_FRACTION * shorter side), as (left, top, right, bottom)."""
    side = max(1, round(CROP_FRACTION * min(width, height)))
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def decode(path: str | os.PathLike, shape: Sequence[int], fit: str = "stretch",
           max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An image file -> uint8 [H, W, C], EXIF-rotated and converted by :func:`to_mode`.

    Args:
      path: the file.
      shape: (H, W, C), C 1 (grey) or 3 (RGB).
      fit: ``"stretch"``: the whole image resized to (H, W) with PIL's antialiased bilinear
        filter, ignoring its aspect ratio (jclust's ``folder:`` default). ``"crop"``: ImageNet's
        evaluation view, the central :data:`CROP_FRACTION` square of the shorter side resized
        to (H, W) with bicubic (antialiased) filtering, large JPEGs decoded at a reduced scale.
      max_pixels: images declaring more pixels are refused before decoding.

    Raises:
      ImageError: a decompression bomb, or pixels of no defined range; PIL's errors for files
        that are not images or are damaged (``OSError``, ``SyntaxError``, ``ValueError``...;
        ``DecompressionBombWarning`` too inside :func:`bomb_warnings_as_errors`).
    """
    from PIL import Image, ImageOps

    if fit not in FITS:
        raise ValueError(f"fit={fit!r}; use one of {', '.join(FITS)}")
    height, width, channels = (int(s) for s in shape)
    with Image.open(path) as image:
        _check_size(*image.size, max_pixels)
        if fit == "crop" and image.format == "JPEG":
            image.draft(None, _draft_size(*image.size, shape, fit))
        image = to_mode(ImageOps.exif_transpose(image), channels)
        if fit == "crop":
            image = image.resize((width, height), Image.Resampling.BICUBIC,
                                 box=centre_crop_box(*image.size))
        elif image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.uint8).reshape(height, width, channels)


@contextlib.contextmanager
def bomb_warnings_as_errors():
    """PIL's DecompressionBombWarning (a file between 1x and 2x PIL's limit) raised as an error
    inside the block, so that the file is skipped with PIL's words rather than warned about and
    then refused by :func:`decode`'s own check. Warning filters are process-wide and
    ``catch_warnings`` is not thread-safe: enter it once, around all decoding threads."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


class ArrayImages:
    """Row reader over images in memory, uint8 [N, H, W, C]: every row is valid."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """(images uint8 [stop - start, H, W, C], valid bool [stop - start], {} )."""
        return self.images[start:stop], np.ones(max(0, stop - start), bool), {}


class FolderImages:
    """Row reader over image files, decoded a batch at a time by :func:`decode` (threads: PIL
    releases the GIL while it decodes and resizes); a file that fails is a zero image, marked
    invalid, with its reason.

    Args:
      paths: the files, in example order.
      shape: (H, W, C) of the decoded images.
      fit: see :func:`decode`.
      threads: decoding threads (default: the CPUs, at most 16).
    """

    def __init__(self, paths: Sequence[pathlib.Path], shape: Sequence[int], fit: str = "crop",
                 threads: int | None = None):
        self.paths, self.fit = list(paths), fit
        self.shape = tuple(int(s) for s in shape)
        self.threads = threads or min(16, os.cpu_count() or 1)

    def __len__(self) -> int:
        return len(self.paths)

    def _one(self, path: pathlib.Path) -> np.ndarray | str:
        try:
            return decode(path, self.shape, self.fit)
        except Exception as e:  # noqa: BLE001 - PIL raises many types for files it cannot use
            return f"{type(e).__name__}: {e}"

    def rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """(images uint8 [stop - start, H, W, C], valid bool [stop - start], {row: reason} for
        the rows that failed, row counted from ``start``)."""
        paths = self.paths[start:stop]
        images = np.zeros((len(paths),) + self.shape, np.uint8)
        valid = np.zeros(len(paths), bool)
        reasons = {}
        with bomb_warnings_as_errors(), concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
            for i, result in enumerate(pool.map(self._one, paths)):
                if isinstance(result, str):
                    reasons[i] = result
                else:
                    images[i], valid[i] = result, True
        return images, valid, reasons
