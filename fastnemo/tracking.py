"""Experiment trackers from one recipe key, ``report.to``: what TRL's trainers support (tensorboard, wandb,
trackio), passed through to them, plus the run's other metrics (evaluation, trace scores: every metrics
record that is not a trainer step) logged to the same tracker.

TensorBoard events go to ``<stage dir>/tb`` for the trainers (transformers' callback takes its folder from
TENSORBOARD_LOGGING_DIR only) and to ``run_dir/tb`` for the rest: ``tensorboard --logdir RUN_DIR`` shows all
of them. wandb and trackio log into the project ``fastnemo``, run name = the run directory's name (their own
settings, e.g. WANDB_PROJECT / WANDB_MODE, apply). metrics.jsonl stays the record either way.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastnemo.requires import require

TRACKERS = ("tensorboard", "wandb", "trackio")
PROJECT = "fastnemo"


def check(to: str) -> None:
    """One line (MissingPackage) when the tracker's package is not installed."""
    if to in TRACKERS:
        require(to, why=f"report.to = {to!r}")


def trainer_args(to: str, checkpoints_dir: str | Path) -> dict:
    """The TrainingArguments that send a trainer's logs to ``to``."""
    if to == "tensorboard":
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(checkpoints_dir).parent / "tb")
    return {"report_to": to}


class Tracker:
    """Logs the run's non-trainer metrics records to the tracker (trainer steps reach it through TRL)."""

    def __init__(self, to: str, run_dir: Path):
        check(to)
        self.to, self.run_dir, self.step = to, Path(run_dir), 0
        self._writer = None

    def log(self, record: dict) -> None:
        if "step" in record:  # a trainer step: TRL has logged it already
            return
        stage = record.get("stage", "run")
        scalars = {f"{stage.split('-', 1)[-1]}/{k}": float(v) for k, v in record.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("time", "round")}
        if not scalars:
            return
        self.step += 1  # one x-axis for the run's evaluations, in the order they happened
        if self.to == "tensorboard":
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(self.run_dir / "tb"))
            for name, value in scalars.items():
                self._writer.add_scalar(name, value, self.step)
            self._writer.flush()
        elif self.to == "wandb":
            import wandb

            if wandb.run is None:
                wandb.init(project=os.environ.get("WANDB_PROJECT", PROJECT), name=self.run_dir.name,
                           dir=str(self.run_dir))
            wandb.log({**scalars, "evaluation": self.step})
        elif self.to == "trackio":
            import trackio

            trackio.init(project=PROJECT, name=self.run_dir.name, resume="allow")
            trackio.log({**scalars, "evaluation": self.step})

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
