"""Config files: ``path/to/config.py[:arg]`` loaded by calling its ``get_config(arg)``."""

from __future__ import annotations

import importlib.util
import os
import traceback

import ml_collections

from jclust.config_lib.base import ConfigError


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
