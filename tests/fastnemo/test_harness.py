"""fastnemo.harness on the CPU: which runner a stage takes and why, the memory share on an 80 GB card, the
one-line reason of a failed child, the preflight refusal without vllm, and the trainer's release and lazy
reload (the swap the harness runs between training stages). The harness child itself runs on real vLLM in
the vLLM lane: tests/fastnemo/test_harness_vllm.py."""

from __future__ import annotations

import dataclasses
import gc
import weakref

import pytest
import torch
from safetensors.torch import load_file

from fastnemo import harness, plan
from fastnemo.config import RecipeError, build_recipe, load_recipe
from fastnemo.recipe import Context, preflight, stage_data, stage_sft
from fastnemo.run import RunDir
from fastnemo.session import ModelSession


def test_auto_takes_the_engine_here_and_says_why():
    r = build_recipe({"stages": ["sft", "eval", "distill"]})
    for stage in ("eval", "distill"):
        runner, why = harness.choose(r, stage)
        assert runner == "engine"  # this machine has no CUDA device (and the main venv no vllm)
        assert "vllm is not installed" in why or "no CUDA" in why
    assert harness.choose(build_recipe({"eval": {"runner": "harness"}}), "eval") == ("harness", "eval.runner = 'harness'")
    assert harness.choose(build_recipe({"distill": {"runner": "engine"}}), "distill")[0] == "engine"
    assert harness.choose(build_recipe({"eval": {"runner": "auto"}}), "eval", world=2)[0] == "engine"


def test_on_a_gpu_auto_validates_through_the_harness_and_distills_the_faster_way():
    hf = build_recipe({"eval": {"data": "train.csv"}})
    assert plan.planned_runner(hf, "eval")[0] == "harness"
    assert plan.planned_runner(hf, "distill")[0] == "harness"
    for limit in (600, 0):  # validation ranks checkpoints: the scorer's harness even where resident is faster
        r = build_recipe({"model": {"backend": "unsloth"}, "generation": {"engine": "vllm"},
                          "eval": {"data": "train.csv", "limit": limit}})
        assert plan.planned_runner(r, "eval") == (
            "harness", "auto: validation ranks checkpoints, so it runs the competition's harness")
        runner, why = plan.planned_runner(r, "distill")
        swap, resident = plan.generation_hours(r, "distill", "harness"), plan.generation_hours(r, "distill", "engine")
        assert runner == ("harness" if swap < resident else "engine")
        assert f"{swap * 60:.0f} min" in why and f"{resident * 60:.0f} min" in why
    unsloth_hf = build_recipe({"model": {"backend": "unsloth"}})
    assert plan.planned_runner(unsloth_hf, "distill")[0] == "engine"


def test_the_harness_plan_counts_start_reload_and_rate():
    r = build_recipe({"eval": {"data": "train.csv", "limit": 600, "max_num_seqs": 64}})
    want = (plan.RATES["harness_start_s"][0] + plan.RATES["harness_overhead_s"][0] + plan.RATES["trainer_reload_s"][0]
            + 600 * plan.EVAL_TOKENS / plan.RATES["harness_tok_s"][0]) / 3600
    assert plan.generation_hours(r, "eval", "harness") == pytest.approx(want)
    fast = dataclasses.replace(r, eval=dataclasses.replace(r.eval, max_num_seqs=256))
    assert plan.generation_hours(fast, "eval", "harness") < plan.generation_hours(r, "eval", "harness")


def test_the_hf_engine_pays_for_each_batch_s_longest_completion():
    assert plan.slots_per_token(1) == pytest.approx(1.0)
    assert plan.slots_per_token(16) == pytest.approx(3.06, abs=0.05)  # the measured seed record, by fit
    assert plan.slots_per_token(64) > plan.slots_per_token(16)
    r = build_recipe({"generation": {"batch_size": 16}, "eval": {"data": "train.csv", "limit": 600}})
    hours = plan.generation_hours(r, "eval", "engine")
    step_s = plan.RATES["hf_batch16_step_s"][0]
    assert hours == pytest.approx(600 * plan.EVAL_TOKENS * plan.slots_per_token(16) / 16 * step_s / 3600)
    assert 2.9 < hours < 3.6  # the 10,600 s, the lane's 12,917 s (both on an H100)
    assert hours > 10 * plan.generation_hours(r, "eval", "harness")


def test_memory_share_on_the_card(monkeypatch):
    monkeypatch.delenv(harness.CAP_ENV, raising=False)
    assert harness.memory_share(0.0, 79.2)[0] == 0.92  # an H100: the scorer's 76 GiB would not fit
    assert harness.memory_share(0.0, 89.5)[0] == 0.85  # the scorer's 96 GB card (89.4 GiB): its own share
    assert harness.memory_share(0.0, 139.8)[0] == 0.85
    assert harness.memory_share(0.9, 79.2)[0] == 0.9
    monkeypatch.setenv(harness.CAP_ENV, "79.2")  # an H200 playing an H100: 0.92 of 79.2 GiB of its 139.8
    share, how = harness.memory_share(0.0, 139.8)
    assert share * 139.8 == pytest.approx(0.92 * 79.2, abs=0.01) and harness.CAP_ENV in how


def test_a_failed_child_is_reported_by_its_reason():
    log = """INFO starting
(EngineCore pid=1) ERROR Traceback (most recent call last):
(EngineCore pid=1) ERROR torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
fastnemo-harness-error: RuntimeError: Engine core initialization failed. See root cause above.
"""
    assert harness.reason(log).endswith("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert harness.reason("fastnemo-harness-error: ValueError: bad adapter\n") == "ValueError: bad adapter"
    assert harness.reason("") == "no output (see the log)"


@pytest.mark.skipif(harness.vllm_available(), reason="vllm is installed here")
def test_preflight_refuses_the_harness_without_vllm(tmp_path, tiny_recipe):
    r = load_recipe(tiny_recipe(tmp_path, ["data", "sft", "eval"], eval={"runner": "harness"}))
    with pytest.raises(RecipeError, match=r"eval\.runner = 'harness' needs vllm.*pip install vllm"):
        preflight(r)
    preflight(load_recipe(tiny_recipe(tmp_path, ["data", "sft", "eval"], eval={"runner": "auto"})))


def _lora(session) -> dict:
    return {n: p.detach().clone() for n, p in session.model.named_parameters() if "lora_" in n}


def _train_twice(tmp_path, tiny_recipe, release: bool):
    """data -> sft -> (the harness's swap: release the trainer) -> sft of round 2 on the same data."""
    recipe = load_recipe(tiny_recipe(tmp_path, ["data", "sft"], rounds=2, sft={"max_steps": 2, "batch_size": 2,
                                                                               "learning_rate": 5e-3}))
    run = RunDir(tmp_path / "run")
    ctx = Context(recipe=recipe, run=run)
    run.finish("r1-data", *stage_data(ctx, "r1-data"))
    run.finish("r1-sft", *stage_sft(ctx, "r1-sft"))
    freed = None
    if release:
        freed = weakref.ref(ctx.session.model)
        ctx.release_session()
        gc.collect()
    ctx.round = 2
    return ctx, run, freed


def test_release_empties_the_weights_that_a_library_still_holds(tmp_path, tiny_recipe):
    """On the GPU the Trainer's 8-bit AdamW registers the model's embeddings with bitsandbytes' global
    manager (transformers' Trainer.create_optimizer, with the same call as here): after the release neither
    that registry nor any other holder of a module keeps the weights (the lane, 2026-12-07: one held embedding
    kept the model's whole 60 GiB segment, and vLLM found 17 GiB free)."""
    bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is in the dev extra")
    recipe = load_recipe(tiny_recipe(tmp_path, ["data", "sft"], lora={"optimizer_8bit": True}))
    ctx = Context(recipe=recipe, run=RunDir(tmp_path / "run"))
    ctx.get_session()
    embedding = ctx.session.model.get_input_embeddings()
    manager = bnb.optim.GlobalOptimManager.get_instance()
    manager.register_module_override(embedding, "weight", {"optim_bits": 32})
    held = ctx.session.model.get_output_embeddings()  # as any other registry might
    ctx.release_session()
    assert embedding.weight.numel() == 0 and held.weight.numel() == 0
    assert manager.module_weight_config_triple == []


def test_release_frees_the_trainer_and_the_next_stage_resumes_from_the_newest_adapter(tmp_path, tiny_recipe):
    loads = ModelSession.loads
    ctx, run, freed = _train_twice(tmp_path / "swap", tiny_recipe, release=True)
    assert ctx.session is None and freed() is None, "the training model is still referenced after the release"
    reloaded = ctx.get_session()  # lazily, from the newest finished adapter: r1-sft's
    assert ModelSession.loads == loads + 2
    saved = load_file(run.path / "r1-sft" / "adapter" / "adapter_model.safetensors")
    live = _lora(reloaded)
    for key, tensor in saved.items():
        name = next(n for n in live if n.replace(".default", "").endswith(key.removeprefix("base_model.model.")))
        torch.testing.assert_close(live[name], tensor, rtol=0, atol=0)
    stage_sft(ctx, "r2-sft")
    swapped = load_file(run.path / "r2-sft" / "adapter" / "adapter_model.safetensors")

    # the same two stages without the swap: the same round-2 adapter, bit for bit
    ctx2, run2, _ = _train_twice(tmp_path / "resident", tiny_recipe, release=False)
    stage_sft(ctx2, "r2-sft")
    resident = load_file(run2.path / "r2-sft" / "adapter" / "adapter_model.safetensors")
    assert swapped.keys() == resident.keys()
    for key in swapped:
        torch.testing.assert_close(swapped[key], resident[key], rtol=0, atol=0)


def test_the_parent_sees_the_engine_start_line_even_when_a_read_tears_it(tmp_path):
    """The parent restarts its rate at the child's ENGINE_STARTED line, reading only the log's new bytes."""
    log = tmp_path / "harness.log"
    log.write_bytes(b"==== header\n" + harness.ENGINE_STARTED + b" in 9 s (an earlier run's)\n")
    seen = {"pos": log.stat().st_size}
    assert not harness._logged(log, seen, harness.ENGINE_STARTED)  # the earlier run's line is not this one's
    with open(log, "ab") as f:
        f.write(b"Loading weights...\n" + harness.ENGINE_STARTED[:9])
    assert not harness._logged(log, seen, harness.ENGINE_STARTED)
    with open(log, "ab") as f:
        f.write(harness.ENGINE_STARTED[9:] + b" in 230 s\n")
    assert harness._logged(log, seen, harness.ENGINE_STARTED)
