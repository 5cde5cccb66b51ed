"""Rich progress bars (rate and ETA) for every long loop (kept free of heavy imports: the CLI loads it)."""

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
