"""Training curves: losses, agreement with the labels and cluster health over the steps."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from jclust.viz.common import _save

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from jclust.viz.common import StrPath

# Keys of a training log line that are bookkeeping, not losses.
_NOT_LOSSES = frozenset({"step", "time", "grad_norm", "steps_per_s", "epoch", "batch_in_epoch",
                         "lr", "learning_rate"})
_QUALITY_KEYS = (("acc", "ACC"), ("nmi", "NMI"), ("ari", "ARI"))
_HEALTH_KEYS = (("size_entropy", "cluster-size entropy (normalised)"),
                ("nmi_previous", "NMI with previous assignment"))

# One panel: (y label, [(curve label, steps, values)], whether the values are bounded to [0, 1]).
Panel = tuple[str, list[tuple[str, np.ndarray, np.ndarray]], bool]


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            and math.isfinite(float(value)))


def _phase_changes(records: Sequence[dict]) -> list[tuple[float, str]]:
    """(step, new phase) wherever the "phase" key changes between records sorted by step.

    The line goes at the last step of the old phase: the trainer logs and evaluates at every phase
    end, so that is where the new phase starts.
    """
    steps = [(r["step"], r["phase"]) for r in records
             if _is_number(r.get("step")) and isinstance(r.get("phase"), str)]
    steps.sort(key=lambda t: t[0])
    return [(steps[i - 1][0], steps[i][1]) for i in range(1, len(steps))
            if steps[i][1] != steps[i - 1][1]]


def _first_phase(records: Sequence[dict]) -> tuple[float, str] | None:
    """(first step, its phase) of the records carrying a phase, or None."""
    steps = [(r["step"], r["phase"]) for r in records
             if _is_number(r.get("step")) and isinstance(r.get("phase"), str)]
    return min(steps, key=lambda t: t[0]) if steps else None


def _series(records: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the records holding a finite number under ``key``, sorted by step."""
    pts = sorted((float(r["step"]), float(r[key])) for r in records
                 if _is_number(r.get(key)) and _is_number(r.get("step")))
    if not pts:
        return np.zeros(0), np.zeros(0)
    arr = np.asarray(pts)
    return arr[:, 0], arr[:, 1]


def _panels(eval_records: list[dict], train_records: list[dict]) -> list[Panel]:
    """The panels that have data, in order: training losses, agreement with labels, health."""
    # "loss" (the total) first, then the parts alphabetically.
    loss_keys = sorted({k for r in train_records for k, v in r.items()
                        if k not in _NOT_LOSSES and _is_number(v)},
                       key=lambda k: (k != "loss", k))
    panels = []
    losses = [(k, *_series(train_records, k)) for k in loss_keys]
    if any(s.size for _, s, _ in losses):
        panels.append(("training loss", losses, False))
    quality = [(name, *_series(eval_records, k)) for k, name in _QUALITY_KEYS]
    if any(s.size for _, s, _ in quality):
        panels.append(("agreement with labels", quality, True))
    health = [(name, *_series(eval_records, k)) for k, name in _HEALTH_KEYS]
    if any(s.size for _, s, _ in health):
        panels.append(("cluster health", health, True))
    return panels


def _draw_panel(ax: Axes, panel: Panel, changes: list[tuple[float, str]]) -> None:
    """One panel's curves (log scale for positive losses), grid, phase-change lines and legend."""
    ylabel, curves, bounded = panel
    values = [v for _, s, v in curves if s.size]
    for name, steps, vals in curves:
        if steps.size:
            ax.plot(steps, vals, label=name, linewidth=1.4,
                    marker="o" if steps.size <= 30 else None, markersize=3)
    if bounded:
        ax.set_ylim(-0.02, 1.02)
    elif all(np.all(v > 0) for v in values):
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    for step, _ in changes:
        ax.axvline(step, color="0.35", linestyle=":", linewidth=1.2)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)


def _name_phases(ax: Axes, starts: list[tuple[float, str]]) -> None:
    """Phase names as ticks on a top axis: above the curves, and laid out by the layout engine."""
    top = ax.secondary_xaxis("top")
    top.set_xticks([s for s, _ in starts], [f"▸ {p}" for _, p in starts])
    top.tick_params(length=0, labelsize=8, labelcolor="0.25", pad=2)
    for label in top.get_xticklabels():
        label.set_horizontalalignment("left")


def _no_data(path: StrPath, title: str) -> None:
    """A small figure saying "no data yet"."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6, 2.5))
    fig.text(0.5, 0.5, "no data yet", ha="center", va="center", fontsize=14, color="0.4")
    if title:
        fig.suptitle(title)
    _save(fig, path)


def training_curves(eval_records: Sequence[dict], train_records: Sequence[dict], path: StrPath,
                    *, title: str = "") -> None:
    """Stacked panels over training steps: losses, ACC/NMI/ARI, cluster health.

    Args:
      eval_records: one dict per evaluation (``metrics.jsonl`` lines): "step", optional "phase",
        "acc", "nmi", "ari", "size_entropy", "nmi_previous"; other keys are ignored.
      train_records: one dict per training log line: "step", "phase" and loss values. Every
        numeric key except step/time/grad_norm (and epoch/learning-rate bookkeeping) is a curve.
      path: where to write the PNG.
      title: figure title.

    Panels without data are left out (e.g. ACC/NMI/ARI on unlabelled data); with no data at all
    the figure says "no data yet". Dotted vertical lines mark phase changes.
    """
    from matplotlib.figure import Figure
    eval_records = list(eval_records or [])
    train_records = list(train_records or [])
    panels = _panels(eval_records, train_records)
    if not panels:
        _no_data(path, title)
        return

    fig = Figure(figsize=(9.5, 1.2 + 2.5 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    changes = _phase_changes(train_records + eval_records)
    # Evaluations often cover only the last phase (e.g. DEC's clustering after a long
    # pretraining): their panels get their own step axis spanning the evaluations, so that
    # their curves are not squeezed into a sliver at the right edge.
    eval_axes = [ax for ax, (ylabel, _, _) in zip(axes, panels) if ylabel != "training loss"]
    eval_steps = np.array([r["step"] for r in eval_records if _is_number(r.get("step"))], float)
    for ax in eval_axes[1:]:
        ax.sharex(eval_axes[0])
    if eval_axes and eval_steps.size:
        lo, hi = eval_steps.min(), eval_steps.max()
        pad = max((hi - lo) * 0.03, 1.0)
        eval_axes[0].set_xlim(lo - pad, hi + pad)
    for ax, panel in zip(axes, panels):
        _draw_panel(ax, panel, changes)
    first = _first_phase(train_records + eval_records)
    starts = ([first] if first else []) + changes
    if starts:
        _name_phases(axes[0], starts)
    for ax in axes:
        if ax is axes[-1] or ax not in eval_axes:
            ax.set_xlabel("step" if ax not in eval_axes or not eval_steps.size else
                          f"step (evaluations: steps {int(eval_steps.min()):,}–"
                          f"{int(eval_steps.max()):,})")
    for ax in eval_axes[:-1]:
        ax.tick_params(labelbottom=False)
    if title:
        fig.suptitle(title)
    _save(fig, path)
