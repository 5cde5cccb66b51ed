"""Plots a person would rather look at than read: training curves from a run's metrics.jsonl."""

from __future__ import annotations

import collections
import io
from pathlib import Path

from puzzles.files import write_atomic

CURVES = ("loss", "reward", "learning_rate", "grad_norm")


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on servers and CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, out: Path) -> Path:
    """Write ``fig`` to ``out`` atomically and free it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    pyplot().close(fig)
    return write_atomic(out, buf.getvalue())


def stage_series(records: list[dict]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """{curve: {stage: [(x, y)]}} on one continuous x-axis: each stage's steps start where the stage before
    it (in the order they ran) ended, so round 2's SFT follows round 1's instead of drawing over it."""
    steps = collections.defaultdict(int)  # stage -> its last step, in the order stages first appear
    for rec in records:
        if isinstance(rec.get("step"), (int, float)):
            stage = rec.get("stage", "?")
            steps[stage] = max(steps[stage], rec["step"])
    offset, start = 0, {}
    for stage, last in steps.items():
        start[stage], offset = offset, offset + last
    series = collections.defaultdict(lambda: collections.defaultdict(list))
    for rec in records:
        for name in CURVES:
            if isinstance(rec.get(name), (int, float)) and "step" in rec:
                stage = rec.get("stage", "?")
                series[name][stage].append((start[stage] + rec["step"], rec[name]))
    return series


def training_curves(run, out: Path) -> Path | None:
    """One panel per logged quantity (loss, reward, ...), one line per stage, the stages one after another
    on the x-axis (the steps of all training stages in the order they ran)."""
    series = stage_series(run.read_metrics())
    if not series:
        return None
    plt = pyplot()
    names = [n for n in CURVES if n in series]
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        for stage, points in series[name].items():
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker=".", label=stage)
        ax.set_title(name)
        ax.set_xlabel("training step, stages in the order they ran")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_png(fig, out)
