"""ConfigError, the config skeleton every method shares, and the checks of its values."""

from __future__ import annotations

import os
from typing import Collection, Mapping

import ml_collections


class ConfigError(ValueError):
    """A config key, value or combination that cannot be used."""


def base_config() -> ml_collections.ConfigDict:
    """The keys every method config shares, with defaults for Fashion-MNIST on a CPU.

    Returns:
      An unlocked ConfigDict; method configs add their section and call :func:`finalize`.
    """
    c = ml_collections.ConfigDict()
    c.method = ""
    c.seed = 0
    c.num_clusters = 10

    c.data = ml_collections.ConfigDict()
    # fashion_mnist | digits | tfds:NAME[:SPLIT] | idx:DIR | npz:PATH | folder:DIR
    c.data.source = "fashion_mnist"
    # Shape (H, W, C) the model is trained on; folder: images are resized to it, and any other
    # image source must already have it.
    c.data.image_shape = (28, 28, 1)
    c.data.limit = 0  # use only the first `limit` examples (0: all)
    c.data.shuffle = True
    c.data.data_dir = ""  # TFDS data_dir ("" = TFDS default)
    # DELIUS recipe: a jclust workdir whose trained encoder turns the images into features first.
    c.data.encoder_workdir = ""
    # Or a pretrained network's features of the images (jclust/features.py, docs/pretrained.md):
    # the method then sees float32 [N, sum of the layers' widths]. folder: images are decoded in ImageNet's evaluation view (centre crop) at
    # image_size; images in memory are resized whole; data.image_shape is then not used.
    c.data.backbone = ml_collections.ConfigDict()
    c.data.backbone.name = ""  # "" (none) | efficientnet_lite0
    c.data.backbone.weights = ""  # the weights file ("": the installed package's)
    c.data.backbone.layers = ("pooled",)  # e.g. ("group5", "pooled")
    c.data.backbone.image_size = 224  # Lite0 was trained at 224x224
    c.data.backbone.batch_size = 64  # images per extraction batch over all devices
    # Several layers: each L2-normalised before concatenation (False: as they are, e.g. for the
    # triangle method, which standardises each layer itself).
    c.data.backbone.normalize_layers = True
    # Where extracted features are cached ("": WORKDIR/features); one folder may serve several
    # runs and methods on the same data.
    c.data.feature_cache = ""

    # A params file exported by another run at the end of a phase (WORKDIR/params_<phase>.msgpack),
    # loaded into a fresh run before training, e.g. IDEC on DEC's pretrained autoencoder with
    # pretrain.epochs=0. Same network shapes required; ignored on resume (the checkpoint has them).
    c.init_params = ""
    # Top-level parts of the params taken from init_params, comma-separated (e.g. "backbone": a
    # SwAV run's trained network under another method's fresh head); "": every part.
    c.init_params_parts = ""

    c.batch_size = 256
    c.eval_batch_size = 2048
    # An epoch of every schedule (durations in epochs: training, reclusters, rounds, evaluations)
    # lasts at least this many examples: on a smaller data set it spans several passes, so that a
    # few thousand images get as many optimisation steps and reclusters as Fashion-MNIST's
    # 70,000. 0: an epoch is one pass.
    c.min_epoch_examples = 0

    c.log_every_steps = 200
    # Also evaluate every this many steps, or epochs (-1: not set; see steps(); neither: only at
    # phase ends, at every recluster and at the end).
    c.eval_every_steps = -1
    c.eval_every_epochs = -1.0
    # With labels, also score every evaluation's embedding as a similarity (retrieval P@k, mAP,
    # 20-NN accuracy, pair and per-anchor AUC: jclust.metrics.similarity_report): the last this
    # many examples query the others. Fashion-MNIST: 10000 = its test split against its training
    # split, as benchmarks/similarity.py; -1: a seventh of any labelled data (Fashion-MNIST's
    # 10000), none when unlabelled or too small. 0: not (each costs seconds to a minute of CPU).
    c.eval_retrieval_queries = 0
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 2
    c.tensorboard = True  # also write WORKDIR/tensorboard/ events (tensorboardX, no TensorFlow)

    # PNGs in WORKDIR/pictures/, overwritten as training goes (see jclust.viz).
    c.pictures = ml_collections.ConfigDict()
    c.pictures.every_evals = 1  # after every this many evaluations and at the end (0: never)
    c.pictures.projection = "pca"  # 2-D projection of the embeddings: pca | tsne
    c.pictures.max_points = 5000  # points drawn in the projection (a fixed random subset)
    return c


# Keys a run may change when it resumes from its workdir: they leave what a checkpoint holds (its
# arrays, their shapes and meaning), the data and every train step as they were. They set when
# things are logged, saved, evaluated or drawn; how an evaluation reads the state out (the
# method refits its evaluation state at the next evaluation); how the same computation is run
# (feature passes' batch, the convolution's implementation, where TFDS data lives, the feature
# extraction's batch and cache folder: a run trains on the features frozen in its workdir); and
# init_params, which a resume ignores. Any other key (model, data, seed, batch size, optimiser,
# schedule, clustering...) makes a different run, which needs a new workdir.
RESUMABLE_KEYS = frozenset({
    "log_every_steps", "eval_every_steps", "eval_every_epochs", "checkpoint_every_steps",
    "keep_checkpoints", "eval_retrieval_queries",
    "tensorboard", "pictures.every_evals", "pictures.projection", "pictures.max_points",
    "eval_batch_size", "model.conv_impl", "data.data_dir", "init_params",
    "init_params_parts",
    "data.backbone.batch_size", "data.feature_cache",
    "jule.evaluation", "jule.spectral_neighbours", "deepcluster.eval_n_init",
    "deepclusterv2.eval_n_init", "odc.eval_n_init", "swav.eval_n_init",
})


def resumable_keys(config: ml_collections.ConfigDict) -> frozenset[str]:
    """:data:`RESUMABLE_KEYS` plus the length of the method's last phase where nothing else
    depends on it: a run may then be lengthened (or shortened) on resume.

    A length is not resumable where the learning rate is scheduled over it (cosine, ODC's step
    decay), nor for a phase before the last (the restored step would fall into another phase).
    """
    optim = config.get("optim", {})
    schedule = optim.get("lr_schedule")
    if config.get("method", "") in ("dec", "idec"):
        length = "dec.max_steps"  # the cluster phase: a constant learning rate
    elif schedule in ("constant", "inverse") or (schedule == "step"
                                                 and optim.get("lr_decay_factor") == 1.0):
        length = "optim.epochs"  # the one training phase, its rate independent of its length
    else:
        length = None
    return RESUMABLE_KEYS | ({length} if length else set())


def steps(config: ml_collections.ConfigDict, name: str, steps_per_epoch: int,
          default: int | None = None) -> int:
    """The number of steps that ``config.<name>_steps`` or ``config.<name>_epochs`` sets (``name``
    dotted, e.g. ``"swav.freeze_prototypes"``), as big_vision's ``utils.steps``: a config gives a
    duration in whichever unit it means, and a change of batch size or data keeps an epoch an
    epoch. A key that is absent or negative is not set; ``_steps``, when set, wins (so that
    ``--config.<name>_steps=N`` overrides a config file's epochs); epochs may be fractional
    (their steps round down).

    Raises:
      ConfigError when neither is set and there is no ``default``.
    """
    *sections, leaf = name.split(".")
    node = config
    for part in sections:
        node = node[part]
    for unit, per_unit in (("steps", 1), ("epochs", steps_per_epoch)):
        value = node.get(f"{leaf}_{unit}", -1)
        if value >= 0:
            return int(value * per_unit)
    if default is None:
        raise ConfigError(f"set config.{name}_steps or config.{name}_epochs (>= 0)")
    return default


def check_output_dir(path: str, what: str) -> None:
    """Raises a ConfigError unless ``path`` is, or can be created as, a writable directory.

    Checked before anything is written, so that a bad path fails without leaving anything behind.

    Args:
      path: the directory.
      what: how the message names it, e.g. "--workdir".
    """
    if not path:
        raise ConfigError(f"{what} is empty; give a directory (it is created if absent)")
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise ConfigError(f"{what}={path} is a file, not a directory; give a directory "
                              "(it is created if absent)")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{what}={path} is not writable; give a directory you can write to")
        return
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"{what}={path} cannot be created: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}={path} cannot be created: {parent} is not writable; give a "
                          "directory you can write to")


def check_ranges(config: ml_collections.ConfigDict, checks: Mapping[str, bool],
                 context: str = "") -> None:
    """Raises a ConfigError naming the first key whose check failed, with its value.

    Args:
      config: the config the keys refer to.
      checks: ``{"section.key": condition}``, in the order to report them.
      context: appended in parentheses (e.g. the number of examples the bound depends on).
    """
    for key, ok in checks.items():
        if not ok:
            value = config
            for part in key.split("."):
                value = value[part]
            suffix = f" ({context})" if context else ""
            raise ConfigError(f"config.{key}={value} is out of range{suffix}")


def finalize(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Locks a config so that unknown keys raise, and returns it."""
    config.lock()
    return config


def validate(config: ml_collections.ConfigDict, methods: Collection[str]) -> None:
    """Checks values that do not depend on the data, ``config.method`` among ``methods`` (the
    names :data:`jclust.methods.REGISTRY` knows). Raises ConfigError with the key named."""
    if config.method not in methods:
        raise ConfigError(f"config.method={config.method!r} is not a known method; "
                          f"known: {', '.join(sorted(methods))}")
    positive = ["num_clusters", "batch_size", "eval_batch_size", "log_every_steps",
                "checkpoint_every_steps", "keep_checkpoints"]
    for key in positive:
        if config[key] <= 0:
            raise ConfigError(f"config.{key} must be positive, got {config[key]}")
    if config.data.limit < 0:
        raise ConfigError(f"config.data.limit must be >= 0, got {config.data.limit}")
    if config.get("min_epoch_examples", 0) < 0:
        raise ConfigError(f"config.min_epoch_examples must be >= 0 (0: an epoch is one pass), got "
                          f"{config.min_epoch_examples}")
    if config.pictures.every_evals < 0 or config.pictures.max_points < 2:
        raise ConfigError("config.pictures.every_evals must be >= 0 and config.pictures.max_points "
                          f">= 2, got {config.pictures.every_evals} and {config.pictures.max_points}")
    if config.pictures.projection not in ("pca", "tsne"):
        raise ConfigError(f"config.pictures.projection={config.pictures.projection!r}; "
                          "use 'pca' or 'tsne'")
    for key, valid in (("conv_impl", ("auto", "native", "im2col")),
                       ("compute_dtype", ("float32", "bfloat16"))):
        if key in config.get("model", {}) and config.model[key] not in valid:
            raise ConfigError(f"config.model.{key}={config.model[key]!r}; use one of "
                              f"{', '.join(valid)}")
    shape = tuple(config.data.image_shape)
    if len(shape) != 3 or min(shape) <= 0:
        raise ConfigError(f"config.data.image_shape must be (H, W, C) with positive sizes, got {shape}")
    _validate_backbone(config.data)


def _validate_backbone(data: ml_collections.ConfigDict) -> None:
    """The data.backbone section's values (its name and layers are checked against the network
    by jclust.features.resolve, which knows them)."""
    backbone = data.backbone
    if not backbone.name:
        return
    if data.encoder_workdir:
        raise ConfigError(f"config.data.encoder_workdir and config.data.backbone.name="
                          f"{backbone.name!r} are both set, and a run's images are encoded by one "
                          "network: set --config.data.backbone.name= to use the encoder run, or "
                          "--config.data.encoder_workdir= for the backbone")
    layers = tuple(backbone.layers)
    if not layers or len(set(layers)) != len(layers) or not all(
            isinstance(layer, str) and layer for layer in layers):
        raise ConfigError(f"config.data.backbone.layers={layers} must name one or more distinct "
                          "layers, e.g. ('pooled',) or ('group5', 'pooled')")
    if backbone.image_size < 32:
        raise ConfigError(f"config.data.backbone.image_size={backbone.image_size} is below 32, "
                          "the network's total stride; Lite0 was trained at 224")
    if backbone.batch_size <= 0:
        raise ConfigError(f"config.data.backbone.batch_size must be positive, got "
                          f"{backbone.batch_size}")
