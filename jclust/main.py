"""Command line: ``python -m jclust.main --config=configs/dec.py[:arg] --workdir=DIR [--config.k=v]``.

Flags only; the program is ``jclust.train.train_and_evaluate``, which notebooks and tests call
directly. Config overrides are checked before absl parses them, so an unknown key or a value of the
wrong type ends the program with one line naming the key, before anything is written.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jclust import config_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Method config file[:arg].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics; "
                               "re-running with the same workdir resumes.")
flags.mark_flags_as_required(["config", "workdir"])


def _main(argv):
    del argv
    # Orbax logs every save at INFO through absl; keep stdout to jclust's own progress lines.
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from jclust import checkpointing, data, train  # noqa: E402 (after flag parsing: faster --help)
    try:
        train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (config_lib.ConfigError, data.DataError, checkpointing.CheckpointError,
            train.NonFiniteLossError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


def check_argv(argv) -> None:
    """Exits with a one-line error if a ``--config.*`` override names an unknown key or bad value."""
    spec = config_lib.config_spec_from_argv(argv)
    if spec is None:
        return  # absl reports the missing flag
    try:
        config = config_lib.load_config(spec)
        config_lib.apply_overrides(config, config_lib.cli_overrides(argv))
    except config_lib.ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def run():
    """Entry point of ``python -m jclust.main``."""
    check_argv(sys.argv[1:])
    app.run(_main)


if __name__ == "__main__":
    run()
