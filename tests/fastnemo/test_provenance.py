"""Which recipe keys and earlier stages each stage depends on (fastnemo.provenance)."""

from __future__ import annotations

import pytest

from fastnemo import provenance
from fastnemo.config import Recipe, build_recipe, to_dict
from fastnemo.recipe import plan_keys

SMOKE = Recipe(stages=["data", "sft", "eval", "distill", "grpo", "eval", "pack"], rounds=2)


def test_stage_config_takes_the_stage_keys_only():
    resolved = to_dict(Recipe())
    sft = provenance.stage_config(resolved, "sft")
    assert sft["sft.max_steps"] == -1 and sft["lora.rank"] == 32 and sft["seed"] == 0
    assert not [k for k in sft if k.startswith(("eval.", "grpo.", "hardware.", "data."))]
    assert "eval.sampling.max_tokens" in provenance.stage_config(resolved, "eval")
    assert "data.shares" in provenance.stage_config(resolved, "data")  # a table-valued key stays one key
    changed = to_dict(build_recipe({"lora": {"rank": 8}}))
    assert provenance.provenance(resolved, "sft")["fingerprint"] != provenance.provenance(changed, "sft")["fingerprint"]
    assert provenance.provenance(resolved, "data") == provenance.provenance(changed, "data")


def test_downstream_follows_what_each_stage_reads():
    plan = plan_keys(SMOKE)
    assert provenance.stage_inputs(plan)["r1-grpo"] == ["r1-distill", "r1-sft"]
    assert provenance.stage_inputs(plan)["r2-data"] == ["r1-distill", "r1-data"]
    assert provenance.downstream(plan, ["r2-eval-sft"]) == ["r2-eval-sft", "pack"]
    assert provenance.downstream(plan, ["r1-eval-grpo"]) == ["r1-eval-grpo", "pack"]
    everything_after = [k for _, _, k in plan][1:]
    assert provenance.downstream(plan, ["r1-sft"]) == everything_after  # all later stages build on it


def test_redo_takes_a_key_or_a_stage_name():
    plan = plan_keys(SMOKE)
    assert provenance.redo_keys(plan, ["r2-grpo"]) == ["r2-grpo", "r2-eval-grpo", "pack"]
    assert provenance.redo_keys(plan, ["grpo"])[0] == "r1-grpo"  # a name: its first key
    assert provenance.redo_keys(plan, []) == []
    with pytest.raises(ValueError, match="--redo r3-sft: no such stage .*r1-data"):
        provenance.redo_keys(plan, ["r3-sft"])


def test_stale_names_the_changed_keys_and_skips_unrecorded_entries():
    plan = plan_keys(Recipe(stages=["data", "sft", "eval", "pack"]))
    before = to_dict(Recipe())
    manifest = {"stages": {"r1-data": {"artifacts": {}, **provenance.provenance(before, "data")},
                           "r1-sft": {"artifacts": {}, **provenance.provenance(before, "sft")},
                           "r1-eval-sft": {"artifacts": {}}}}
    after = to_dict(build_recipe({"sft": {"learning_rate": 1e-4}}))
    changed, unknown = provenance.stale(manifest, after)
    assert changed == {"r1-sft": {"sft.learning_rate": (2e-4, 1e-4)}} and unknown == ["r1-eval-sft"]
    msg = provenance.refusal(plan, changed, "R.toml")
    assert "r1-sft: sft.learning_rate 0.0002 -> 0.0001" in msg and msg.startswith("R.toml: ") and "add `--redo r1-sft` to this command" in msg
    assert "(redoes r1-sft, r1-eval-sft, pack;" in msg

    # a finished stage the plan no longer runs (stages = ["data"] now) is checked too, and can be redone
    data_only = plan_keys(Recipe(stages=["data"]))
    assert provenance.refusal(data_only, changed, "R.toml").count("--redo r1-sft") == 1
    assert provenance.redo_keys(data_only, ["r1-sft"], finished=["r1-data", "r1-sft"]) == ["r1-sft"]
    assert [provenance.stage_of(k) for k in ("r2-eval-grpo", "r0-eval-start", "pack", "r1-sft", "start")] == [
        "eval", "eval", "pack", "sft", "start"]


def test_every_stage_a_recipe_can_name_has_its_keys_and_inputs():
    from fastnemo.config import STAGES
    from fastnemo.provenance import STAGE_KEYS, stage_inputs

    assert set(STAGES) | {"start"} <= set(STAGE_KEYS)
    plan = [(1, s, "pack" if s == "pack" else f"r1-{s}") for s in STAGES]
    inputs = stage_inputs(plan)
    assert inputs["r1-sft"] == ["r1-data", "r1-recall"]  # the recall stage's adapter is what SFT continues
