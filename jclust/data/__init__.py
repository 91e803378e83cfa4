"""Data sources: load a source string into an in-memory `Dataset` of numpy arrays."""

from jclust.data.sources import DataError, DataWarning, Dataset, describe, load

__all__ = ["DataError", "DataWarning", "Dataset", "describe", "load"]
