"""Data sources: load a source string into an in-memory `Dataset` of numpy arrays; image files
decoded safely (:mod:`jclust.data.images`)."""

from jclust.data.images import ArrayImages, FolderImages, ImageError
from jclust.data.sources import (DataError, DataWarning, Dataset, FolderListing, describe,
                                 folder_dataset, list_folder, load, warn_skipped)

__all__ = ["ArrayImages", "DataError", "DataWarning", "Dataset", "FolderImages", "FolderListing",
           "ImageError", "describe", "folder_dataset", "list_folder", "load", "warn_skipped"]
