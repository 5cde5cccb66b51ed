"""Rich progress bars (rate and ETA) for every long loop, and a Trainer callback that drives one."""

from __future__ import annotations

import contextlib

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from transformers import TrainerCallback

console = Console(stderr=True)


def bar(transient: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=transient,
    )


@contextlib.contextmanager
def task(description: str, total: int, unit: str = "it"):
    """``with task("eval", n) as advance: advance(k, info="acc 0.4")`` shows a bar with rate and ETA."""
    with bar() as progress:
        tid = progress.add_task(description, total=total, rate="", info="")

        def advance(k: int = 1, info: str = ""):
            progress.advance(tid, k)
            t = progress.tasks[tid]
            speed = t.finished_speed or t.speed
            progress.update(tid, info=info, rate=f"{speed:.2f} {unit}/s" if speed else "")

        yield advance


class RichTrainerCallback(TrainerCallback):
    """Shows Trainer progress as a rich bar and forwards every log record to ``on_log_fn``."""

    def __init__(self, description: str, on_log_fn=None):
        self.description = description
        self.on_log_fn = on_log_fn
        self._progress = None
        self._task = None
        self._last = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self._progress = bar()
        self._progress.start()
        self._task = self._progress.add_task(
            self.description, total=state.max_steps, completed=state.global_step, rate="", info=""
        )

    def on_step_end(self, args, state, control, **kwargs):
        self._progress.update(self._task, completed=state.global_step)
        t = self._progress.tasks[self._task]
        speed = t.speed
        loss = self._last.get("loss")
        info = f"loss {loss:.4f}" if isinstance(loss, float) else ""
        self._progress.update(self._task, rate=f"{speed:.2f} step/s" if speed else "", info=info)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self._last = dict(logs or {})
        if self.on_log_fn:
            self.on_log_fn({"step": state.global_step, **self._last})

    def on_train_end(self, args, state, control, **kwargs):
        if self._progress:
            self._progress.stop()
