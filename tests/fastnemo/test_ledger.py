"""The checkpoint ledger: the best-scoring checkpoint of all stages is the one shipped, not the latest."""

from __future__ import annotations

import zipfile

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file

from fastnemo import ledger
from fastnemo.config import ModelConfig, Recipe
from fastnemo.recipe import Context, plateaued, stage_pack
from fastnemo.run import RunDir


def _eval_summary(checkpoint: str, accuracy: float) -> dict:
    return {"checkpoint": checkpoint, "accuracy": accuracy, "n": 10,
            "per_category": {"cipher": {"accuracy": accuracy, "correct": int(accuracy * 10), "n": 10}}}


def plant_run(tmp_path, tiny_session, scores: dict[str, float]) -> RunDir:
    """A run whose training stages saved real (distinct) adapters and whose evals scored them as given."""
    run = RunDir(tmp_path / "run")
    for i, (train_key, acc) in enumerate(scores.items()):
        with torch.no_grad():
            for name, p in tiny_session.model.named_parameters():
                if "lora_B" in name:
                    p.fill_(0.01 * (i + 1))  # each checkpoint distinguishable by its B weights
        adapter = tiny_session.save_adapter(run.path / train_key / "adapter")
        run.finish(train_key, {"adapter": adapter}, {})
        rnd = train_key.split("-")[0]
        run.finish(f"{rnd}-eval-{train_key.split('-')[1]}", {}, _eval_summary(train_key, acc))
    return run


def test_best_prefers_higher_score_and_earlier_on_ties(tmp_path, tiny_session):
    run = plant_run(tmp_path, tiny_session, {"r1-sft": 0.6, "r2-sft": 0.6, "r3-sft": 0.4})
    assert ledger.best(run)["checkpoint"] == "r1-sft"
    assert [e["checkpoint"] for e in ledger.entries(run)] == ["r1-sft", "r2-sft", "r3-sft"]


def test_pack_ships_a_better_earlier_checkpoint_not_the_latest(tmp_path, tiny_session, tiny_model_dir):
    run = plant_run(tmp_path, tiny_session, {"r1-sft": 0.9, "r2-sft": 0.2})
    recipe = Recipe(stages=["pack"], model=ModelConfig(path=str(tiny_model_dir)))
    ctx = Context(recipe=recipe, run=run, adapter_key="r2-sft")
    artifacts, summary = stage_pack(ctx, "pack")
    assert summary["checkpoint"] == "r1-sft"
    shipped = load_safetensors(zipped_weights(artifacts["submission"]))
    best = load_file(run.path / "r1-sft" / "adapter" / "adapter_model.safetensors")
    latest = load_file(run.path / "r2-sft" / "adapter" / "adapter_model.safetensors")
    key = next(k for k in shipped if "lora_B" in k and ".backbone." in k)
    source = key.replace(".backbone.", ".model.", 1)  # pack writes vLLM's names (fastnemo.pack)
    assert torch.equal(shipped[key], best[source])
    assert not torch.equal(shipped[key], latest[source])


def test_ledger_plot_and_table_are_written(tmp_path, tiny_session):
    run = plant_run(tmp_path, tiny_session, {"r1-sft": 0.3, "r2-sft": 0.5})
    png = ledger.plot(run, run.path / "leaderboard.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ledger.table(run).row_count == 2


def test_plateau_stops_after_n_rounds_without_improvement(tmp_path):
    run = RunDir(tmp_path / "run")
    recipe = Recipe(rounds=5, until_plateau=2)
    for rnd, acc in ((1, 0.5), (2, 0.7), (3, 0.6), (4, 0.65)):
        run.finish(f"r{rnd}-eval-sft", {}, _eval_summary(f"r{rnd}-sft", acc))
        if rnd == 2:
            assert not plateaued(run, recipe, 2)
        if rnd == 3:
            assert not plateaued(run, recipe, 3)  # only one round without improvement so far
    assert plateaued(run, recipe, 4)  # rounds 3 and 4 both below round 2's 0.7


def test_pack_ships_the_zip_the_harness_validated_for_the_best_checkpoint(tmp_path, tiny_session, tiny_model_dir):
    """The eval stage's harness zip of the best checkpoint is copied, not packed again (same bytes as a
    fresh pack); a zip of another checkpoint, or of an adapter changed since, is not reused."""
    from fastnemo.harness import served_adapter
    from fastnemo.pack import pack

    run = plant_run(tmp_path, tiny_session, {"r1-sft": 0.9, "r2-sft": 0.2})
    for k in ("r1", "r2"):
        _, pack_it = served_adapter(run.artifact(f"{k}-sft", "adapter"), tiny_model_dir, run.path / f"{k}-eval-sft")
        pack_it()
    ctx = Context(recipe=Recipe(stages=["pack"], model=ModelConfig(path=str(tiny_model_dir))), run=run,
                  adapter_key="r2-sft")
    artifacts, summary = stage_pack(ctx, "pack")
    assert summary["packed_by"] == "copied from r1-eval-sft/harness-submission.zip"
    fresh = pack(run.artifact("r1-sft", "adapter"), tmp_path / "fresh.zip")
    assert artifacts["submission"].read_bytes() == fresh.read_bytes()

    from safetensors.torch import save_file

    weights = run.artifact("r1-sft", "adapter") / "adapter_model.safetensors"
    tensors = load_file(weights)
    shipped_key = next(k for k in load_safetensors(zipped_weights(fresh)) if "lora_B" in k and ".backbone." in k)
    key = shipped_key.replace(".backbone.", ".model.", 1)  # pack writes vLLM's names (fastnemo.pack)
    tensors[key] = tensors[key] + 1  # the checkpoint changed after its eval: its harness zip is stale
    save_file(tensors, str(weights), metadata={"format": "pt"})
    artifacts, summary = stage_pack(ctx, "pack")  # stage_dir clears the unfinished stage's folder
    assert summary["packed_by"] == "fastnemo pack"
    assert torch.equal(load_safetensors(zipped_weights(artifacts["submission"]))[shipped_key], tensors[key])


def zipped_weights(zip_path) -> bytes:
    with zipfile.ZipFile(zip_path) as zf:
        return zf.read("adapter_model.safetensors")
