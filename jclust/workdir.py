"""A run's directory: ``run.json`` (the config and data a run was trained with), the config check
before a resume, parameter export and import, and ``assignments.npz``.

Checkpoints live in ``WORKDIR/checkpoints`` (:mod:`jclust.checkpointing`) and metrics in
``WORKDIR/metrics.jsonl`` (:mod:`jclust.writers`).
"""

from __future__ import annotations

import json
import os

import flax
import jax
import ml_collections
import numpy as np

from jclust import checkpointing
from jclust import config_lib
from jclust import data as jdata
from jclust import methods as jmethods

# run.json's format. 2: every CNN method's optim section is config_lib.optim_section's skeleton
# (JULE's optim.max_epochs became optim.epochs). 3: the checkpoints hold the trainer's evaluation
# state (TrainState.eval) and method states without evaluation fields; the checkpoints of a
# version-1 or -2 workdir cannot be restored (check_checkpoint_layout says what to do instead).
VERSION = 3
LAST_JCLUST_OF_VERSION_2 = "2e82692"


RUN_INFO = "run.json"
_DATA_SPEC_TYPES = {"num_examples": int, "input_shape": list, "is_image": bool}


def read_run_info(workdir: str) -> dict:
    """Reads ``WORKDIR/run.json`` (config and data spec of a run).

    Raises:
      FileNotFoundError: there is no run.json.
      ConfigError: it is unreadable, not JSON, or lacks the config or a data spec entry.
    """
    path = os.path.join(workdir, RUN_INFO)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{workdir} is not a jclust workdir (no run.json); train there first")
    fix = "restore it from a copy, or train in a new workdir"
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError) as err:  # ValueError: not JSON (a truncated file), not UTF-8
        raise config_lib.ConfigError(f"{path} is damaged or unreadable ({type(err).__name__}: "
                                     f"{err}); {fix}") from None
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict):
        raise config_lib.ConfigError(f"{path} holds no config; {fix}")
    spec = info.get("data_spec")
    bad = [key for key, kind in _DATA_SPEC_TYPES.items()
           if not isinstance(spec, dict) or not isinstance(spec.get(key), kind)]
    if bad:
        raise config_lib.ConfigError(f"{path} lacks a valid data_spec ({', '.join(bad)}); {fix}")
    return info


def check_checkpoint_layout(info: dict, workdir: str) -> None:
    """Raises a ConfigError when the checkpoints of the run ``info`` (its run.json) have a layout
    this jclust cannot restore, naming what to do instead."""
    version = info.get("version", 1)
    if version < 3:
        raise config_lib.ConfigError(
            f"{workdir} was written by an older jclust (run.json version {version}): its "
            "checkpoints keep the evaluation centroids inside the method's state, where this "
            "version no longer looks; train again in a new workdir, or resume and predict with "
            f"jclust {LAST_JCLUST_OF_VERSION_2} (git checkout {LAST_JCLUST_OF_VERSION_2})")


def data_spec_from_info(info: dict) -> jmethods.DataSpec:
    spec = info["data_spec"]
    return jmethods.DataSpec(num_examples=spec["num_examples"],
                             input_shape=tuple(spec["input_shape"]), is_image=spec["is_image"])


def write_run_info(workdir: str, config: ml_collections.ConfigDict, spec: jmethods.DataSpec,
                   source: str, features: dict | None = None) -> None:
    """Writes ``WORKDIR/run.json``: the config, the data spec, the format version, the data's
    source and, when the inputs are a pretrained backbone's features, what they are
    (:attr:`jclust.loader.Loader.feature_record`: backbone, weights' sha256, layers, cache key)."""
    info = {"config": _jsonable(config), "data_spec": json.loads(json.dumps(spec._asdict())),
            "version": VERSION, "source": source}
    if features is not None:
        info["features"] = json.loads(json.dumps(features))
    with open(os.path.join(workdir, RUN_INFO), "w") as f:
        json.dump(info, f, indent=1)


def _jsonable(config: ml_collections.ConfigDict) -> dict:
    """The config as run.json holds it (tuples become lists)."""
    return json.loads(json.dumps(config.to_dict(), default=list))


def _shown(value) -> str:
    return "(absent)" if value is None else json.dumps(value)


def check_resume(config: ml_collections.ConfigDict, workdir: str) -> tuple[list[str], dict | None]:
    """Compares ``config`` with the one ``WORKDIR/run.json`` records, before anything is restored.

    Only the keys of :func:`jclust.config_lib.resumable_keys` may differ from the config the
    workdir's checkpoints were trained with; a workdir without checkpoints starts over anyway.

    Returns:
      (the keys that changed, all resumable; the data spec the checkpoints were trained on, with
      the record of their backbone features under "features" (None without), or None when there
      is nothing to resume).

    Raises:
      ConfigError: another key changed (naming the keys and their values), or run.json is damaged.
    """
    if not os.path.exists(os.path.join(workdir, RUN_INFO)):
        return [], None
    if not checkpointing.steps_on_disk(os.path.join(workdir, "checkpoints")):
        return [], None
    info = read_run_info(workdir)
    check_checkpoint_layout(info, workdir)
    old, new = info["config"], _jsonable(config)
    changed = _config_diff(old, new)
    resumable = config_lib.resumable_keys(config)
    unsafe = sorted((k for k in changed if k not in resumable), key=lambda k: k != "method")
    if unsafe:
        values = "; ".join(f"{k}: {_shown(_get_dotted(old, k))} -> {_shown(_get_dotted(new, k))}"
                           for k in unsafe[:4])
        values += f"; and {len(unsafe) - 4} more" if len(unsafe) > 4 else ""
        newer = any(_get_dotted(old, k) is None for k in unsafe)
        raise config_lib.ConfigError(
            f"{workdir} holds checkpoints of another config ({values}); a resume may change only "
            f"logging, checkpointing, evaluation and the last phase's length: use a new workdir, "
            f"or restore the old values"
            + (" (a key absent from run.json is newer than the jclust that wrote it: add it there "
               "with the value the run was trained with)" if newer else ""))
    return changed, dict(info["data_spec"], features=info.get("features"))


def check_same_data(recorded: dict | None, spec: jmethods.DataSpec, workdir: str) -> None:
    """Raises a DataError when the data differs from what the workdir's checkpoints were trained
    on (``recorded``: :func:`check_resume`'s data spec, None for nothing to resume; the cache key
    of backbone features is checked before they are extracted, by :func:`jclust.loader.load`)."""
    if recorded is None:
        return
    before = (recorded["num_examples"], tuple(recorded["input_shape"]), recorded["is_image"])
    now = (spec.num_examples, tuple(spec.input_shape), spec.is_image)
    if before != now:
        raise jdata.DataError(f"the data ({_describe_spec(*now)}) is not what {workdir} was "
                              f"trained on ({_describe_spec(*before)}); use a new workdir, or the "
                              "old data")


def _describe_spec(num_examples: int, input_shape: tuple, is_image: bool) -> str:
    return f"{num_examples} {'images' if is_image else 'feature vectors'} of shape {input_shape}"


def _get_dotted(tree: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _config_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(prefix + key)
    return keys


def phase_params_path(workdir: str, phase_name: str) -> str:
    """Where the parameters at the end of a phase are exported: ``WORKDIR/params_<phase>.msgpack``."""
    return os.path.join(workdir, f"params_{phase_name}.msgpack")


def export_params(path: str, params) -> None:
    """Writes a params pytree as flax msgpack bytes (atomically)."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(flax.serialization.to_bytes(jax.device_get(params)))
    os.replace(tmp, path)


def import_params(path: str, like, parts: str = ""):
    """Reads params exported by :func:`export_params` into the structure of ``like``.

    ``parts``: top-level keys of the params, comma-separated (e.g. ``"backbone"``), taken from the
    file, the rest kept from ``like``: another method's trained backbone under a fresh head. ""
    takes them all.

    Raises:
      ConfigError: the file is missing, unreadable, lacks a part, or its tree or shapes differ
      from ``like``.
    """
    if not os.path.isfile(path):
        raise config_lib.ConfigError(f"config.init_params={path!r}: no such file")
    like = jax.device_get(like)
    try:
        with open(path, "rb") as f:
            loaded = flax.serialization.msgpack_restore(f.read())
    except Exception as err:  # noqa: BLE001 - msgpack raises many types for a bad file
        raise config_lib.ConfigError(f"config.init_params={path!r} cannot be used: "
                                     f"{type(err).__name__}: {str(err)[:300]}") from err
    names = tuple(p for p in parts.split(",") if p) or tuple(like)
    missing = [p for p in names if p not in like or not isinstance(loaded, dict) or p not in loaded]
    if missing:
        raise config_lib.ConfigError(
            f"config.init_params={path!r}: no part {missing[0]!r} in "
            + ("this model" if missing[0] not in like else "the file")
            + f" (the file has {sorted(loaded) if isinstance(loaded, dict) else 'no parts'}, "
            f"the model {sorted(like)}); set config.init_params_parts to parts of both")
    taken = {}
    for name in names:
        try:
            taken[name] = flax.serialization.from_state_dict(like[name], loaded[name])
        except Exception as err:  # noqa: BLE001 - flax raises many types for a mismatched tree
            raise config_lib.ConfigError(f"config.init_params={path!r} cannot be used: "
                                         f"{type(err).__name__}: {str(err)[:300]}") from err
        for (where, a), b in zip(jax.tree_util.tree_leaves_with_path(like[name]),
                                 jax.tree.leaves(taken[name])):
            if np.shape(a) != np.shape(b):
                raise config_lib.ConfigError(
                    f"config.init_params={path!r}: [{name!r}]{jax.tree_util.keystr(where)} has "
                    f"shape {np.shape(b)} but this model needs {np.shape(a)}")
    return {**like, **{name: jax.tree.map(lambda a, b: np.asarray(b, dtype=np.asarray(a).dtype),
                                          like[name], taken[name]) for name in names}}


def initial_params(config, like):
    """The params ``config.init_params`` sets (its ``init_params_parts`` of them, the rest from
    ``like``), or None when it is not set."""
    if not config.get("init_params"):
        return None
    return import_params(config.init_params, like, config.get("init_params_parts", ""))


ASSIGNMENTS = "assignments.npz"
PICTURES = "pictures"


def save_assignments(workdir: str, step: int, labels: np.ndarray, confidence: np.ndarray) -> None:
    """Writes the latest evaluation's assignment (atomically) to ``WORKDIR/assignments.npz``.

    Arrays: ``step`` [], ``labels`` int32 [N] and ``confidence`` float32 [N], in example order.
    """
    path = os.path.join(workdir, ASSIGNMENTS)
    tmp = path + ".tmp.npz"
    np.savez(tmp, step=np.int64(step), labels=labels.astype(np.int32),
             confidence=confidence.astype(np.float32))
    os.replace(tmp, path)

