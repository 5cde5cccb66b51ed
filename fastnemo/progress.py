"""Progress for every long loop, readable live and later (kept free of heavy imports: the CLI loads it).

In a terminal: rich bars with rate and ETA. Where stderr is not a terminal (``nohup``, ``> log 2>&1``, tmux
logging) the bars would appear only when a stage ends, so a plain line is printed instead every
``FASTNEMO_PROGRESS_INTERVAL`` seconds (default 30): time, stage, step or item, rate, ETA, and the loss or
accuracy so far. A recipe run also keeps ``run_dir/run.log``: what the console prints, as plain text, plus
those progress lines, whether or not the console is a terminal (``console.tee``). Tables are never cut to
80 columns in a log: a console that is not a terminal is 200 columns wide.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from rich.console import Console
from rich.control import Control
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

LOG_WIDTH = 200


def interval() -> float:
    """Seconds between plain progress lines (FASTNEMO_PROGRESS_INTERVAL)."""
    try:
        return max(0.0, float(os.environ.get("FASTNEMO_PROGRESS_INTERVAL", "30")))
    except ValueError:
        return 30.0


class TeeConsole(Console):
    """A Console that also prints, plain and wide, to a log file while ``tee`` names one. Only ``print`` is
    copied (``rule`` goes through it): live bars redraw through control codes and reach the log
    as Ticker's progress lines."""

    log_file: Console | None = None

    def tee(self, path: str | Path | None) -> None:
        """Append everything printed from now on to ``path`` (None: stop and close it)."""
        if self.log_file is not None:
            self.log_file.file.close()
            self.log_file = None
        if path is not None:
            self.log_file = Console(file=open(path, "a", encoding="utf-8"), width=LOG_WIDTH, color_system=None,  # noqa: SIM115
                                    force_terminal=False, force_jupyter=False, log_path=False)

    def print(self, *objects, **kwargs):
        super().print(*objects, **kwargs)
        if self.log_file is not None and not self.quiet and not any(isinstance(o, Control) for o in objects):
            self.log_file.print(*objects, **kwargs)
            self.log_file.file.flush()


def wide(c: Console) -> Console:
    """``c``, LOG_WIDTH columns wide when it is not a terminal (and COLUMNS does not say otherwise)."""
    if not c.is_terminal and "COLUMNS" not in os.environ:
        c.width = LOG_WIDTH
    return c


console = wide(TeeConsole(stderr=True))


def progress_line(description: str, done: int, total: int | None, rate: float, unit: str, info: str) -> str:
    """``19:02:11 sft: step 40/300 (13 %), 0.52 step/s, eta 8m20s, loss 1.2345``"""
    where = f"{done}/{total} ({100 * done / total:.0f} %)" if total else f"{done}"
    parts = [f"{time.strftime('%H:%M:%S')} {description}: {unit} {where}",
             f"{rate:.3g} {unit}/s" if rate > 0 else f"- {unit}/s"]
    if total and rate > 0:
        parts.append(f"eta {_duration((total - done) / rate)}")
    if info:
        parts.append(info)
    return ", ".join(parts)


def _duration(s: float) -> str:
    s = round(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Ticker:
    """Plain progress lines at a steady interval: to the console when it is not a terminal (where no bar
    shows), and to the run's log file always. The first update prints (the stage has begun and its rate is
    known), then one every ``interval()`` seconds, and ``finish`` prints the last."""

    def __init__(self, description: str, total: int | None, unit: str = "it", start: int = 0):
        self.description, self.total, self.unit = description, total, unit
        self.t0 = time.monotonic()
        self.start = start
        self.last = None
        self.done = start
        self.shown = None  # the count the last line showed

    def restart(self) -> None:
        """The work proper begins now (an engine has started): rate and ETA count from here."""
        self.t0, self.start = time.monotonic(), self.done

    def update(self, done: int, info: str = "", force: bool = False) -> None:
        self.done = done
        now = time.monotonic()
        if not force and self.last is not None and now - self.last < interval():
            return
        self.last, self.shown = now, done
        elapsed = now - self.t0
        rate = (done - self.start) / elapsed if elapsed > 0 else 0.0
        line = progress_line(self.description, done, self.total, rate, self.unit, info)
        if not console.is_terminal:
            console.print(line, markup=False, highlight=False, soft_wrap=True)  # tees to the log file too
        elif console.log_file is not None and not console.quiet:
            console.log_file.print(line, markup=False, highlight=False, soft_wrap=True)
            console.log_file.file.flush()

    def finish(self, info: str = "") -> None:
        if self.shown != self.done:
            self.update(self.done, info, force=True)


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
        disable=not console.is_terminal,  # a log gets Ticker's lines instead of a bar drawn once at the end
    )


@contextlib.contextmanager
def task(description: str, total: int, unit: str = "it"):
    """``with task("eval", n) as advance: advance(k, info="acc 0.4")`` shows a bar with rate and ETA (and
    plain progress lines in a log). ``advance(0, restart=True)`` starts the clock again where a long start-up
    (vLLM's: minutes) would otherwise make the first rate and ETA nonsense."""
    ticker = Ticker(description, total, unit)
    last_info = [""]
    with bar() as progress:
        tid = progress.add_task(description, total=total, rate="", info="")

        def advance(k: int = 1, info: str = "", restart: bool = False):
            if restart:
                ticker.restart()
                progress.reset(tid, completed=progress.tasks[tid].completed)
            progress.advance(tid, k)
            t = progress.tasks[tid]
            speed = t.finished_speed or t.speed
            progress.update(tid, info=info, rate=f"{speed:.2f} {unit}/s" if speed else "")
            last_info[0] = info
            ticker.update(int(t.completed), info)

        yield advance
    ticker.finish(last_info[0])
