"""Configuration helpers: the shared config skeleton, loading and validation.

Every method config (``configs/<method>.py``) starts from :func:`base_config` and adds its own
section. Configs are locked: a key that is not in the skeleton is an error, never a silent new
field. Command-line overrides (``--config.a.b=v``) are checked here *before* absl parses them, so a
typo gives one line naming the key and the valid keys instead of a traceback.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import traceback
from typing import Any, Collection, Mapping, Sequence

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

    c.batch_size = 256
    c.eval_batch_size = 2048

    c.log_every_steps = 200
    # Also evaluate every this many steps, or epochs (-1: not set; see steps(); neither: only at
    # phase ends, at every recluster and at the end).
    c.eval_every_steps = -1
    c.eval_every_epochs = -1.0
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
    "keep_checkpoints",
    "tensorboard", "pictures.every_evals", "pictures.projection", "pictures.max_points",
    "eval_batch_size", "model.conv_impl", "data.data_dir", "init_params",
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


def small_cnn_model(pool_first: bool = False) -> ml_collections.ConfigDict:
    """The ``model`` section of the CNN methods: jclust's small CNN for 28x28 inputs.

    ``pool_first`` also pools after the first conv (28 -> 14 -> 7 -> 3): ~4x cheaper convs.
    """
    model = ml_collections.ConfigDict()
    model.name = "small_cnn"
    model.widths = (32, 64, 128)
    model.dense = 128
    model.pool_first = pool_first
    model.global_pool = False  # True: average-pool the last map (inputs of any size)
    model.conv_impl = "auto"  # im2col on CPU, XLA's convolution on GPU/TPU
    # "bfloat16": mixed precision (the backbone computes in bf16; parameters, features and all
    # clustering stay float32). Worth it on GPU/TPU; XLA:CPU has no fast bf16 convolutions.
    model.compute_dtype = "float32"
    return model


def optim_section(**values) -> ml_collections.ConfigDict:
    """The ``optim`` section of the CNN methods, read by :func:`jclust.optim.make`: one skeleton,
    with ``values`` (each a key of it) in place of its defaults.

    Keys: ``optimizer`` ("sgd" | "adam"), ``epochs`` (the training phase's length; JULE's bound,
    as it stops once its clusters reach ``num_clusters``), ``learning_rate``, ``momentum`` (SGD),
    ``weight_decay`` (decoupled), ``lr_schedule`` ("constant" | "cosine" | "inverse" | "step"),
    ``lr_decay_factor`` and ``lr_decay_fraction`` (the step schedule's drop and where it falls).
    """
    section = ml_collections.ConfigDict({
        "optimizer": "sgd", "epochs": 1, "learning_rate": 0.05, "momentum": 0.0,
        "weight_decay": 0.0, "lr_schedule": "constant", "lr_decay_factor": 1.0,
        "lr_decay_fraction": 1.0})
    unknown = set(values) - set(section)
    if unknown:
        raise ValueError(f"not optim keys: {', '.join(sorted(unknown))}")
    section.update(values)
    return section


def jule_cnn_model() -> ml_collections.ConfigDict:
    """The ``model`` section of the JULE reference's MNIST network (:class:`jclust.models.JuleCNN`).

    [conv5x5-50, BN, ReLU, maxpool 2] -> [conv5x5-50, BN, ReLU] -> flatten (3,200 at 28x28).
    """
    model = ml_collections.ConfigDict()
    model.name = "jule_cnn"
    model.widths = (50, 50)
    model.kernel_size = 5
    model.conv_impl = "auto"  # im2col on CPU, XLA's convolution on GPU/TPU
    model.compute_dtype = "float32"
    return model


def use_digits(config: ml_collections.ConfigDict) -> None:
    """Switches a config to scikit-learn's 8x8 digits (the ``:digits`` variants: 1,797 images
    shipped with scikit-learn, a run in a minute), with a small CNN's widths for 8x8 inputs."""
    config.data.source = "digits"
    config.data.image_shape = (8, 8, 1)
    if "widths" in config.get("model", {}):
        config.model.widths = (32, 64)


def use_cifar10(config: ml_collections.ConfigDict) -> None:
    """Switches a CNN method's config to CIFAR-10 on an accelerator (the ``:cifar10`` variants).

    TFDS ``cifar10`` (train + test merged, 60,000 32x32 colour images), ResNet-18 with the CIFAR
    stem (BatchNorm statistics in the model state, synchronised over the data-parallel batch),
    batch 256.
    """
    config.data.source = "tfds:cifar10"
    config.data.image_shape = (32, 32, 3)
    config.model = ml_collections.ConfigDict()
    config.model.name = "resnet18"
    config.model.stage_widths = (64, 128, 256, 512)
    config.model.compute_dtype = "float32"  # "bfloat16" for mixed precision on GPU/TPU
    config.batch_size = 256
    config.eval_batch_size = 1024
    config.log_every_steps = 100
    config.checkpoint_every_steps = 2000


def finalize(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Locks a config so that unknown keys raise, and returns it."""
    config.lock()
    return config


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads ``path/to/config.py[:arg]`` by calling its ``get_config(arg)``.

    Args:
      spec: a config file path, optionally followed by ``:arg``.

    Returns:
      The (locked) ConfigDict.
    """
    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        raise ConfigError(f"config file {path!r} does not exist")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} is not a file; give a .py file defining "
                          "get_config(arg)")
    module_spec = importlib.util.spec_from_file_location("_jclust_config", path)
    module = importlib.util.module_from_spec(module_spec)
    # A config file is the user's code: whatever it raises is a fault in that file, reported with
    # its type, message and line (nothing of it is hidden), not a traceback into jclust.
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as err:
        raise ConfigError(f"config file {path} has a syntax error at line {err.lineno}: "
                          f"{err.msg}; fix the file") from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from None
    except Exception as err:  # noqa: BLE001 - see above
        raise ConfigError(f"config file {path} failed to load: {_user_code_error(err, path)}; "
                          "fix the file") from None
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"config file {path!r} has no get_config(arg) function")
    try:
        config = module.get_config(arg) if arg else module.get_config()
    except ValueError as err:  # e.g. an unknown config argument
        raise ConfigError(f"{path}: {err}") from err
    except Exception as err:  # noqa: BLE001 - the user's code, as above
        raise ConfigError(f"get_config({arg!r}) of {path} failed: "
                          f"{_user_code_error(err, path)}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"get_config({arg!r}) of {path} returned a {type(config).__name__}, "
                          "not an ml_collections.ConfigDict")
    config.lock()
    return config


def _user_code_error(err: Exception, path: str) -> str:
    """``Type: message (line N)``, N being the last line of ``path`` the error passed through."""
    lines = [frame.lineno for frame in traceback.extract_tb(err.__traceback__)
             if os.path.abspath(frame.filename) == os.path.abspath(path)]
    where = f" (line {lines[-1]})" if lines else ""
    text = (str(err).strip().splitlines() or [""])[0][:300]
    return f"{type(err).__name__}: {text}{where}"


def load_sibling(config_file: str, name: str, arg: str = "") -> ml_collections.ConfigDict:
    """Loads another config file from the same folder (unlocked), for configs that extend it.

    Args:
      config_file: ``__file__`` of the calling config.
      name: file name of the base config, e.g. "dec.py".
      arg: the argument to pass to its ``get_config``.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), name)
    config = load_config(f"{path}:{arg}" if arg else path)
    config.unlock()
    return config


def _valid_keys(node: ml_collections.ConfigDict, prefix: str) -> str:
    return ", ".join(sorted(prefix + k for k in node.keys()))


def _lookup(config: ml_collections.ConfigDict, dotted: str):
    """Returns (parent ConfigDict, leaf name) for a dotted key, raising a ConfigError if absent."""
    parts = dotted.split(".")
    node, prefix = config, ""
    for i, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            where = f"under {prefix[:-1]!r}" if prefix else "at the top level"
            valid = _valid_keys(node, prefix) if isinstance(node, ml_collections.ConfigDict) else "(none)"
            raise ConfigError(f"unknown config key {dotted!r}; valid keys {where}: {valid}")
        if i < len(parts) - 1:
            node, prefix = node[part], prefix + part + "."
    return node, parts[-1]


def parse_value(dotted: str, text: str, current: Any) -> Any:
    """Parses a command-line string into the type of the field's current value.

    Raises:
      ConfigError naming the key and the expected type when the text does not fit.
    """
    expected = type(current)
    try:
        if isinstance(current, bool):
            # Exactly what absl's boolean flags accept, so the two never disagree.
            lowered = text.strip().lower()
            if lowered in ("true", "t", "1"):
                return True
            if lowered in ("false", "f", "0"):
                return False
            raise ValueError(text)
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, str):
            return text
        if isinstance(current, (tuple, list)):
            value = ast.literal_eval(text)
            if isinstance(value, (int, float)):
                value = (value,)
            if not isinstance(value, (tuple, list)):
                raise ValueError(text)
            if current and any(type(v) is not type(current[0]) and not (
                    isinstance(current[0], float) and isinstance(v, int)) for v in value):
                raise ValueError(text)
            return tuple(value)
    except (ValueError, SyntaxError):
        pass
    else:
        raise ConfigError(f"config key {dotted!r} has type {expected.__name__}, which the command "
                          "line cannot set")
    raise ConfigError(f"config key {dotted!r} expects a {expected.__name__} "
                      f"(like {current!r}), got {text!r}")


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """Returns a copy of ``config`` with dotted keys set; strings are parsed to the field's type.

    Args:
      config: a ConfigDict.
      overrides: ``{"dec.tol": 0.01, "data.source": "digits"}``; values may be strings
        (parsed like the command line) or already-typed values.
    """
    config = ml_collections.ConfigDict(config.to_dict())  # deep copy, unlocked
    for dotted, value in overrides.items():
        parent, leaf = _lookup(config, dotted)
        current = parent[leaf]
        if isinstance(value, str) and not isinstance(current, str):
            value = parse_value(dotted, value, current)
        elif isinstance(current, (tuple, list)) and isinstance(value, list):
            value = tuple(value)
        elif type(value) is int and isinstance(current, float):
            value = float(value)
        elif not isinstance(value, type(current)) or (isinstance(current, int) and isinstance(value, bool)
                                                      and not isinstance(current, bool)):
            raise ConfigError(f"config key {dotted!r} expects a {type(current).__name__}, "
                              f"got {value!r}")
        parent[leaf] = value
    config.lock()
    return config


def cli_overrides(argv: Sequence[str], flag: str = "config") -> dict[str, str]:
    """Extracts ``--config.a.b=value`` (or ``--config.a.b value``) pairs from an argv list."""
    out, prefix = {}, f"--{flag}."
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith(prefix):
            key, eq, value = arg[len(prefix):].partition("=")
            if not eq:
                if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                    value, i = argv[i + 1], i + 1
                else:
                    value = "true"  # a bare boolean flag
            out[key] = value
        elif arg.startswith(f"--no{flag}."):
            out[arg[len(f"--no{flag}."):]] = "false"
        i += 1
    return out


def config_spec_from_argv(argv: Sequence[str], flag: str = "config") -> str | None:
    """Finds the value of ``--config=...`` (or ``--config ...``) in argv."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{flag}="):
            return arg.split("=", 1)[1]
        if arg == f"--{flag}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


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
