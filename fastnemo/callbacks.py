"""A Trainer callback that shows training as a rich progress bar (plain lines in a log) and forwards every
log record."""

from __future__ import annotations

from transformers import TrainerCallback

from fastnemo.progress import Ticker, bar


class RichTrainerCallback(TrainerCallback):
    """Shows Trainer progress as a rich bar, or as plain progress lines where the console is not a terminal
    (fastnemo.progress.Ticker), and forwards every log record to ``on_log_fn``."""

    def __init__(self, description: str, on_log_fn=None):
        self.description = description
        self.on_log_fn = on_log_fn
        self._progress = None
        self._task = None
        self._ticker = None
        self._last = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self._progress = bar()
        self._progress.start()
        self._task = self._progress.add_task(
            self.description, total=state.max_steps, completed=state.global_step, rate="", info=""
        )
        self._ticker = Ticker(self.description, state.max_steps, unit="step", start=state.global_step)

    def _info(self) -> str:
        return ", ".join(f"{k} {self._last[k]:.4g}" for k in ("loss", "reward", "grad_norm")
                         if isinstance(self._last.get(k), (int, float)))

    def on_step_end(self, args, state, control, **kwargs):
        self._progress.update(self._task, completed=state.global_step)
        t = self._progress.tasks[self._task]
        speed = t.speed
        info = self._info()
        self._progress.update(self._task, rate=f"{speed:.2f} step/s" if speed else "", info=info)
        self._ticker.update(state.global_step, info)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self._last = dict(logs or {})
        if self.on_log_fn:
            self.on_log_fn({"step": state.global_step, **self._last})

    def on_train_end(self, args, state, control, **kwargs):
        if self._progress:
            self._progress.stop()
        if self._ticker:
            self._ticker.finish(self._info())


class SyncCheckpoints(TrainerCallback):
    """fsyncs each checkpoint the Trainer has just saved (it does not: after a power loss its files could
    be short while the folder looks complete). ``FASTNEMO_CRASH_AT=checkpoint-N`` kills the process right
    after checkpoint N is written, for the crash tests (``puzzles.files.maybe_crash``)."""

    def on_save(self, args, state, control, **kwargs):
        from pathlib import Path

        from puzzles.files import fsync_tree, maybe_crash

        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if args.should_save and folder.is_dir():
            maybe_crash(folder)
            fsync_tree(folder)
