"""Polite stops: SIGTERM and Ctrl-C end a training run with a checkpoint of the current step.

A preemptible VM or a cluster scheduler stops a job with SIGTERM and a short grace period; a
person stops it with Ctrl-C (SIGINT). While :func:`jclust.train.train_and_evaluate` runs, neither
ends the process at once: the signal handler only records the signal, and the trainer asks
:meth:`StopSignals.should_stop` once before its loop and once at the end of every iteration (after
the train step, recluster, evaluation and regular save of that step: the point where a checkpoint
is complete, see jclust/train.py). When it answers True the trainer saves the current step (if
not saved yet), prints ``stopped by SIGTERM at step 640: checkpoint saved; rerun the same command
to resume`` and raises :class:`Stopped`. Rerunning the same command resumes from that checkpoint,
bit-exactly as from any checkpoint.

What a signal does in each part of a run:

- start-up (data, restore, the initial recluster and evaluation), a train step, a recluster or
  feature pass, an evaluation, a save: the part finishes, and the run stops at the next check.
  Nothing is interrupted half-way, so no file is left half-written.
- the final evaluation (after the last check): it finishes and the run ends normally.
- a second Ctrl-C after the first stop signal quits at once, as Ctrl-C would without jclust
  (``KeyboardInterrupt``): whatever was not saved yet is lost, and a save cut short leaves a
  partial step that Orbax ignores or the next run's restore walks back over. Further SIGTERMs
  are ignored (the stop is already under way).
- a signal that the process ignored when the run started (``SIG_IGN``, e.g. SIGINT of a
  background job of a shell script) stays ignored.

Several processes (multi-host runs) must save the same step, since the checkpoint is one
cooperative write. They agree through JAX's preemption sync point
(``multihost_utils.reached_preemption_sync_point``): ``jax.distributed.initialize`` (jax 0.10)
starts a preemption sync manager whose notifier catches SIGTERM at the C level; the notice of any
one process reaches all of them through the coordination service, which fixes the step as one
past the furthest check any process has made, and every process stops at that check. The checks
are numbered 1, 2, ... in each process (not by training step: all processes of a run make the same
checks, but a resumed run starts at a later step), so a notice that arrives during start-up stops
the run at its first check. SIGTERM is therefore left
to JAX's handler, and Ctrl-C is forwarded to it (raised again as SIGTERM in the same process). If
the preemption service is disabled (``jax_enable_preemption_service=False``), the processes
instead all-gather their signal flags at every check.

Handlers are installed only for the duration of a :class:`StopSignals` block in the main thread
(elsewhere Python cannot install them, and the block stops nothing), and the previous ones are
restored when it ends: notebooks and tests calling the trainer keep their own handlers. In a
notebook, interrupting the kernel therefore stops training with a checkpoint, and the cell ends
with :class:`Stopped`, a ``KeyboardInterrupt``.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading

import jax
import numpy as np

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Exit status of the command line after a polite stop: a preempted job stopped as asked (0); an
# interrupted one exits as the shell reports Ctrl-C (128 + SIGINT).
EXIT_CODES = {"SIGTERM": 0, "SIGINT": 128 + signal.SIGINT}


class Stopped(KeyboardInterrupt):
    """Training stopped on a signal after saving a checkpoint of ``step``.

    A ``KeyboardInterrupt`` so that ``except Exception`` does not swallow it and a notebook cell
    shows it as an interruption.

    Attributes:
      signal_name: "SIGTERM" or "SIGINT".
      step: the step of the checkpoint the run stopped at.
      exit_code: what the command line exits with (0 after SIGTERM, 130 after SIGINT).
    """

    def __init__(self, signal_name: str, step: int):
        self.signal_name, self.step = signal_name, step
        self.exit_code = EXIT_CODES.get(signal_name, 0)
        super().__init__(stop_line(signal_name, step))


def stop_line(signal_name: str, step: int) -> str:
    """The one line a stopped run prints."""
    return (f"stopped by {signal_name} at step {step}: checkpoint saved; rerun the same command "
            "to resume")


class StopSignals:
    """Records SIGTERM and SIGINT while active, and says when all processes should stop.

    Use as a context manager around a training run; call :meth:`should_stop` at the same points,
    in the same order, on every process.

    Args:
      announce: write one line to stderr when a signal arrives (on process 0 only, by default),
        so that a person knows the run is stopping even while a long part of a step finishes.
    """

    def __init__(self, announce: bool | None = None):
        self._announce = announce
        self._previous = {}
        self.mode = "inert"  # inert, local, sync (JAX's preemption sync point) or gather
        self.received = None  # the first signal this process received, by name
        self.signal_name = None  # the signal the run stopped on, once should_stop said True

    # -- installing --------------------------------------------------------------------------

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self  # signal.signal works only there; the run then just cannot be stopped
        if self._announce is None:
            self._announce = jax.process_index() == 0
        if jax.process_count() == 1:
            self.mode = "local"
        else:
            # JAX's notifier holds SIGTERM at the C level unless a Python handler replaced it
            # since (Python then reports that handler instead of SIG_DFL).
            jax_has_sigterm = signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
            self.mode = "sync" if _preemption_sync_manager() and jax_has_sigterm else "gather"
        for signum in SIGNALS:
            if self.mode == "sync" and signum == signal.SIGTERM:
                continue  # JAX's notifier has the C-level handler; a Python one would replace it
            previous = signal.getsignal(signum)
            if previous == signal.SIG_IGN or previous is None:
                continue  # ignored on purpose, or a handler Python cannot put back: leave it
            self._previous[signum] = previous
            signal.signal(signum, self._handle)
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        del frame
        if self.received is not None:
            return  # a repeated SIGTERM while stopping
        name = signal.Signals(signum).name
        self.received = name
        if signal.SIGINT in self._previous:
            # The next Ctrl-C does what it did before this run (default: KeyboardInterrupt).
            signal.signal(signal.SIGINT, self._previous[signal.SIGINT])
        if self.mode == "sync" and signum == signal.SIGINT:
            signal.raise_signal(signal.SIGTERM)  # into JAX's notifier: all processes stop together
        if self._announce:
            hint = (" (Ctrl-C again quits at once, without saving)"
                    if signal.SIGINT in self._previous else "")
            _write_stderr(f"{name} received: stopping after the current step, with a checkpoint"
                          f"{hint}\n")

    # -- checking ----------------------------------------------------------------------------

    def should_stop(self) -> bool:
        """Whether the run should save and stop here; the same answer on every process.

        Call it at every point where a checkpoint of the current step is complete, the same
        number of times on every process (it is a collective step in the multi-process modes).
        """
        global _checks
        if self.signal_name is not None:
            return True
        _checks += 1
        if self.mode == "local":
            stop_on = self.received
        elif self.mode == "sync":
            from jax.experimental import multihost_utils
            # Only SIGTERM reaches JAX's notifier (Ctrl-C is forwarded as SIGTERM); a process that
            # saw no Ctrl-C itself reports the preemption notice.
            reached = multihost_utils.reached_preemption_sync_point(_checks)
            stop_on = (self.received or "SIGTERM") if reached else None
        elif self.mode == "gather":
            from jax.experimental import multihost_utils
            codes = {None: 0, "SIGTERM": 1, "SIGINT": 2}
            flags = multihost_utils.process_allgather(np.int32(codes[self.received]))
            highest = int(np.max(flags))
            stop_on = None if highest == 0 else (
                self.received or next(k for k, v in codes.items() if v == highest))
        else:
            stop_on = None
        self.signal_name = stop_on
        return stop_on is not None

    def stopped(self, step: int) -> Stopped:
        """The exception that ends a run stopped at ``step``."""
        return Stopped(self.signal_name, step)


_ACTIVE: list[StopSignals] = []
# Checks made by this process, over all its runs: JAX's sync point needs increasing numbers.
_checks = 0
_INERT = StopSignals()


def active() -> StopSignals:
    """The innermost active :class:`StopSignals` block, or one that never stops."""
    return _ACTIVE[-1] if _ACTIVE else _INERT


def stop_politely(fn):
    """Runs ``fn`` inside a :class:`StopSignals` block (the trainer's entry point)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with StopSignals():
            return fn(*args, **kwargs)
    return wrapper


def _preemption_sync_manager() -> bool:
    """Whether JAX's distributed runtime runs with its preemption sync manager (jax 0.10:
    started by ``jax.distributed.initialize`` unless ``jax_enable_preemption_service`` is off)."""
    try:
        from jax._src import distributed as jax_distributed
    except ImportError:
        return False
    state = jax_distributed.global_state
    return (getattr(state, "client", None) is not None
            and getattr(state, "preemption_sync_manager", None) is not None)


def _write_stderr(text: str) -> None:
    """Writes from a signal handler: straight to the file descriptor, never through Python's
    buffered stream (the interrupted code may be inside a write to it)."""
    try:
        os.write(sys.stderr.fileno(), text.encode())
    except (AttributeError, OSError, ValueError):
        pass  # no real stderr (some notebooks): the stop line will still say what happened
