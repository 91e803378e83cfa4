"""Where a run's data comes from: a config's data source, limited, and optionally encoded by the
frozen encoder of another run (the DELIUS recipe). The trainer and :mod:`jclust.predict` both load
data through here.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections
import numpy as np

from jclust import checkpointing
from jclust import config_lib
from jclust import data as jdata
from jclust import inference
from jclust import methods as jmethods
from jclust import state as jstate
from jclust import workdir as jworkdir

ENCODED_FEATURES = "encoder_features.npy"


def load_dataset(config: ml_collections.ConfigDict, cache_dir: str | None = None) -> jdata.Dataset:
    """Loads ``config.data.source`` (applying ``data.limit`` and ``data.encoder_workdir``).

    Args:
      config: the run's config.
      cache_dir: the run's workdir; with ``data.encoder_workdir``, features already encoded for
        this run are read from ``cache_dir/encoder_features.npy`` instead of being recomputed (a
        resumed run must see the same features even if the encoder run has moved on).
    """
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


def freeze_encoded(config: ml_collections.ConfigDict, workdir: str, dataset: jdata.Dataset) -> None:
    """With ``data.encoder_workdir``, saves the encoded features with the run (once), so that a
    resume trains on the same ones even if the encoder run has moved on."""
    path = os.path.join(workdir, ENCODED_FEATURES)
    if config.data.encoder_workdir and not os.path.exists(path):
        np.save(path, dataset.inputs)


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
    state = runner.place(state)
    features = runner.features(state, dataset.inputs).astype(np.float32)
    return dataclasses.replace(dataset, inputs=features,
                               source=f"{dataset.source} encoded by {encoder_workdir}")
