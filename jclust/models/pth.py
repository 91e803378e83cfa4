"""PyTorch state-dict files (``.pth`` / ``.pt``) read with NumPy alone: no torch, no code run.

Both of ``torch.save``'s formats are read:
  * legacy (``_use_new_zipfile_serialization=False``, torch < 1.6): five pickles in a row (magic
    number, protocol version, sys_info, the state dict, the list of storage keys), then for each
    key in that list an int64 element count and the storage's raw little-endian bytes;
  * zip (torch >= 1.6): ``<archive>/data.pkl`` (the state dict) and ``<archive>/data/<key>`` (each
    storage's raw bytes).

Pickles are unpickled by :class:`_Unpickler`, which resolves only the few globals a tensor state
dict needs (:data:`ALLOWED_GLOBALS`) and refuses every other one, so that a file never runs code.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np
from flax import traverse_util

AGAIN = "download or save it again"
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch's typed-storage classes, as pickled, and the NumPy dtype of their elements.
STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class WeightsError(ValueError):
    """A weights file that cannot be read, or does not fit the network it is loaded into."""


class _StorageType(NamedTuple):
    """What the unpickler returns for ``torch.<Name>Storage``: only its element dtype."""
    dtype: np.dtype


class _Storage(NamedTuple):
    """A storage named by a persistent id: its (root) key, dtype, element count, and for a view
    of it (torch < 0.4 legacy files) ``(view key, offset, size)`` in elements, else None."""
    key: str
    dtype: np.dtype
    numel: int
    view: tuple | None


class _Tensor(NamedTuple):
    """``torch._utils._rebuild_tensor_v2``'s arguments, resolved once the bytes are read."""
    storage: _Storage
    offset: int
    size: tuple
    stride: tuple


def _rebuild_tensor(storage, offset, size, stride, *unused) -> _Tensor:
    del unused  # requires_grad, backward hooks, metadata
    return _Tensor(storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, *unused):
    del unused  # requires_grad, backward hooks
    return data


ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(np.dtype(dtype)) for name, dtype in STORAGE_DTYPES.items()},
}


class _Unpickler(pickle.Unpickler):
    """An unpickler whose globals are :data:`ALLOWED_GLOBALS` only (every other one is refused
    by name, before anything is called) and whose persistent ids are torch's storages."""

    def __init__(self, file, path: str):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise WeightsError(
                f"{self.path}: refused to load the global {module}.{name} (a state dict of "
                f"tensors needs only OrderedDict, torch storages and torch._utils rebuilds); save "
                f"model.state_dict() alone, and load files only from sources you trust") from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and str(pid[0]).lower() == "storage"
                and isinstance(pid[1], _StorageType)):
            raise WeightsError(f"{self.path}: a persistent id that is not a torch storage: "
                               f"{pid!r:.80}")
        view = pid[5] if len(pid) == 6 else None
        return _Storage(str(pid[2]), pid[1].dtype, int(pid[4]), view)


def _unpickle(file: io.BytesIO, path: str) -> Any:
    try:
        return _Unpickler(file, path).load()
    except WeightsError:
        raise
    except Exception as e:  # EOFError, UnpicklingError, a bad argument to an allowed global
        raise WeightsError(f"{path}: truncated or corrupt pickle ({type(e).__name__}: "
                           f"{e}); {AGAIN}") from None


def _read_legacy(data: bytes, path: str) -> tuple[Any, dict[str, np.ndarray]]:
    """The legacy format -> (the unpickled object, {storage key: 1-D array of its elements})."""
    f = io.BytesIO(data)
    if _unpickle(f, path) != LEGACY_MAGIC:
        raise WeightsError(f"{path}: not a PyTorch file (no torch.save magic number)")
    if _unpickle(f, path) != LEGACY_PROTOCOL:
        raise WeightsError(f"{path}: an unknown legacy torch.save protocol version")
    sys_info = _unpickle(f, path)
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise WeightsError(f"{path}: saved on a big-endian machine; save it again on a "
                           f"little-endian one")
    obj = _unpickle(f, path)
    keys = _unpickle(f, path)
    if not isinstance(keys, list):
        raise WeightsError(f"{path}: corrupt legacy file (no list of storage keys)")
    dtypes = {s.key: s.dtype for s in _storages(obj)}
    storages, pos = {}, f.tell()
    for key in keys:
        if key not in dtypes:
            raise WeightsError(f"{path}: corrupt legacy file (storage {key!r} is not used)")
        if pos + 8 > len(data):
            raise WeightsError(f"{path}: truncated (ends before storage {key!r}); {AGAIN}")
        numel = int(np.frombuffer(data, "<i8", 1, pos)[0])
        dtype = np.dtype(dtypes[key]).newbyteorder("<")
        end = pos + 8 + numel * dtype.itemsize
        if numel < 0 or end > len(data):
            raise WeightsError(f"{path}: truncated (storage {key!r} needs bytes {pos + 8}-{end}, "
                               f"the file has {len(data)}); {AGAIN}")
        storages[key] = np.frombuffer(data, dtype, numel, pos + 8)
        pos = end
    return obj, storages


def _read_zip(path: str) -> tuple[Any, dict[str, np.ndarray]]:
    """The zip format -> (the unpickled object, {storage key: 1-D array of its elements})."""
    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(names) != 1:
            raise WeightsError(f"{path}: a zip file but not a torch.save archive (no single "
                               f"data.pkl); a TorchScript or other archive is not a state dict")
        prefix = names[0][:-len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in z.namelist() and z.read(byteorder).strip() == b"big":
            raise WeightsError(f"{path}: saved in big-endian byte order; re-save it on a "
                               f"little-endian machine")
        obj = _unpickle(io.BytesIO(z.read(names[0])), path)
        storages = {}
        for s in {s.key: s for s in _storages(obj)}.values():
            member = f"{prefix}data/{s.key}"
            if member not in z.namelist():
                raise WeightsError(f"{path}: the archive has no {member} (storage {s.key!r})")
            raw = z.read(member)
            dtype = np.dtype(s.dtype).newbyteorder("<")
            if len(raw) < s.numel * dtype.itemsize:
                raise WeightsError(f"{path}: truncated ({member} has {len(raw)} bytes, "
                                   f"{s.numel * dtype.itemsize} needed); {AGAIN}")
            storages[s.key] = np.frombuffer(raw, dtype, s.numel)
    return obj, storages


def _storages(obj: Any) -> list[_Storage]:
    """The storages the tensors of a state dict (a mapping of tensors) refer to."""
    if not isinstance(obj, dict):
        return []
    return [t.storage for t in obj.values() if isinstance(t, _Tensor)]


def _view(storages: dict[str, np.ndarray], s: _Storage, path: str) -> np.ndarray:
    """The 1-D elements of storage ``s`` (a slice of its root for a legacy view)."""
    if s.key not in storages:
        raise WeightsError(f"{path}: truncated or corrupt (no bytes for storage {s.key!r}); "
                           f"{AGAIN}")
    if s.view is None:
        return storages[s.key]
    _, offset, size = s.view
    if not 0 <= offset <= offset + size <= storages[s.key].size:
        raise WeightsError(f"{path}: corrupt storage view of {s.key!r}")
    return storages[s.key][offset:offset + size]


def _materialise(t: _Tensor, elements: np.ndarray, name: str, path: str) -> np.ndarray:
    """A tensor's values: ``elements[offset + sum(i_d * stride_d)]`` over its index grid, copied
    into a fresh native-byte-order C-contiguous array (bounds checked first, then as_strided)."""
    size, stride = t.size, t.stride
    numbers = (t.offset, *size, *stride)
    if (len(size) != len(stride) or not all(isinstance(n, int) and n >= 0 for n in numbers)):
        raise WeightsError(f"{path}: tensor {name!r} has an invalid size/stride {size}/{stride}")
    dtype = elements.dtype.newbyteorder("=")
    if 0 in size:
        return np.zeros(size, dtype)
    last = t.offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= elements.size:
        raise WeightsError(f"{path}: tensor {name!r} reaches element {last} of a storage of "
                           f"{elements.size} (truncated or corrupt file); {AGAIN}")
    item = elements.itemsize
    view = np.lib.stride_tricks.as_strided(elements[t.offset:], size, [s * item for s in stride])
    return np.array(view, dtype=dtype, order="C")


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a PyTorch state dict (``torch.save(model.state_dict(), path)``) without torch.

    Args:
      path: a ``.pth``/``.pt`` file in torch.save's legacy or zip format.

    Returns:
      {key: array} in the file's order, each array C-contiguous with the tensor's shape and dtype
      (float32 for ``torch.float32``, int64 for ``num_batches_tracked``, ...).

    Raises:
      WeightsError: a missing, truncated or corrupt file, another kind of file, a pickled global
        other than :data:`ALLOWED_GLOBALS` (named in the message; nothing is called), or a value
        that is not a tensor.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsError(f"no such weights file: {path}")
    if zipfile.is_zipfile(path):
        try:
            obj, storages = _read_zip(path)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as e:
            raise WeightsError(f"{path}: a corrupt zip archive ({e}); {AGAIN}") from None
    else:
        with open(path, "rb") as f:
            data = f.read()
        if data.startswith(b"PK\x03\x04"):
            raise WeightsError(f"{path}: a truncated or corrupt zip archive; {AGAIN}")
        if not data.startswith(b"\x80"):
            raise WeightsError(f"{path}: not a PyTorch state-dict file (neither torch.save's "
                               f"zip format nor its legacy pickle format)")
        obj, storages = _read_legacy(data, path)
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a state dict; save "
                           f"model.state_dict() (a mapping of names to tensors)")
    out = {}
    for name, t in obj.items():
        if not isinstance(t, _Tensor):
            raise WeightsError(f"{path}: {name!r} is a {type(t).__name__}, not a tensor; save a "
                               f"flat state dict (model.state_dict())")
        out[str(name)] = _materialise(t, _view(storages, t.storage, path), str(name), path)
    return out


# Flax leaf (collection, name, ndim) -> (the torch suffix, flax value from the torch one).
TORCH_LEAVES = {
    ("params", "kernel", 4): ("weight", lambda w: w.transpose(2, 3, 1, 0)),  # OIHW -> HWIO
    ("params", "kernel", 2): ("weight", lambda w: w.T),  # (out, in) -> (in, out)
    ("params", "bias", 1): ("bias", lambda b: b),
    ("params", "scale", 1): ("weight", lambda s: s),
    ("batch_stats", "mean", 1): ("running_mean", lambda m: m),
    ("batch_stats", "var", 1): ("running_var", lambda v: v),
}


def torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The torch shape of a Flax leaf of ``shape`` (the inverse of the transposes above)."""
    if len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    return tuple(reversed(shape))


def flax_variables(state_dict: dict, abstract: dict, torch_key, *, source: str,
                   network: str) -> dict:
    """A torch state dict -> the Flax variables of ``abstract`` (shapes, e.g. from
    ``jax.eval_shape(model.init, ...)``), float32; ``num_batches_tracked`` ignored.

    Args:
      torch_key: ``(collection, path, ndim) -> the state dict's key`` of a Flax leaf.
      source, network: named in the errors ("… these weights are not for this <network>").

    Raises:
      WeightsError: a missing or mis-shaped key (with both shapes), then an unexpected one.
    """
    expected = {}
    for (collection, *path), leaf in traverse_util.flatten_dict(abstract).items():
        expected[torch_key(collection, path, len(leaf.shape))] = (
            collection, tuple(path), torch_shape(tuple(leaf.shape)))
    given = {k: v for k, v in state_dict.items() if not k.endswith(".num_batches_tracked")}
    flat = {}
    for key, (collection, path, shape) in expected.items():
        if key not in given:
            raise WeightsError(f"{source}: no {key!r} (shape {shape}); these weights are not "
                               f"for this {network}")
        value = given[key]
        if tuple(np.shape(value)) != shape:
            raise WeightsError(f"{source}: {key!r} has shape {tuple(np.shape(value))}, this "
                               f"{network} expects {shape}")
        transform = TORCH_LEAVES[(collection, path[-1], len(shape))][1]
        flat[(collection, *path)] = np.ascontiguousarray(transform(np.asarray(value, np.float32)))
    for key, value in given.items():
        if key not in expected:
            raise WeightsError(f"{source}: unexpected {key!r} (shape {tuple(np.shape(value))}); "
                               f"these weights are not for this {network}")
    return traverse_util.unflatten_dict(flat)
