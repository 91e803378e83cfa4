"""Where a run's numbers go: JSON-lines files and TensorBoard event files.

``WORKDIR/metrics.jsonl`` holds one object per evaluation, ``WORKDIR/train_log.jsonl`` one per
progress line (mean step metrics since the previous line), and ``WORKDIR/tensorboard/`` the same
scalars as TensorBoard events (written with tensorboardX: no TensorFlow needed; view them with
``tensorboard --logdir WORKDIR/tensorboard``). On resume every file is cut back to the restored
step, so a killed run never leaves numbers from steps it will redo.
"""

from __future__ import annotations

import json
import math
import os
import numbers

METRICS = "metrics.jsonl"
TRAIN_LOG = "train_log.jsonl"
TENSORBOARD = "tensorboard"


def truncate_jsonl(path: str, step: int) -> list[dict]:
    """Keeps the records of steps <= ``step`` (atomically) and returns them.

    A run killed after a write but before its next checkpoint leaves newer lines behind; a kill in
    the middle of a write leaves a partial line. Both are dropped.
    """
    if not os.path.exists(path):
        return []
    kept = [r for r in read_jsonl(path) if isinstance(r, dict) and r.get("step", 0) <= step]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(tmp, path)
    return kept


def read_jsonl(path: str) -> list[dict]:
    """All complete records of a JSON-lines file ([] if it does not exist)."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def _scalars(record: dict) -> dict:
    return {k: float(v) for k, v in record.items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool) and k not in ("step", "time")
            and math.isfinite(float(v))}


def _read_until(path: str, step: int) -> list[dict]:
    """The records of a JSON-lines file with ``step`` <= ``step`` (the file is left as it is)."""
    return [r for r in read_jsonl(path) if isinstance(r, dict) and r.get("step", 0) <= step]


class RunWriter:
    """Appends evaluation and training records to the workdir's files and TensorBoard events.

    Args:
      workdir: the run's directory.
      resume_step: the restored step (-1 for a fresh run); later records are dropped first.
      tensorboard: also write TensorBoard events.
      write: False on the processes of a multi-host run other than process 0: they read the
        records so far and keep new ones in memory, and never touch the files.
    """

    def __init__(self, workdir: str, resume_step: int, tensorboard: bool = True,
                 write: bool = True):
        self.metrics_path = os.path.join(workdir, METRICS)
        self.train_log_path = os.path.join(workdir, TRAIN_LOG)
        self.write = write
        read = truncate_jsonl if write else _read_until
        self.evals = read(self.metrics_path, resume_step)
        self.train_records = read(self.train_log_path, resume_step)
        self._tb = None
        if tensorboard and write:
            from tensorboardX import SummaryWriter
            # purge_step hides older events of the steps this run will (re)do.
            self._tb = SummaryWriter(os.path.join(workdir, TENSORBOARD),
                                     purge_step=resume_step + 1, flush_secs=30)

    def _append(self, path: str, record: dict) -> None:
        if not self.write:
            return
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def write_eval(self, record: dict) -> None:
        """One evaluation (``step`` plus metrics) to metrics.jsonl and ``eval/*`` scalars."""
        self._append(self.metrics_path, record)
        self.evals.append(record)
        if self._tb is not None:
            for key, value in _scalars(record).items():
                self._tb.add_scalar(f"eval/{key}", value, record["step"])

    def write_train(self, record: dict) -> None:
        """One progress record (``step``, ``phase``, mean losses, rate) to train_log.jsonl and
        ``train/*`` scalars."""
        self._append(self.train_log_path, record)
        self.train_records.append(record)
        if self._tb is not None:
            for key, value in _scalars(record).items():
                self._tb.add_scalar(f"train/{key}", value, record["step"])

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
