"""Orbax checkpoints of the whole training state, with a walk-back over corrupt steps.

A checkpoint holds two items: ``state`` (the TrainState pytree: params, optimiser states, step,
rng and the method's clustering state) and ``meta`` (JSON: config, data position, versions).

Orbax does not validate a step when listing it (ENVIRONMENT.md §c): a truncated or half-deleted
step is still returned by ``latest_step()`` and fails only on restore, and a failed restore can
poison the manager for the other steps. So restore walks back from the newest step, using a fresh
manager for every attempt. Once an older step restores, the newer ones that failed are moved
aside (never deleted) so that later saves are not mixed up with them; if none restores (e.g. a
different model or device topology), nothing is moved and the error says why.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import time
import traceback
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils


class _ReadOnlyNotices(logging.Filter):
    """Drops Orbax's warnings that merely restate that a manager was opened read-only."""
    NOTICES = ("CheckpointManagerOptions.read_only=True", "Given directory is read only")

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.NOTICES)


logging.getLogger("absl").addFilter(_ReadOnlyNotices())


def _is_orbax_restore_debris(unraisable) -> bool:
    """Whether an unraisable exception is the aftermath of a failed Orbax restore.

    When one array of a restore fails, Orbax's event loop closes while TensorStore still completes
    the other reads: their callbacks raise "Event loop is closed", and the abandoned read
    coroutines are reported when collected. Both are printed as tracebacks (dozens), long after the
    failure itself was caught and reported, and say nothing more about it.
    """
    exc, obj = unraisable.exc_value, unraisable.object
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        frames = traceback.extract_tb(unraisable.exc_traceback)
        where = os.path.join("asyncio", "base_events.py")
        return bool(frames) and frames[-1].filename.endswith(where)
    code = getattr(obj, "cr_code", None)  # a coroutine
    return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


def _quiet_restore_debris(previous: Callable) -> Callable:
    def hook(unraisable) -> None:
        if not _is_orbax_restore_debris(unraisable):
            previous(unraisable)
    return hook


sys.unraisablehook = _quiet_restore_debris(sys.unraisablehook)


class CheckpointError(RuntimeError):
    """No checkpoint in a directory could be restored."""


def steps_on_disk(directory: str) -> list[int]:
    """The steps with a folder in ``directory``, oldest first (not validated; nothing created)."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory)
                  if name.isdigit() and os.path.isdir(os.path.join(directory, name)))


class Checkpointer:
    """Saves and restores ``(state, meta)`` pairs in ``directory``.

    Saves are synchronous: the trainer donates the state buffers to the next step, so an
    asynchronous write must not still be reading them.
    """

    def __init__(self, directory: str, keep: int = 2, *, read_only: bool = False,
                 warn: Callable[[str], None] | None = None):
        """Args:
          directory: the checkpoints folder (created unless read_only).
          keep: how many newest steps to keep.
          read_only: never write, delete or move anything (for reading another run's
            checkpoints, which may still be training).
          warn: where warnings about unreadable steps go (default: stderr).
        """
        self.directory = os.path.abspath(directory)
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise CheckpointError(f"{self.directory} is a file, not a checkpoints folder; move it "
                                  "away")
        self.keep = keep
        self.read_only = read_only
        self._warn = warn or (lambda text: print(text, file=sys.stderr, flush=True))
        self._manager = self._new_manager()

    def _new_manager(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=not self.read_only,
                                               read_only=self.read_only,
                                               enable_async_checkpointing=False)
        return ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def steps(self) -> list[int]:
        """The steps present on disk, oldest first (not validated)."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Writes ``state`` and ``meta`` as checkpoint ``step`` (replacing one of the same step)."""
        if self.read_only:
            raise CheckpointError(f"{self.directory} was opened read-only")
        # Orbax refuses zero-size arrays (e.g. SwAV without a queue): they hold nothing, so a
        # one-element stand-in is written and the empty array is rebuilt from the target.
        state = jax.tree.map(lambda x: np.zeros((1,), x.dtype) if _is_empty(x) else x, state)
        saved = self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
        self._manager.wait_until_finished()
        if not saved:
            raise CheckpointError(f"orbax did not save step {step} in {self.directory} (newest "
                                  f"step on disk: {self._manager.latest_step()})")

    def restore_latest(self, target: Any) -> tuple[Any, dict] | None:
        """Restores the newest step that restores cleanly.

        Args:
          target: a pytree with the structure, shapes, dtypes and shardings of the state (real
            arrays or ``jax.ShapeDtypeStruct``); without it orbax returns tuples as lists.

        Returns:
          ``(state, meta)``, or None when the directory holds no checkpoint.

        Raises:
          CheckpointError when checkpoints exist but none of them can be restored.
        """
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct((1,), x.dtype) if _is_empty(x) else _abstract(x), target)
        failed = []
        for step in reversed(self.steps()):
            manager = self._new_manager()
            try:
                restored = manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
            except Exception as err:  # orbax raises ValueError, KeyError, OSError... on bad data
                manager.close()
                failed.append((step, err))
                continue
            manager.close()
            # Said only now: when no step restores, the error below names them all in one line.
            for bad_step, err in failed:
                self._warn(f"WARNING: checkpoint step {bad_step} is corrupt or unreadable "
                           f"({type(err).__name__}: {_first_line(err)[:120]}); using step {step}")
            # An older step restored with the same target, so the newer ones are damaged, not
            # mismatched: move them aside (never delete) so that new saves do not mix with them.
            if jax.process_count() > 1:
                # Every process must resume from the same step, and all must have listed the
                # steps before process 0 moves any aside.
                chosen = int(multihost_utils.broadcast_one_to_all(np.int64(step)))
                if chosen != step:
                    raise CheckpointError(f"process {jax.process_index()} restored step {step} but "
                                          f"process 0 restored step {chosen} from {self.directory}")
                multihost_utils.sync_global_devices("jclust:checkpoint_restored")
            for bad_step, _ in failed:
                if self.read_only or jax.process_index() != 0:
                    continue  # in a multi-host run process 0 moves them
                moved = self._move_aside(bad_step)
                if moved:
                    self._warn(f"WARNING: moved corrupt checkpoint step {bad_step} to {moved}")
            if jax.process_count() > 1:
                multihost_utils.sync_global_devices("jclust:checkpoints_moved_aside")
            self._manager.close()
            self._manager = self._new_manager()
            state = jax.tree.map(_refill_empty, restored["state"], target)
            return state, dict(restored["meta"])
        if failed:
            step, err = failed[0]
            raise CheckpointError(
                f"none of the checkpoints in {self.directory} could be restored (steps "
                f"{[s for s, _ in failed]}); newest error: {type(err).__name__}: {_first_line(err)}. "
                "If the files are damaged, move the workdir away to start over") from err
        return None

    def _move_aside(self, step: int) -> str | None:
        """Moves a step's folder next to the checkpoints folder; returns where (None if absent)."""
        source = os.path.join(self.directory, str(step))
        dest = os.path.join(os.path.dirname(self.directory),
                            f"corrupt_checkpoint_{step}_{int(time.time())}")
        if not os.path.exists(source):
            return None
        shutil.move(source, dest)
        return dest

    def close(self) -> None:
        """Releases the orbax manager."""
        self._manager.close()


def _is_empty(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") and math.prod(x.shape) == 0


def _refill_empty(restored, target):
    """The target's zero-size array in place of its saved stand-in (other leaves unchanged)."""
    if not _is_empty(target):
        return restored
    sharding = getattr(target, "sharding", None)
    empty = np.zeros(target.shape, target.dtype)
    return jax.device_put(empty, sharding) if sharding is not None else jnp.asarray(empty)


def _abstract(x):
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else ""
