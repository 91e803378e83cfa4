"""Overrides: dotted keys set from the command line (``--config.a.b=v``) or a mapping, checked
against the config's keys and the types of their values."""

from __future__ import annotations

import ast
from typing import Any, Mapping, Sequence

import ml_collections

from jclust.config_lib.base import ConfigError


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
