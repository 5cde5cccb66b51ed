"""report.to: TRL's report_to for the trainers, and the run's evaluations logged to the same tracker."""

from __future__ import annotations

import pytest

from fastnemo.config import RecipeError, load_recipe
from fastnemo.recipe import preflight, run_recipe
from fastnemo.requires import found


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_report_to_tensorboard_writes_training_and_eval_events(tiny_recipe, tmp_path):
    pytest.importorskip("tensorboard")
    recipe = load_recipe(tiny_recipe(tmp_path, ["data", "sft", "eval"], report={"to": "tensorboard"},
                                     eval={"n_generated": 6, "sampling": {"max_tokens": 2}}))
    run = run_recipe(recipe)
    train = scalars(run.path / "r1-sft" / "tb")
    assert [s for s, _ in train["train/loss"]] == [1, 2]  # logging_steps 1, max_steps 2: TRL's own events
    evals = scalars(run.path / "tb")
    assert evals["eval-sft/eval_accuracy"] == [(1, 0.0)]
    assert {f"eval-sft/acc/{c}" for c in ("cipher", "gravity")} <= set(evals)


def test_report_to_refuses_in_one_line_when_the_tracker_is_missing(tiny_recipe, tmp_path):
    if found("wandb"):
        pytest.skip("wandb is installed here")
    recipe = load_recipe(tiny_recipe(tmp_path, ["data", "sft"], report={"to": "wandb"}))
    with pytest.raises(RecipeError, match=r"^\S+recipe.toml: report.to = 'wandb' needs wandb, which is not "
                                          r"installed \(pip install wandb\); `fastnemo doctor`"):
        preflight(recipe)
    with pytest.raises(RecipeError, match="report.to"):
        load_recipe(tiny_recipe(tmp_path, ["data"], report={"to": "mlflow"}))
