"""Where a run's data comes from, and the one seam through which it reaches the trainer, its
evaluations, :mod:`jclust.predict` and the DELIUS encoder.

:func:`load` reads a config's data source (limited, and optionally encoded by the frozen encoder
of another run: the DELIUS recipe) into a :class:`Loader`. The loader's users ask it for training
batches by example index and for the feature pass over every example; none of them indexes the
data itself, so that a source larger than memory (streamed from TFDS or from files) changes this
module, not theirs.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Callable

import ml_collections
import numpy as np

from jclust import checkpointing
from jclust import config_lib
from jclust import data as jdata
from jclust import feature_cache
from jclust import features as jfeatures
from jclust import inference
from jclust import methods as jmethods
from jclust import state as jstate
from jclust import workdir as jworkdir

ENCODED_FEATURES = "encoder_features.npy"


class Loader:
    """A data set as the trainer, the evaluations and predict use it.

    Today the data are in memory (a :class:`jclust.data.Dataset`); examples are named by their
    index, the row of the arrays.

    Args:
      dataset: the examples, their labels (if any), names and source.
      features: with ``data.backbone``, what :func:`jclust.feature_cache.load` returned, else None.
    """

    def __init__(self, dataset: jdata.Dataset, features: feature_cache.Loaded | None = None):
        self.dataset = dataset
        self.extracted = features

    @property
    def feature_record(self) -> dict | None:
        """With ``data.backbone``, what the inputs are, as run.json records it: cache key,
        backbone, weights file and its sha256, {layer: width}, image size, version, how layers
        were combined (:class:`jclust.feature_cache.Loaded`'s record less where it was read);
        else None."""
        if self.extracted is None:
            return None
        return {k: v for k, v in self.extracted.record.items() if k != "file"}

    @property
    def spec(self) -> jmethods.DataSpec:
        """What a method may know about the data: N, per-example shape, images or features."""
        return data_spec_of(self.dataset)

    @property
    def num_examples(self) -> int:
        return self.dataset.num_examples

    @property
    def labels(self) -> np.ndarray | None:
        """int32 [N] class labels (for metrics only), or None."""
        return self.dataset.labels

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """The name of each label value, or None."""
        return self.dataset.class_names

    @property
    def names(self) -> tuple[str, ...] | None:
        """Each example's identifier (file paths for ``folder:``), or None."""
        return self.dataset.names

    @property
    def source(self) -> str:
        return self.dataset.source

    def describe(self) -> str:
        """One line: source, N, per-example shape, labels."""
        return jdata.describe(self.dataset)

    def sample(self, size: int) -> np.ndarray:
        """The inputs [min(size, N), ...] of the first examples: what a model's initialisation
        needs (shapes and dtype)."""
        return self.dataset.inputs[:size]

    def batch(self, indices: np.ndarray, neighbours: np.ndarray | None = None) -> dict:
        """A training batch (host arrays) of the examples ``indices`` [B]: ``x`` [B, ...] and
        ``index`` int32 [B]; with ``neighbours`` [B] (the sampler's pairs) also ``neighbour_x``
        and ``neighbour_index``."""
        batch = {"x": self.dataset.inputs[indices], "index": indices.astype(np.int32)}
        if neighbours is not None:
            batch.update(neighbour_x=self.dataset.inputs[neighbours], neighbour_index=neighbours)
        return batch

    def features(self, runner: inference.Runner, state: jstate.TrainState) -> np.ndarray:
        """The feature pass: every example embedded by ``state`` in index order -> [N, D] float32
        (host, whole on every process)."""
        return runner.features(state, self.dataset.inputs)

    def inputs(self) -> np.ndarray:
        """Every example's inputs [N, ...]: for a recluster that works in input space (JULE's
        pixel-space start, NMM's neighbour mining)."""
        return self.dataset.inputs

    def images(self) -> np.ndarray | None:
        """Every example's image [N, H, W, C] uint8 for pictures, or None for feature vectors."""
        return self.dataset.inputs if self.dataset.is_image else None


def load(config: ml_collections.ConfigDict, cache_dir: str | None = None,
         say: Callable[[str], None] | None = None, trained_on: dict | None = None) -> Loader:
    """The :class:`Loader` of ``config.data``.

    Args:
      config: the run's config.
      cache_dir: the run's workdir: with ``data.encoder_workdir``, features already encoded for
        this run are read from ``cache_dir/encoder_features.npy`` instead of being recomputed (a
        resumed run must see the same features even if the encoder run has moved on); with
        ``data.backbone``, features are looked up in ``cache_dir/features`` first (those this run
        trained on), then in ``data.feature_cache``; newly extracted ones are saved at once in
        ``data.feature_cache`` when set, and in ``cache_dir/features`` by :func:`freeze_features`
        (the trainer writes nothing in its workdir before the config and data have passed every
        check).
      say: where the feature extraction's progress lines go (default: stdout, process 0).
      trained_on: the record of the backbone features a resumed run was trained on (run.json's
        ``features``): other features (their weights or images changed) are refused before they
        are extracted.
    """
    spec = jfeatures.spec_from_config(config.data.get("backbone"))  # absent: an older run's
    if spec is None:
        return Loader(load_dataset(config, cache_dir))
    own = os.path.join(cache_dir, feature_cache.FOLDER) if cache_dir else None
    shared = config.data.get("feature_cache") or None
    loaded = feature_cache.load(
        config.data.source, spec, limit=config.data.limit, data_dir=config.data.data_dir or None,
        read_dirs=[d for d in (own, shared) if d], write_dir=shared, say=say,
        expect_key=trained_on["key"] if trained_on else None)
    return Loader(loaded.dataset, loaded)


def load_dataset(config: ml_collections.ConfigDict, cache_dir: str | None = None) -> jdata.Dataset:
    """Loads ``config.data.source`` (applying ``data.limit`` and ``data.encoder_workdir``) without
    a backbone (:func:`load` handles ``data.backbone``).

    Args:
      config: the run's config.
      cache_dir: see :func:`load`.
    """
    if jfeatures.spec_from_config(config.data.get("backbone")) is not None:
        return load(config, cache_dir).dataset
    image_shape = tuple(config.data.image_shape)
    if config.data.encoder_workdir:
        encoder = _encoder_run_info(config.data.encoder_workdir)
        image_shape = tuple(encoder["data_spec"]["input_shape"])
    dataset = jdata.load(config.data.source, image_shape=image_shape,
                         data_dir=config.data.data_dir or None)
    if config.data.limit and config.data.limit < dataset.num_examples:
        dataset = dataset.subset(np.arange(config.data.limit))
    if config.data.encoder_workdir:
        cached = os.path.join(cache_dir, ENCODED_FEATURES) if cache_dir else None
        if cached and os.path.exists(cached):
            try:
                features = np.load(cached, allow_pickle=False)
            except (OSError, ValueError, EOFError) as err:
                raise jdata.DataError(f"{cached} is damaged ({type(err).__name__}: {err}); move "
                                      "it away to encode the data again") from None
            if features.shape[0] != dataset.num_examples:
                raise jdata.DataError(f"{cached} holds {features.shape[0]} encoded examples but the "
                                      f"data has {dataset.num_examples}; use a new workdir")
            dataset = dataclasses.replace(dataset, inputs=features,
                                          source=f"{dataset.source} encoded by {config.data.encoder_workdir}")
        else:
            dataset = encode_dataset(dataset, config.data.encoder_workdir,
                                     batch_size=config.eval_batch_size)
    return dataset


def data_spec_of(dataset: jdata.Dataset) -> jmethods.DataSpec:
    """What a method may know about a data set: N, per-example shape, images or features."""
    return jmethods.DataSpec(num_examples=dataset.num_examples,
                             input_shape=tuple(int(s) for s in dataset.input_shape),
                             is_image=dataset.is_image)


def freeze_features(config: ml_collections.ConfigDict, workdir: str, data: Loader) -> None:
    """Keeps the features a run trains on in its workdir (once), so that a resume trains on the
    same ones: the encoder's (``encoder_features.npy``) even if the encoder run has moved on; a
    backbone's (``features/<key>.npz``: written, or hard-linked or copied from a shared
    ``data.feature_cache``) even if that folder is cleaned. Also the run's feature cache: a rerun
    or a second method pointed at this workdir's ``features`` folder reads them."""
    if config.data.encoder_workdir:
        path = os.path.join(workdir, ENCODED_FEATURES)
        if not os.path.exists(path):
            np.save(path, data.inputs())
    if data.extracted is None:
        return
    record = data.extracted.record
    own = os.path.join(workdir, feature_cache.FOLDER, f"{record['key']}.npz")
    if os.path.exists(own):
        return
    if record["file"] is None:
        feature_cache.write(own, data.extracted.what, data.extracted.entry)
        return
    os.makedirs(os.path.dirname(own), exist_ok=True)
    tmp = f"{own}.{os.getpid()}.tmp"
    try:
        os.link(record["file"], tmp)
    except OSError:  # another file system, or no hard links there
        shutil.copyfile(record["file"], tmp)
    os.replace(tmp, own)


def _encoder_run_info(encoder_workdir: str) -> dict:
    try:
        return jworkdir.read_run_info(encoder_workdir)
    except (FileNotFoundError, config_lib.ConfigError) as err:
        raise jdata.DataError(f"config.data.encoder_workdir={encoder_workdir!r}: {err}") from None


def encode_dataset(dataset: jdata.Dataset, encoder_workdir: str, batch_size: int = 2048) -> jdata.Dataset:
    """Replaces images by the frozen encoder features of a trained jclust run (DELIUS recipe).

    Args:
      dataset: images [N, H, W, C] of the shape the encoder was trained on.
      encoder_workdir: workdir of a finished or running jclust training.

    Returns:
      The same examples with ``inputs`` = features [N, D] float32.
    """
    try:
        _, method, state, spec = inference.load_run(encoder_workdir)
    except (FileNotFoundError, config_lib.ConfigError, checkpointing.CheckpointError) as err:
        raise jdata.DataError(f"config.data.encoder_workdir={encoder_workdir!r}: {err}") from None
    if tuple(dataset.input_shape) != tuple(spec.input_shape):
        raise jdata.DataError(f"images of shape {tuple(dataset.input_shape)} do not match the shape "
                              f"the encoder in {encoder_workdir} was trained on ({spec.input_shape})")
    runner = inference.Runner(method, jstate.make_mesh(), batch_size, spec.num_examples)
    features = Loader(dataset).features(runner, runner.place(state)).astype(np.float32)
    return dataclasses.replace(dataset, inputs=features,
                               source=f"{dataset.source} encoded by {encoder_workdir}")
