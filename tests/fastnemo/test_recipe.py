"""Running a recipe on the tiny model: data -> sft -> eval -> pack, then resuming it (nothing finished re-runs;
an interrupted run continues from its last finished stage with that stage's adapter)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastnemo import recipe as recipe_mod
from fastnemo.config import Recipe, RecipeError, load_recipe
from fastnemo.pack import verify
from fastnemo.recipe import plan_keys, run_recipe
from fastnemo.run import RunDir, RunLocked
from fastnemo.session import ModelSession


def write_recipe(tiny_recipe, folder: Path, stages: list[str], eval: dict | None = None, **keys) -> Path:
    """The tiny recipe of these tests: TINY_ROWS as data.path, a 6-puzzle generated eval of 2 tokens each."""
    eval = {"n_generated": 6, "sampling": {"max_tokens": 2}, **(eval or {})}
    return tiny_recipe(folder, stages, name="test", eval=eval, **keys)


@pytest.fixture()
def entered(monkeypatch) -> list[str]:
    """Stage keys whose stage function was entered (the real functions run)."""
    calls = []
    for stage, fn in list(recipe_mod.STAGE_FUNCS.items()):
        def wrapped(ctx, key, _fn=fn):
            calls.append(key)
            return _fn(ctx, key)

        monkeypatch.setitem(recipe_mod.STAGE_FUNCS, stage, wrapped)
    return calls


def test_plan_keys_name_rounds_and_evals():
    r = Recipe(stages=["data", "sft", "eval", "distill", "grpo", "eval", "pack"], rounds=2)
    keys = [k for _, _, k in plan_keys(r)]
    assert keys == ["r1-data", "r1-sft", "r1-eval-sft", "r1-distill", "r1-grpo", "r1-eval-grpo",
                    "r2-data", "r2-sft", "r2-eval-sft", "r2-distill", "r2-grpo", "r2-eval-grpo", "pack"]
    assert [k for _, _, k in plan_keys(Recipe(stages=["eval", "pack"]))] == ["r1-eval-base", "pack"]
    assert plan_keys(Recipe(stages=["data"]))[-1] == (1, "data", "r1-data")


def test_recipe_runs_then_resumes_without_redoing_anything(tmp_path, tiny_model_dir, tiny_recipe, entered, capsys):
    recipe = load_recipe(write_recipe(tiny_recipe, tmp_path, ["data", "sft", "eval", "pack"]))
    loads = ModelSession.loads
    run = run_recipe(recipe)
    assert entered == ["r1-data", "r1-sft", "r1-eval-sft", "pack"]
    assert ModelSession.loads == loads + 1  # one model for the whole run
    stages = run.manifest()["stages"]
    assert list(stages) == ["r1-data", "r1-sft", "r1-eval-sft", "pack"]
    assert stages["r1-data"]["summary"]["rows"] == len((tmp_path / "sft.jsonl").read_text().splitlines()) == 4
    assert stages["r1-sft"]["summary"]["steps"] == 2
    assert stages["r1-eval-sft"]["summary"]["checkpoint"] == "r1-sft" and stages["r1-eval-sft"]["summary"]["n"] == 6
    assert stages["pack"]["summary"]["checkpoint"] == "r1-sft"
    zip_path = run.artifact("pack", "submission")
    assert verify(zip_path, tiny_model_dir, recipe.model.base_model_name)["rank"] == 4
    metrics = run.read_metrics()
    assert any(m.get("stage") == "r1-sft" and "loss" in m for m in metrics)
    assert any(m.get("stage") == "r1-eval-sft" and "eval_accuracy" in m for m in metrics)
    assert (run.path / "recipe.toml").exists() and (run.path / "config.json").exists()

    # run it again: every stage is skipped, no model is loaded, nothing on disk changes
    manifest = (run.path / "manifest.json").read_bytes()
    adapter = run.artifact("r1-sft", "adapter") / "adapter_model.safetensors"
    mtimes = (adapter.stat().st_mtime_ns, zip_path.stat().st_mtime_ns)
    capsys.readouterr()
    entered.clear()
    run_recipe(load_recipe(recipe.source))
    assert entered == []
    assert ModelSession.loads == loads + 1
    assert (run.path / "manifest.json").read_bytes() == manifest
    assert (adapter.stat().st_mtime_ns, zip_path.stat().st_mtime_ns) == mtimes
    err = capsys.readouterr().err
    for key in ("r1-data", "r1-sft", "r1-eval-sft", "pack"):
        assert f"{key}: finished earlier, skipped" in err

    # interrupted after SFT: eval and pack redo, SFT does not, and the model loads with SFT's adapter
    m = json.loads(manifest)
    del m["stages"]["r1-eval-sft"], m["stages"]["pack"]
    (run.path / "manifest.json").write_text(json.dumps(m))
    (run.path / "r1-eval-sft" / "results.partial.jsonl").write_text("")  # a partial eval from the crash
    run_recipe(load_recipe(recipe.source))
    assert entered == ["r1-eval-sft", "pack"]
    assert ModelSession.loads == loads + 2
    stages = run.manifest()["stages"]
    assert stages["r1-sft"] == json.loads(manifest)["stages"]["r1-sft"]
    assert stages["r1-eval-sft"]["summary"]["checkpoint"] == "r1-sft"


def test_data_only_recipe_never_loads_the_model(tmp_path, tiny_recipe, entered):
    recipe = load_recipe(write_recipe(tiny_recipe, tmp_path, ["data"]))
    loads = ModelSession.loads
    run = run_recipe(recipe)
    run_recipe(recipe)
    assert entered == ["r1-data"] and ModelSession.loads == loads
    assert run.artifact("r1-data", "sft").read_text() == (tmp_path / "sft.jsonl").read_text()


def test_changed_artifact_stops_the_resume(tmp_path, tiny_recipe, entered):
    recipe = load_recipe(write_recipe(tiny_recipe, tmp_path, ["data"]))
    run = run_recipe(recipe)
    with open(run.artifact("r1-data", "sft"), "a") as f:
        f.write("{}\n")
    with pytest.raises(RuntimeError, match="changed"):
        run_recipe(recipe)


def test_locked_run_refuses(tmp_path, tiny_recipe, entered):
    recipe = load_recipe(write_recipe(tiny_recipe, tmp_path, ["data"]))
    holder = RunDir(tmp_path / "run").lock()
    try:
        with pytest.raises(RunLocked):
            run_recipe(recipe)
    finally:
        holder.unlock()
    assert entered == []


def test_ledger_best_prefers_the_earlier_checkpoint_on_a_tie(tmp_path):
    from fastnemo import ledger

    run = RunDir(tmp_path)
    scores = [("r1-eval-sft", "r1-sft", 0.5), ("r1-eval-grpo", "r1-grpo", 0.5), ("r2-eval-sft", "r2-sft", 0.4)]
    for key, ckpt, acc in scores:
        f = run.stage_dir(key) / "results.jsonl"
        f.write_text("")
        run.finish(key, {"results": f}, {"checkpoint": ckpt, "accuracy": acc,
                                          "per_category": {"cipher": {"accuracy": acc}}})
    assert [e["stage"] for e in ledger.entries(run)] == [k for k, _, _ in scores]
    assert ledger.best(run)["checkpoint"] == "r1-sft"  # same score, less training
    f = run.stage_dir("r2-eval-grpo") / "results.jsonl"
    f.write_text("")
    run.finish("r2-eval-grpo", {"results": f}, {"checkpoint": "r2-grpo", "accuracy": 0.6, "per_category": {}})
    assert ledger.best(run)["checkpoint"] == "r2-grpo"


def test_a_plateau_stops_the_rounds_and_still_packs(tmp_path, tiny_recipe):
    path = write_recipe(tiny_recipe, tmp_path, ["data", "sft", "eval", "pack"], rounds=4, until_plateau=1)
    run = run_recipe(load_recipe(path))
    stages = list(run.manifest()["stages"])
    # round 2 scored no better than round 1 (a random model scores 0 everywhere): stop there, then pack
    assert stages == ["r1-data", "r1-sft", "r1-eval-sft", "r2-data", "r2-sft", "r2-eval-sft", "pack"]
    assert run.manifest()["stages"]["pack"]["summary"]["checkpoint"] == "r1-sft"
    assert (run.path / "pack" / "submission.zip").exists()


def test_an_adapter_saved_just_before_a_crash_does_not_block_the_resume(tmp_path, tiny_recipe):
    path = write_recipe(tiny_recipe, tmp_path, ["data", "sft"])
    run = run_recipe(load_recipe(path))
    # the crash came after the adapter was written but before the manifest entry
    manifest = run.manifest()
    del manifest["stages"]["r1-sft"]
    (run.path / "manifest.json").write_text(json.dumps(manifest))
    assert (run.path / "r1-sft" / "adapter" / "adapter_config.json").exists()
    run = run_recipe(load_recipe(path))
    assert "r1-sft" in run.manifest()["stages"]
    assert run.done("r1-sft")


def test_start_from_a_run_scores_its_best_adapter_and_can_ship_it(tmp_path, tiny_recipe):
    run1 = run_recipe(load_recipe(write_recipe(tiny_recipe, tmp_path / "first", ["data", "sft"])))
    path = write_recipe(tiny_recipe, tmp_path / "second", ["eval", "pack"], start_from=str(run1.path))
    recipe = load_recipe(path)
    assert [k for _, _, k in plan_keys(recipe)] == ["start", "r0-eval-start", "pack"]
    run2 = run_recipe(recipe)
    stages = run2.manifest()["stages"]
    assert stages["start"]["artifacts"]["adapter"]["sha256"] == run1.manifest()["stages"]["r1-sft"]["artifacts"]["adapter"]["sha256"]
    assert stages["r0-eval-start"]["summary"]["checkpoint"] == "start"
    assert stages["pack"]["summary"]["checkpoint"] == "start"


def test_eval_scores_a_held_out_trace_set_under_each_checkpoint(tmp_path, tiny_recipe):
    """eval.trace_set: teacher-forced scores of real solver traces under the base model, then under the SFT
    adapter (trained on other rows), logged per category to metrics.jsonl and kept as an artifact."""
    import random

    from puzzles import categories
    from puzzles.analyze import solve_traced

    traces, seed = [], 0
    while len(traces) < 6:
        _, row = solve_traced(categories.generate(["numeral_system", "cipher", "gravity"][len(traces) % 3],
                                                  random.Random(seed)))
        seed += 1
        traces += [row] if row else []
    (tmp_path / "held_out.jsonl").write_text("".join(json.dumps(r) + "\n" for r in traces))
    path = write_recipe(tiny_recipe, tmp_path, ["eval", "data", "sft", "eval"],
                        eval={"trace_set": "held_out.jsonl", "trace_limit": 4, "trace_batch_size": 3})
    run = run_recipe(load_recipe(path))
    logged = {m["stage"]: m for m in run.read_metrics() if "trace/all/mean_logp" in m}
    assert set(logged) == {"r1-eval-base", "r1-eval-sft"}
    for key, m in logged.items():
        assert m["trace/all/rows"] == 4 and m["trace/numeral_system/rows"] == 2  # stratified: 2 + 1 + 1
        assert m["trace/all/min_logp"] <= m["trace/all/mean_logp"] < 0
        assert 0 < m["trace/all/share_below_ln2"] <= 1  # a random model: most tokens are unlikely
        summary = run.manifest()["stages"][key]["summary"]["traces"]
        assert summary["all"]["mean_logp"] == m["trace/all/mean_logp"]
        scores = json.loads(run.artifact(key, "trace_scores").read_text())
        assert scores["all"]["weakest_lines"] and scores["all"]["rows"] == 4
    # the SFT adapter moved the model: the same traces score differently under it
    assert logged["r1-eval-base"]["trace/all/mean_logp"] != logged["r1-eval-sft"]["trace/all/mean_logp"]


def test_the_same_recipe_twice_gives_the_same_bytes(tmp_path, tiny_recipe):
    """Same inputs, same bytes: two runs of one recipe (fixed seed) in two run directories make an adapter,
    config and submission.zip with equal hashes, so a hash can prove two runs made the same submission
    (target_modules used to come in a set's order, and the zip stamped the packing time)."""
    import hashlib
    import time

    def build(folder: Path) -> dict[str, str]:
        run = run_recipe(load_recipe(write_recipe(tiny_recipe, folder, ["data", "sft", "pack"],
                                                  sft={"max_steps": 2})))
        adapter = run.artifact("r1-sft", "adapter")
        files = [adapter / "adapter_model.safetensors", adapter / "adapter_config.json",
                 run.path / "pack" / "submission.zip"]
        return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}

    first = build(tmp_path / "a")
    time.sleep(2.1)  # past the zip format's 2-second timestamp resolution
    assert build(tmp_path / "b") == first


# ------------------------------------------------------------------------------------- provenance


def test_a_finished_stage_with_other_keys_is_refused_before_anything_runs_then_redone(tmp_path, tiny_recipe,
                                                                                     entered):
    path = write_recipe(tiny_recipe, tmp_path, ["data", "sft", "eval", "pack"])
    run = run_recipe(load_recipe(path))
    config = (run.path / "config.json").read_bytes()
    assert run.manifest()["stages"]["r1-sft"]["config"]["lora.rank"] == 4
    entered.clear()

    with pytest.raises(RecipeError) as refused:
        run_recipe(load_recipe(path, ["lora.rank=8", "sft.max_steps=3", "seed=7"]))
    msg = str(refused.value)
    assert "\n" not in msg and "r1-sft: " in msg and "lora.rank 4 -> 8" in msg and "sft.max_steps 2 -> 3" in msg
    assert "--redo r1-data" in msg  # seed changed the data stage too: the root of what must be redone
    assert entered == [] and (run.path / "config.json").read_bytes() == config  # nothing ran, nothing rewritten

    # an eval key: only the evaluation and what reads it (pack) are named and redone
    evals = load_recipe(path, ["eval.sampling.max_tokens=3"])
    with pytest.raises(RecipeError, match=r"`--redo r1-eval-sft` to this command \(redoes r1-eval-sft, pack;"):
        run_recipe(evals)
    old_results = (run.path / "r1-eval-sft" / "results.jsonl").read_bytes()
    run_recipe(evals, redo=("eval",))
    assert entered == ["r1-eval-sft", "pack"]
    stages = run.manifest()["stages"]
    assert stages["r1-eval-sft"]["config"]["eval.sampling.max_tokens"] == 3
    assert json.loads((run.path / "config.json").read_text())["eval"]["sampling"]["max_tokens"] == 3
    aside = next(run.path.glob("redone-*"))
    assert (aside / "r1-eval-sft" / "results.jsonl").read_bytes() == old_results  # kept, not overwritten
    assert set(json.loads((aside / "manifest.json").read_text())["stages"]) == {"r1-eval-sft", "pack"}
    assert sum("eval_accuracy" in m for m in run.read_metrics() if m.get("stage") == "r1-eval-sft") == 1

    # --redo sft: SFT with the new rank, then everything after it; the adapter is what config.json says
    entered.clear()
    run = run_recipe(load_recipe(path, ["eval.sampling.max_tokens=3", "lora.rank=8"]), redo=("r1-sft",))
    assert entered == ["r1-sft", "r1-eval-sft", "pack"]
    adapter = json.loads((run.artifact("r1-sft", "adapter") / "adapter_config.json").read_text())
    assert adapter["r"] == json.loads((run.path / "config.json").read_text())["lora"]["rank"] == 8

    with pytest.raises(RecipeError, match="--redo nosuch: no such stage"):
        run_recipe(load_recipe(path), redo=("nosuch",))


def test_a_changed_key_of_an_unfinished_stage_is_used_and_its_partial_work_set_aside(tmp_path, tiny_recipe,
                                                                                    entered, capsys):
    path = write_recipe(tiny_recipe, tmp_path, ["data", "sft"], sft={"save_steps": 1})
    run = run_recipe(load_recipe(path))
    manifest = run.manifest()
    del manifest["stages"]["r1-sft"]  # killed before SFT's entry: its checkpoints are on disk
    (run.path / "manifest.json").write_text(json.dumps(manifest))
    entered.clear()
    capsys.readouterr()
    run_recipe(load_recipe(path, ["sft.learning_rate=2e-3"]))
    assert "r1-sft: its unfinished earlier try ran with other keys" in capsys.readouterr().err.replace("\n", " ")
    assert entered == ["r1-sft"]
    sft = run.manifest()["stages"]["r1-sft"]
    assert sft["config"]["sft.learning_rate"] == 2e-3 and sft["summary"]["steps"] == 2
    losses = [m["step"] for m in run.read_metrics() if m.get("stage") == "r1-sft" and "loss" in m]
    assert losses == [1, 2]  # trained afresh, logged once (the old try's records moved aside with it)
    assert (next(run.path.glob("redone-*")) / "r1-sft" / "checkpoints" / "checkpoint-2").is_dir()


def test_a_bad_data_path_fixed_is_simply_used(tmp_path, tiny_recipe, entered):
    path = write_recipe(tiny_recipe, tmp_path, ["data"], data={"path": "missing.jsonl"})
    with pytest.raises(RecipeError, match="does not exist"):
        run_recipe(load_recipe(path))
    run = run_recipe(load_recipe(path, ['data.path="sft.jsonl"']))
    assert run.manifest()["stages"]["r1-data"]["config"]["data.path"] == "sft.jsonl"


def test_a_run_dir_without_fingerprints_still_resumes(tmp_path, tiny_recipe, entered, capsys):
    path = write_recipe(tiny_recipe, tmp_path, ["data"])
    run = run_recipe(load_recipe(path))
    manifest = run.manifest()
    for entry in manifest["stages"].values():  # as an older fastnemo wrote it
        del entry["fingerprint"], entry["config"]
    (run.path / "manifest.json").write_text(json.dumps(manifest))
    entered.clear()
    capsys.readouterr()
    run_recipe(load_recipe(path, ["data.n=7"]))
    assert entered == []
    err = capsys.readouterr().err.replace("\n", " ")
    assert err.count("without a record of their recipe keys") == 1 and "r1-data" in err
