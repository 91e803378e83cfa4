"""What a running training reports: its step metrics, fetched from the devices in batches and
checked for NaN and infinity, and the durations in its progress lines."""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import numpy as np


class NonFiniteLossError(FloatingPointError):
    """The loss (or the parameters) became NaN or infinite; training stopped."""


class StepMetrics:
    """Step metrics kept on the devices until a log line, a checkpoint or a clustering step needs
    them, then fetched together and checked: a NaN or infinite value stops the run, naming the
    step and what is left to resume from."""

    def __init__(self, phase_of: Callable[[int], str], kept: Callable[[], str]):
        self.phase_of, self.kept = phase_of, kept
        self._pending: list[tuple[int, dict]] = []  # (step, metrics on the devices)
        self._fetched: list[dict] = []  # fetched since the last log line

    def add(self, step: int, metrics: dict) -> None:
        self._pending.append((step, metrics))

    def flush(self) -> None:
        """Fetches the pending metrics; raises NonFiniteLossError if one is NaN or infinite."""
        if not self._pending:
            return
        values = jax.device_get([m for _, m in self._pending])
        steps = [s for s, _ in self._pending]
        self._pending.clear()
        for s, m in zip(steps, values):
            for key, value in m.items():
                if not np.all(np.isfinite(value)):
                    raise NonFiniteLossError(f"{key} became {float(value)} at step {s + 1} (phase "
                                             f"{self.phase_of(s)}); stopped. " + self.kept())
        self._fetched.extend(values)

    def means(self) -> dict:
        """The mean of each metric since the last call."""
        self.flush()
        fetched, self._fetched = self._fetched, []
        if not fetched:
            return {}
        return {k: float(np.mean([m[k] for m in fetched if k in m])) for k in fetched[-1]}


# A step metric whose name starts with this is a warning (``methods.Method.warnings``).
WARNING_PREFIX = "warn_"


def new_warnings(means: dict, texts: Mapping[str, str], printed: frozenset[str]
                 ) -> tuple[list[str], frozenset[str]]:
    """(the lines to print, the warnings printed so far): one line for each warning metric whose
    mean is > 0 and that was not printed yet, with the method's text for it."""
    raised = [name for name in sorted(means)
              if name.startswith(WARNING_PREFIX) and means[name] > 0 and name not in printed]
    lines = [texts.get(name, f"{name}={means[name]:.3g}") for name in raised]
    return lines, printed | frozenset(raised)


def format_duration(seconds: float) -> str:
    """``1h02m03s``, or ``2m03s`` under an hour."""
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def progress_line(phase: str, step: int, total_steps: int, means: dict, rate: float,
                  overall_rate: float, batch_size: int) -> str:
    """A training log line: the phase, the step, the metric means since the last line, the recent
    rate (steps/s) and an upper bound of the time left at the overall rate."""
    eta = (total_steps - step) / max(overall_rate, 1e-9)
    return (f"[{phase}] step {step}/{total_steps} "
            + " ".join(f"{k}={v:.5g}" for k, v in means.items())
            + f" | {rate:.1f} steps/s, {rate * batch_size:.0f} ex/s, ETA <= {format_duration(eta)}")
