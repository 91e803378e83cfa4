"""Features of a pretrained network as a first-class step: any image source -> the features of
one or several named layers, batched and jitted over a mesh of every device, with progress lines
and a cache keyed by what determines them.

  spec = features.Spec("efficientnet_lite0", layers=("group5", "pooled"))   # 224x224, ImageNet
  out = features.extract(jclust.data.ArrayImages(images), spec)   # uint8 [N, h, w, C], any h, w
  out.features["pooled"]                                           # [N, 1280] float32

Images reach the network as it was trained: a folder's files are decoded at the network's size
with ImageNet's evaluation view (the central 224/256 of the shorter side, bicubic; any mode and
size, see :mod:`jclust.data.images`), a file at a time and a batch at a time; images already in
memory (Fashion-MNIST, an npz, TFDS) stay at their own size and are resized whole, a batch at a
time on the devices (bicubic, antialiased): 70,000 28x28 images would take 10.5 GB at 224x224x3.
Grey is repeated to RGB and every pixel normalised by the network ((x - 127) / 128 for Lite0).
Map layers are averaged over their positions.

A data source's features, cached so that a rerun or a second method does not extract them again:
:func:`jclust.feature_cache.load`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jclust import config_lib
from jclust import data as jdata
from jclust import distributed
from jclust.models import efficientnet, resnet_imagenet
from jclust.models.pth import WeightsError

PROGRESS_SECONDS = 10.0  # between progress lines
MIN_IMAGE_SIZE = 32  # the network's total stride: a smaller image leaves its head one position


class Network(NamedTuple):
    """A pretrained network as extraction needs it.

    Attributes:
      model: a Flax module, uint8 images [B, H, W, C] (C 1 or 3) -> ``{layer: [B, ...]}``.
      load: weights file -> the model's variables.
      default_weights: the weights file when none is given (raises WeightsError naming the fix).
      width: layer -> its channels (raises ValueError naming the valid layers).
      locate: the weights value -> a local file (e.g. a hub name downloaded; raises
        WeightsError); None: the value is the file.
    """
    model: Any
    load: Callable[[str], Any]
    default_weights: Callable[[], str]
    width: Callable[[str], int]
    locate: Callable[[str], str] | None = None


def _lite0() -> Network:
    model = efficientnet.EfficientNetLite()
    return Network(model, lambda path: efficientnet.load_pretrained(path, model),
                   efficientnet.default_weights_path,
                   functools.partial(efficientnet.feature_width, model))


def _resnet(name: str) -> Network:
    """A ResNet with the ImageNet stem, timm's model.safetensors weights (a path or a hub name;
    no default: docs/pretrained.md)."""
    model = resnet_imagenet.ResNetImageNet(**resnet_imagenet.RESNETS[name])
    return Network(model, lambda path: resnet_imagenet.load_pretrained(path, model),
                   functools.partial(resnet_imagenet.default_weights, name),
                   functools.partial(resnet_imagenet.feature_width, model),
                   resnet_imagenet.locate)


# config.data.backbone.name -> its Network (tests add a tiny random one here, never the configs).
# The ResNets are "_imagenet": config.model's "resnet18" is models/backbones.py's CIFAR one.
BACKBONES: dict[str, Callable[[], Network]] = {
    "efficientnet_lite0": _lite0,
    "resnet18_imagenet": functools.partial(_resnet, "resnet18"),
    "resnet50_imagenet": functools.partial(_resnet, "resnet50"),
}


@dataclasses.dataclass(frozen=True)
class Spec:
    """Which features: ``config.data.backbone``'s keys.

    Attributes:
      name: a key of :data:`BACKBONES`.
      weights: the weights file ("": the network's default, e.g. the installed package's).
      layers: the layers whose features are returned, e.g. ("pooled",) or ("group5", "pooled").
      image_size: the network's input is image_size x image_size (Lite0 was trained at 224).
      batch_size: images per batch over all devices (how, not what: not part of the key).
      normalize_layers: with several layers, each L2-normalised before they are concatenated
        (:func:`combine`; applied after the cache, not part of its key).
    """
    name: str
    weights: str = ""
    layers: tuple[str, ...] = ("pooled",)
    image_size: int = 224
    batch_size: int = 64
    normalize_layers: bool = True


def spec_from_config(section: ml_collections.ConfigDict | None) -> Spec | None:
    """``config.data.backbone`` -> a Spec, or None when its name is "" or the section is absent
    (the config of a run older than the section)."""
    if section is None or not section.name:
        return None
    return Spec(section.name, section.weights, tuple(section.layers), int(section.image_size),
                int(section.batch_size), bool(section.get("normalize_layers", True)))


class Resolved(NamedTuple):
    network: Network
    weights: str  # absolute path of the weights file
    widths: dict[str, int]  # layer -> channels, in the spec's order


def resolve(spec: Spec) -> Resolved:
    """Checks a spec against its network, before anything is computed.

    Raises:
      ConfigError: an unknown backbone or layer, a bad size, no weights file (naming the key of
        ``config.data.backbone`` and the fix).
    """
    key = "config.data.backbone"
    if spec.name not in BACKBONES:
        raise config_lib.ConfigError(f"{key}.name={spec.name!r} is not a known backbone; known: "
                                     f"{', '.join(sorted(BACKBONES))} (or '' for none)")
    if spec.image_size < MIN_IMAGE_SIZE or spec.batch_size < 1 or not spec.layers:
        raise config_lib.ConfigError(f"{key}: image_size >= {MIN_IMAGE_SIZE}, batch_size >= 1 and "
                                     f"at least one layer needed, got {spec}")
    network = BACKBONES[spec.name]()
    try:
        widths = {layer: network.width(layer) for layer in spec.layers}
    except ValueError as err:
        raise config_lib.ConfigError(f"{key}.layers={spec.layers}: {err}") from None
    try:
        weights = spec.weights or network.default_weights()
        if network.locate is not None:  # a hub name -> the downloaded file, whose bytes key
            weights = network.locate(weights)  # the feature cache
    except WeightsError as err:
        raise config_lib.ConfigError(f"{key}.weights: {err}") from None
    if not os.path.isfile(weights):
        raise config_lib.ConfigError(f"{key}.weights={weights!r}: no such file; give the "
                                     f"{spec.name} weights file, or '' for the default")
    return Resolved(network, os.path.abspath(weights), widths)


# ---------------------------------------------------------------------------------------------
# Extraction


def resize_images(images: jax.Array, size: int) -> jax.Array:
    """uint8 [B, h, w, C] -> uint8 [B, size, size, C]: bicubic, antialiased when shrinking,
    rounded back to 8 bits as a resized image file would be."""
    shape = (images.shape[0], size, size, images.shape[3])
    x = jax.image.resize(images.astype(jnp.float32), shape, "cubic", antialias=True)
    return jnp.clip(jnp.round(x), 0, 255).astype(jnp.uint8)


def _forward(model, layers: Sequence[str], size: int):
    """(variables, images uint8 [B, h, w, C], valid [B]) -> ({layer: [B, D] float32}, valid)."""
    def forward(variables, images, valid):
        if images.shape[1:3] != (size, size):
            images = resize_images(images, size)
        out = model.apply(variables, images)
        pooled = {}
        for layer in layers:
            x = out[layer]
            pooled[layer] = (jnp.mean(x, axis=(1, 2)) if x.ndim == 4 else x).astype(jnp.float32)
        return pooled, valid
    return forward


def _eta(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds + 0.5), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m{seconds:02d}s"


class _Progress:
    """A line every PROGRESS_SECONDS (rows read of all, images/s, ETA) and one at the end."""

    def __init__(self, total: int, say: Callable[[str], None]):
        self.total, self.say = total, say
        self.start = self.last = time.monotonic()

    def update(self, rows: int) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_SECONDS:
            return
        self.last = now
        rate = rows / max(now - self.start, 1e-9)
        self.say(f"features: {rows}/{self.total} images, {rate:.1f} images/s, ETA "
                 f"{_eta((self.total - rows) / max(rate, 1e-9))}")

    def finish(self, rows: int, kept: int) -> None:
        seconds = time.monotonic() - self.start
        self.say(f"features: {kept} images ({rows - kept} skipped) in {_eta(seconds)}, "
                 f"{rows / max(seconds, 1e-9):.1f} images/s")


class Extracted(NamedTuple):
    """A source's features, as :func:`extract` returns them and a cache file holds them.

    Attributes:
      features: {layer: float32 [K, D]} of the kept rows.
      kept: int64 [K], increasing rows of the source that were usable images.
      skipped: {row: reason} of the rows that were not.
      rows: how many rows the source had.
    """
    features: dict[str, np.ndarray]
    kept: np.ndarray
    skipped: dict[int, str]
    rows: int


def say_default(text: str) -> None:
    if distributed.is_primary():
        print(text, file=sys.stdout, flush=True)


class _Pass(NamedTuple):
    """A compiled extraction pass on a mesh: ``forward(variables, images, valid)``, the global
    batch size, the batch sharding and this process's rows [lo, hi) of each batch."""
    forward: Callable
    variables: Any
    batch: int
    sharding: NamedSharding
    lo: int
    hi: int


def _compile(spec: Spec, resolved: Resolved, variables: Any, mesh: Mesh | None) -> _Pass:
    if variables is None:
        try:
            variables = resolved.network.load(resolved.weights)
        except WeightsError as err:
            raise config_lib.ConfigError(f"config.data.backbone.weights: {err}") from None
    mesh = mesh or Mesh(distributed.mesh_devices(), ("data",))
    batch = -(-spec.batch_size // mesh.size) * mesh.size  # a multiple of the devices
    rows, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    forward = jax.jit(_forward(resolved.network.model, spec.layers, spec.image_size),
                      in_shardings=(replicated, rows, rows), out_shardings=(rows, rows))
    return _Pass(forward, jax.device_put(variables, replicated), batch, rows,
                 *distributed.local_rows(rows, batch))


def _pad(x: np.ndarray, size: int) -> np.ndarray:
    """Zero rows appended up to ``size``: the last batch keeps the one compiled shape."""
    pad = size - x.shape[0]
    return np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)]) if pad else x


def extract(images, spec: Spec, *, limit: int = 0, mesh: Mesh | None = None,
            variables: Any = None, say: Callable[[str], None] | None = None) -> Extracted:
    """The features of the usable images of a row reader, in row order.

    Args:
      images: a :class:`jclust.data.ArrayImages` or :class:`jclust.data.FolderImages` (``len``
        and ``rows(start, stop) -> (uint8 [n, h, w, C], valid [n], {row: reason})``).
      spec: the network, layers and size.
      limit: the first ``limit`` usable images only (0: all).
      mesh: a 1-D ``data`` mesh (default: every device of every process); each batch is split
        over it and each process reads only its rows.
      variables: the network's variables (default: read from the spec's weights file).
      say: where progress lines go (default: stdout, process 0 only).
    """
    say = say or say_default
    n = len(images)
    if n == 0:
        raise jdata.DataError("no images to extract features from")
    resolved = resolve(spec)
    run = _compile(spec, resolved, variables, mesh)
    total = min(n, limit) if limit else n
    out = {layer: np.zeros((n, width), np.float32) for layer, width in resolved.widths.items()}
    valid_all, skipped = np.zeros(n, bool), {}
    say(f"features: {n} images -> {spec.name} {'+'.join(spec.layers)} at {spec.image_size}x"
        f"{spec.image_size}, batches of {run.batch} on {run.sharding.mesh.size} device(s)")
    progress = _Progress(total, say)

    def store(start: int, result) -> int:
        features, valid = distributed.fetch(result)
        stop = min(start + run.batch, n)
        for layer in out:
            out[layer][start:stop] = features[layer][:stop - start]
        valid_all[start:stop] = valid[:stop - start]
        progress.update(stop)
        return int(valid_all[:stop].sum())

    pending, done, processed = None, 0, 0
    for start in range(0, n, run.batch):
        # This batch is read on the host while the devices compute the last one.
        x, valid, reasons = images.rows(start + run.lo, min(start + run.hi, n))
        skipped.update({start + run.lo + i: why for i, why in reasons.items()})
        local = (_pad(x, run.hi - run.lo), _pad(valid, run.hi - run.lo))
        result = run.forward(run.variables,
                             *distributed.global_batch(local, run.sharding, run.batch))
        if pending is not None:
            done = store(*pending)
        pending, processed = (start, result), min(start + run.batch, n)
        if limit and done >= limit:
            break
    store(*pending)
    kept = np.flatnonzero(valid_all[:processed])[:total]
    end = int(kept[-1]) + 1 if limit and kept.size == total else processed  # rows looked at
    progress.finish(end, kept.size)
    for row in np.flatnonzero(~valid_all[:end]):
        skipped.setdefault(int(row), "not usable (reported by another process)")
    return Extracted({layer: out[layer][kept] for layer in out}, kept.astype(np.int64),
                     {row: why for row, why in sorted(skipped.items()) if row < end}, n)


def combine(features: dict[str, np.ndarray], layers: Sequence[str],
            normalize: bool = True) -> np.ndarray:
    """The inputs of a method: the layers' features concatenated in ``layers``' order -> [N, sum
    D] float32; one layer as it is, several each L2-normalised per example first unless
    ``normalize`` is False.

    Several layers differ in scale by orders of magnitude (the pooled head's ReLU6 averages
    against a mid-level block's BatchNorm outputs) and in width (1280 against 112): normalised,
    each layer weighs the same in a distance whatever its scale, and a method sees the features'
    directions, which are what a pretrained network's similarity lives in. A method that treats
    each layer on its own (the triangle method standardises each) may want them as they are.
    """
    if len(layers) == 1:
        return np.asarray(features[layers[0]], np.float32)
    parts = [np.asarray(features[layer], np.float32) for layer in layers]
    if normalize:
        parts = [f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12) for f in parts]
    return np.concatenate(parts, axis=1)
