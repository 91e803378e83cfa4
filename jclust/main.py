"""Command line: ``python -m jclust.main --config=configs/dec.py[:arg] --workdir=DIR [--config.k=v]``.

Multi-host: run the same command in every process, adding ``--coordinator_address=HOST:PORT
--num_processes=N --process_id=I`` (or ``--distributed`` where JAX detects the cluster itself:
Cloud TPU pods, SLURM, Open MPI, Kubernetes). All processes need the same workdir path on a
shared file system (checkpoints are written by all of them, everything else by process 0).

Flags only; the program is ``jclust.train.train_and_evaluate``, which notebooks and tests call
directly. Config overrides are checked before absl parses them, so an unknown key or a value of the
wrong type ends the program with one line naming the key, before anything is written.

SIGTERM (preemption, a scheduler) and Ctrl-C stop a run at the end of the current step with a
checkpoint of it (jclust/preemption.py): the exit status is 0 after SIGTERM and 130 after Ctrl-C,
and rerunning the same command resumes, bit-exactly (on a GPU too: the program turns on XLA's
deterministic GPU ops unless XLA_FLAGS sets them; jclust/determinism.py).
"""

import sys
import warnings

from absl import app, flags, logging
from ml_collections import config_flags

from jclust import config_lib, determinism

_CONFIG = config_flags.DEFINE_config_file("config", None, "Method config file[:arg].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics; "
                               "re-running with the same workdir resumes.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Start JAX's distributed runtime with "
                                 "the cluster detected from the environment (TPU pod, SLURM...).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0; with "
                                   "--num_processes and --process_id, runs as one of N processes.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes of the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Index of this process, 0..N-1.")
flags.mark_flags_as_required(["config", "workdir"])


def _start_distributed() -> None:
    """Starts JAX's distributed runtime if the flags ask for it (before any JAX computation)."""
    given = [f for f in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID) if f.value is not None]
    if not given and not _DISTRIBUTED.value:
        return
    if given and len(given) != 3:
        raise config_lib.ConfigError("--coordinator_address, --num_processes and --process_id go "
                                     "together (or use --distributed to detect the cluster)")
    if given and not 0 <= _PROCESS_ID.value < _NUM_PROCESSES.value:
        raise config_lib.ConfigError(f"--process_id={_PROCESS_ID.value} is not in "
                                     f"0..{_NUM_PROCESSES.value - 1}")
    from jclust import distributed  # noqa: E402
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)


def _one_line_data_warnings(category: type) -> None:
    """Shows warnings of ``category`` (skipped files, ignored folders) as one ``warning:`` line,
    not Python's file:line form with a line of jclust's source."""
    default = warnings.formatwarning

    def formatwarning(message, category_, filename, lineno, line=None):
        if issubclass(category_, category):
            return f"warning: {message}\n"
        return default(message, category_, filename, lineno, line)

    warnings.formatwarning = formatwarning


def _main(argv):
    del argv
    # Orbax logs every save at INFO through absl; keep stdout to jclust's own progress lines.
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    import jax  # noqa: E402
    # After flag parsing: faster --help.
    from jclust import checkpointing, data, monitor, preemption, train  # noqa: E402
    _one_line_data_warnings(data.DataWarning)
    try:
        _start_distributed()
        stopped = None
        try:
            train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
        except preemption.Stopped as stop:
            stopped = stop  # SIGTERM or Ctrl-C: the checkpoint is saved and the line printed
        if jax.process_count() > 1:
            jax.distributed.shutdown()  # all together, before interpreter teardown
        if stopped is not None:
            sys.exit(stopped.exit_code)  # 0 after SIGTERM, 130 after Ctrl-C
    except (config_lib.ConfigError, data.DataError, checkpointing.CheckpointError,
            monitor.NonFiniteLossError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        # A second Ctrl-C while stopping, or one outside the training loop's handlers.
        print("interrupted: quit at once, without saving; rerun the same command to resume from "
              "the last checkpoint", file=sys.stderr)
        sys.exit(preemption.EXIT_CODES["SIGINT"])


def check_argv(argv) -> None:
    """Exits with a one-line error if the config file cannot be loaded, a ``--config.*`` override
    names an unknown key or bad value, or ``--workdir`` cannot be a directory (all before JAX is
    imported, so the answer is immediate)."""
    spec = config_lib.config_spec_from_argv(argv)
    workdir = config_lib.config_spec_from_argv(argv, flag="workdir")
    try:
        if spec is not None:  # else absl reports the missing flag
            config = config_lib.load_config(spec)
            config_lib.apply_overrides(config, config_lib.cli_overrides(argv))
        if workdir is not None:
            config_lib.check_output_dir(workdir, "--workdir")
    except config_lib.ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a flag error (a missing or unknown flag) as one ``error:`` line."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        print(f"error: {' '.join(str(err).split()).rstrip('.')}; see --helpshort", file=sys.stderr)
        sys.exit(2)


def run():
    """Entry point of ``python -m jclust.main``."""
    check_argv(sys.argv[1:])
    determinism.request_deterministic_gpu_ops()  # bit-exact resume on GPUs too
    app.run(_main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
