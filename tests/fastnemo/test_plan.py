"""The memory plan's arithmetic on the real Nemotron-3-Nano widths (CPU only, no model loaded)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastnemo import plan as P

REAL = P.NANO_CONFIG  # the released model's sizes, as the plan uses them before the model is on disk


def test_nano_layout_counts():
    assert (
        P.NANO_LAYERS.count("linear_attention"),
        P.NANO_LAYERS.count("moe"),
        P.NANO_LAYERS.count("full_attention"),
    ) == (23, 23, 6)


def test_weights_match_the_published_size():
    # Nemotron-3-Nano-30B-A3B has ~31.6B parameters: ~59 GiB in bf16
    p = P.plan(REAL)
    assert 55 < p.weights_gib < 62, p.weights_gib


def test_4bit_saves_little_because_experts_stay_bf16():
    full, q4 = P.plan(REAL), P.plan(REAL, load_in_4bit=True)
    assert q4.weights_gib < full.weights_gib
    assert full.weights_gib - q4.weights_gib < 0.15 * full.weights_gib
    assert any("experts stay bf16" in n for n in q4.notes)


def test_expert_lora_counts_only_when_trained():
    frozen = P.plan(REAL)
    experts = P.plan(REAL, train_experts=True)
    assert experts.lora_optimizer_gib > 2 * frozen.lora_optimizer_gib
    assert experts.total_gib > frozen.total_gib


def test_activations_grow_with_tokens_and_overflow_is_refused():
    small = P.plan(REAL, batch=1, seq_len=2048, engine="vllm")
    big = P.plan(REAL, batch=16, seq_len=8192, gradient_checkpointing=False, engine="vllm")
    assert big.activations_gib > 8 * small.activations_gib
    assert small.fits and not big.fits
    assert any("batch_size" in n for n in big.notes)


# Peaks measured on the H200 test machine (torch.cuda.max_memory_allocated; bench/README.md "GPU results"):
# a real-width slice M E A E, LoRA rank 32 on the default targets, TRL SFT with gradient checkpointing, and
# transformers generate of 8 puzzles x G completions (~250 prompt + 256 new tokens).
SLICE = dict(REAL, layers_block_type=["linear_attention", "moe", "full_attention", "moe"])
MEASURED_TRAIN = {(2, 1024): 6.90, (4, 2048): 8.55}
MEASURED_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "in_proj", "up_proj", "down_proj"]  # the defaults then
MEASURED_GENERATE = {32: 9.98, 64: 13.66}


@pytest.mark.parametrize("shape", list(MEASURED_TRAIN))
def test_training_estimate_is_within_10_percent_of_the_measured_peak(shape):
    p = P.plan(SLICE, batch=shape[0], seq_len=shape[1], targets=MEASURED_TARGETS)
    estimate = p.weights_gib + p.lora_optimizer_gib + p.activations_gib  # headroom: not counted by torch
    assert estimate == pytest.approx(MEASURED_TRAIN[shape], rel=0.10)


@pytest.mark.parametrize("seqs", list(MEASURED_GENERATE))
def test_hf_generation_estimate_is_within_10_percent_of_the_measured_peak(seqs):
    p = P.plan(SLICE, gen_seqs=seqs, gen_len=250 + 256, prompt_tokens=250, targets=MEASURED_TARGETS)
    estimate = p.weights_gib + p.lora_optimizer_gib + p.generation_gib
    assert estimate == pytest.approx(MEASURED_GENERATE[seqs], rel=0.10)


def test_generation_overflow_suggests_a_smaller_generation_batch():
    p = P.plan(REAL, gen_seqs=96, engine="hf")
    assert not p.fits
    note = next(n for n in p.notes if "generation.batch_size" in n)
    fits = int(note.rsplit(" ", 1)[-1])
    assert P.plan(REAL, gen_seqs=fits, engine="hf").fits and fits < 96


def test_slice_scales_per_layer():
    one = P.plan(dict(REAL, layers_block_type=["moe"]), targets=[])
    two = P.plan(dict(REAL, layers_block_type=["moe", "moe"]), targets=[])
    emb = 2 * 131072 * 2688 * 2 / P.GIB
    assert abs((two.weights_gib - emb) - 2 * (one.weights_gib - emb)) < 0.01


def test_time_plan_scales_with_the_work_and_the_engine():
    from fastnemo.config import load_recipe

    r = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "round2.toml")
    r.distill.runner = "engine"  # the resident vLLM: hours in proportion to the work
    hours = {s: h for s, h, _ in P.time_plan(r)}
    r.distill.k *= 2
    assert {s: h for s, h, _ in P.time_plan(r)}["distill"] == pytest.approx(2 * hours["distill"])
    r.generation.engine = "hf"
    assert {s: h for s, h, _ in P.time_plan(r)}["distill"] > 5 * hours["distill"]
    assert [s for s, _, _ in P.time_plan(r)] == ["distill", "data", "sft", "eval", "grpo"]
    r.distill.runner = "harness"  # engine start + the trainer's reload + tokens at max_num_seqs 256
    tokens = r.distill.prompts * r.distill.k * P.GEN_TOKENS
    want = (P.RATES["harness_start_s"][0] + P.RATES["harness_overhead_s"][0] + P.RATES["trainer_reload_s"][0]
            + tokens / P.RATES["harness_tok_s_seqs256"][0]) / 3600
    assert {s: h for s, h, _ in P.time_plan(r)}["distill"] == pytest.approx(want)


def test_the_plan_prints_whole_train_csv_and_both_backends():
    from fastnemo.config import load_recipe

    r = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "round2.toml")
    lines = P.validation_lines(r) + P.backend_lines(r)
    assert lines[0].startswith("whole train.csv (9,500 rows) through the harness at max_num_seqs 64")
    assert "backend hf (full set" in lines[3] and "backend unsloth" in lines[4]
    minutes = {seqs: float(line.split(": ")[-1].removesuffix(" min")) for seqs, line in zip((64, 256), lines)}
    assert minutes[256] < 45 < minutes[64]  # the recipes' eval.limit follows from these (recipes/*.toml)



def test_recall_stage_planned_by_exposures_and_refused_over_max_hours(tmp_path):
    from fastnemo.config import RecipeError, load_recipe
    from fastnemo.recipe import preflight

    winners = Path(__file__).resolve().parents[2] / "recipes" / "winners.toml"
    r = load_recipe(winners)
    rp = P.recall_plan(r)
    assert rp["entries"] == 4211 and rp["exposures"] == r.recall.exposures and rp["signatures_left_out"] == 0
    assert rp["hours"] == pytest.approx(rp["tokens"] / P.RATES["train_tok_s_recall_packed"][0] / 3600)
    hours = {s: h for s, h, _ in P.time_plan(r)}
    assert hours["recall"] == pytest.approx(rp["hours"])  # the table's row is the recall line's hours
    r.recall.exposures *= 2
    assert {s: h for s, h, _ in P.time_plan(r)}["recall"] == pytest.approx(2 * hours["recall"])
    cut = load_recipe(winners, ["recall.coverage=0.9"])
    assert P.recall_plan(cut)["tokens"] < rp["tokens"] and P.recall_plan(cut)["signatures_left_out"] > 2000
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_text("")
    slow = load_recipe(winners, [f"model.path={str(model)!r}", "eval.data=''", "data.like=''", "recall.max_hours=0.01"])
    with pytest.raises(RecipeError, match="over recall.max_hours = 0.01"):
        preflight(slow)

# ------------------------------------------------------------------------------ target sets and levers


def test_lora_parameter_counts_of_the_target_sets():
    """The winners' set is the ~888 M of the field notes; the old defaults the 22.7 M measured (issue 12)."""
    from fastnemo.targets import FULL_TARGETS

    n = lambda t, e: P.lora_params(REAL, P.NANO_LAYERS, 32, t, e)
    assert n(list(FULL_TARGETS), True) == pytest.approx(888e6, rel=0.01)
    assert n(MEASURED_TARGETS, False) == pytest.approx(22.7e6, rel=0.01)


def test_each_lever_lowers_the_lora_state():
    base = P.plan(REAL, train_experts=True)
    adam8 = P.plan(REAL, train_experts=True, optimizer_8bit=True)
    both = P.plan(REAL, train_experts=True, optimizer_8bit=True, lora_bf16=True)
    assert base.lora_optimizer_gib == pytest.approx(16 / 6 * both.lora_optimizer_gib, rel=0.01)  # 16 -> 6 bytes
    assert base.lora_optimizer_gib > adam8.lora_optimizer_gib > both.lora_optimizer_gib
    q4 = P.plan(REAL, train_experts=True, experts_4bit=True)
    assert base.weights_gib - q4.weights_gib > 35  # the frozen experts are ~93 % of the weights
    assert any("sleep" in n for n in q4.notes)  # vLLM holds its own bf16 copy: both copies while generating


def test_target_sets_say_what_fits_at_8k():
    """Calibrated on the full model's measured records: the winners' set with the routed experts fits at
    8,192 tokens with 8-bit AdamW (measured with both levers: 67.6 GiB), not without a lever (its colocated
    generation would be over)."""
    rows = P.target_sets(REAL, seq_len=8192, gen_seqs=16)  # recipes/winners.toml: hf engine, 16 sequences
    winners = [r for r in rows if r["train_experts"] and r["implemented"]]
    assert not winners[0]["fits"] and winners[0]["flags"] == {}
    best = P.widest_fit(rows)
    assert best["train_experts"] and best["flags"] == {"optimizer_8bit": True} and "lm_head" in best["targets"]
    both = next(r for r in winners if r["flags"] == {"optimizer_8bit": True, "lora_bf16": True})
    assert both["measured_gib"] == pytest.approx(67.61)
    assert both["measured_gib"] < both["train_gib"] < both["measured_gib"] + 3  # the plan errs on the safe side
    frozen = next(r for r in rows if not r["train_experts"] and r["flags"] == {})
    assert frozen["train_gib"] == pytest.approx(frozen["measured_gib"])  # the anchor
    shorter = P.widest_fit(P.target_sets(REAL, seq_len=4096, generation=False))
    assert shorter["train_experts"] and shorter["flags"] == {}  # no lever needed at 4,096 tokens


def test_the_plan_command_imports_no_torch(imports_no_torch):
    imports_no_torch("import contextlib, io\nfrom fastnemo.plan import plan_command_main\n"
                     "with contextlib.redirect_stdout(io.StringIO()):\n    plan_command_main('recipes/smoke.toml')")


def test_the_plan_in_a_file_is_not_wrapped_at_80_columns(tmp_path):
    """`fastnemo plan recipes/winners.toml > plan.txt`: each line whole (the console is 200 wide off a terminal)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    with open(tmp_path / "plan.txt", "w") as out:
        subprocess.run([sys.executable, "-m", "fastnemo", "plan", "recipes/winners.toml"], cwd=root, env=env,
                       stdout=out, stderr=subprocess.STDOUT, timeout=120, check=False)
    lines = (tmp_path / "plan.txt").read_text().splitlines()
    hf = next(line for line in lines if line.startswith("- backend hf"))
    assert "fits" in hf, lines  # at 80 columns "fits" wrapped onto the next line
    assert max(map(len, lines)) > 80
    rates = next(line for line in lines if line.startswith("- rates: "))  # once a caption wrapped at 62
    assert rates.endswith("(see fastnemo/plan.py RATES)") and "hf_batch16_step_s = 0.106" in rates, rates
