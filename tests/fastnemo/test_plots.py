"""training.png: stages follow one another on the x-axis instead of drawing over each other."""

from __future__ import annotations

from fastnemo.plots import stage_series, training_curves
from fastnemo.run import RunDir


def test_round_two_follows_round_one_on_the_x_axis(tmp_path):
    run = RunDir(tmp_path)
    for stage in ("r1-sft", "r1-grpo", "r2-sft"):
        for step in (1, 2, 3):
            run.log({"stage": stage, "step": step, "loss": 1.0 / step, **({"reward": 0.5} if "grpo" in stage else {})})
    run.log({"stage": "r1-eval-sft", "eval_accuracy": 0.3})  # no step: not a curve
    series = stage_series(run.read_metrics())
    assert [x for x, _ in series["loss"]["r1-sft"]] == [1, 2, 3]
    assert [x for x, _ in series["loss"]["r1-grpo"]] == [4, 5, 6]
    assert [x for x, _ in series["loss"]["r2-sft"]] == [7, 8, 9]
    assert [x for x, _ in series["reward"]["r1-grpo"]] == [4, 5, 6]
    png = training_curves(run, tmp_path / "training.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
