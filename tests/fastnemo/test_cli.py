"""The ``fastnemo`` command line through click's CliRunner: help everywhere, failures exit non-zero with the
reason (never a traceback), and the model commands work end to end on the tiny model."""

from __future__ import annotations

import csv
import json
import random
import zipfile
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from fastnemo.cli import main

REPO = Path(__file__).resolve().parents[2]

KEY_OPTIONS = {
    "recipe": ["--check", "--redo", "RECIPE_FILE", "KEY=VALUE"],
    "tiny-model": ["--seed", "--vocab-size", "OUT_DIR"],
    "sft": ["--model", "--adapter", "--data", "--out", "lora.rank", "sft.learning_rate", "sft.max_steps",
            "sft.grad_accum"],
    "eval": ["--model", "--adapter", "--data", "--out", "eval.limit", "eval.sampling.max_tokens",
             "generation.engine"],
    "distill": ["--model", "--adapter", "--data", "--out", "distill.k", "distill.goldilocks_low"],
    "grpo": ["--model", "--adapter", "--data", "--out", "grpo.group_size", "grpo.max_refills"],
    "pack": ["--out", "--overwrite", "ADAPTER_DIR"],
    "verify": ["--model", "--base-model", "--load", "ZIP_PATH"],
    "best": ["RUN_DIR"],
}


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def all_commands(group: click.Group, prefix=()):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):  # lazy commands included
        cmd = group.get_command(ctx, name)
        yield (*prefix, name), cmd
        if isinstance(cmd, click.Group):
            yield from all_commands(cmd, (*prefix, name))


def test_main_help_lists_commands():
    r = invoke("--help")
    assert r.exit_code == 0
    for name in KEY_OPTIONS:
        assert name in r.output
    assert invoke("-h").exit_code == 0


def test_every_command_has_help():
    names = [path for path, _ in all_commands(main)]
    assert {p[0] for p in names} >= set(KEY_OPTIONS)
    for path in names:
        r = invoke(*path, "--help")
        assert r.exit_code == 0, (path, r.output)
        assert "Usage:" in r.output


@pytest.mark.parametrize("command", sorted(KEY_OPTIONS))
def test_help_mentions_key_options(command):
    r = invoke(command, "--help")
    assert r.exit_code == 0
    for opt in KEY_OPTIONS[command]:
        assert opt in r.output, (command, opt)


# ------------------------------------------------------------------------------------------------ recipe


def test_recipe_check_prints_the_plan(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text('name = "planned"\nrun_dir = "runs/x"\nstages = ["data", "sft", "eval", "pack"]\n'
                 '[model]\ntiny = true\n')
    r = invoke("recipe", "--check", p)
    assert r.exit_code == 0, r.output
    out = r.output
    assert "recipe ok" in out
    assert "planned" in out and str((tmp_path / "runs" / "x").resolve()) in out.replace("\n", "")
    positions = [out.index(k) for k in ("r1-data", "r1-sft", "r1-eval-sft", "pack")]
    assert positions == sorted(positions)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "models").exists()  # --check runs nothing


def test_check_reports_a_missing_model(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text('[model]\npath = "nowhere"\n')
    r = invoke("recipe", "--check", p)
    assert r.exit_code != 0 and "model.path" in r.output and "r1-data" in r.output  # plan first, then why


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "recipes").glob("*.toml")))
def test_repo_recipes_check(name):
    """Every shipped recipe prints its plan; those that build their tiny model pass the preflight here
    (the others need the real model folder)."""
    r = invoke("recipe", "--check", REPO / "recipes" / name)
    assert "round 1" in r.output and "r1-" in r.output, r.output
    if "tiny = true" in (REPO / "recipes" / name).read_text():
        assert r.exit_code == 0, r.output
    else:
        assert r.exit_code == 0 or "model.path" in r.output, r.output


def test_recipe_errors_name_the_key_without_traceback(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('[lora]\nrank = "8"\n')
    r = invoke("recipe", "--check", p)
    assert r.exit_code != 0 and "lora.rank" in r.output
    assert isinstance(r.exception, SystemExit) and "Traceback" not in r.output
    r = invoke("recipe", tmp_path / "missing.toml")
    assert r.exit_code != 0 and "not found" in r.output


# ---------------------------------------------------------------------------------------- pack / verify


@pytest.fixture()
def adapter_dir(tiny_session, tmp_path) -> Path:
    return tiny_session.save_adapter(tmp_path / "adapter")


def test_pack_then_verify(adapter_dir, tiny_model_dir, tmp_path):
    z = tmp_path / "submission.zip"
    r = invoke("pack", adapter_dir, "--out", z)
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output and z.exists()
    r = invoke("verify", z, "--model", tiny_model_dir, "--load")
    assert r.exit_code == 0, r.output
    assert "ok:" in r.output and '"rank": 4' in r.output

    r = invoke("pack", adapter_dir, "--out", z)  # a second pack onto the same zip
    assert r.exit_code != 0 and "refusing to overwrite" in r.output
    assert invoke("pack", adapter_dir, "--out", z, "--overwrite").exit_code == 0


def test_verify_bad_zip_exits_nonzero_with_reason(adapter_dir, tmp_path):
    z = tmp_path / "r33.zip"
    with zipfile.ZipFile(z, "w") as zf:
        cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
        zf.writestr("adapter_config.json", json.dumps({**cfg, "r": 33}))
        zf.write(adapter_dir / "adapter_model.safetensors", "adapter_model.safetensors")
    r = invoke("verify", z)
    assert r.exit_code == 1
    assert "verify failed" in r.stderr and "rank 33" in r.stderr
    assert "ok:" not in r.stdout


def test_verify_corrupt_zip_exits_nonzero_without_traceback(tmp_path):
    z = tmp_path / "junk.zip"
    z.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    r = invoke("verify", z)
    assert r.exit_code == 1 and "not a readable zip" in r.stderr
    r = invoke("verify", tmp_path / "absent.zip")
    assert r.exit_code == 1 and "no such file" in r.stderr


def test_verify_base_model_option(adapter_dir, tmp_path):
    z = tmp_path / "s.zip"
    invoke("pack", adapter_dir, "--out", z)
    r = invoke("verify", z, "--base-model", "someone/else")
    assert r.exit_code == 1 and "someone/else" in r.stderr
    assert invoke("verify", z, "--base-model", "").exit_code == 0


# ------------------------------------------------------------------------------------------- tiny-model


def test_tiny_model_refuses_to_overwrite(tiny_model_dir):
    before = (tiny_model_dir / "config.json").read_bytes()
    r = invoke("tiny-model", tiny_model_dir)
    assert r.exit_code != 0
    assert "refusing to overwrite" in r.output and "Traceback" not in r.output
    assert (tiny_model_dir / "config.json").read_bytes() == before


# ---------------------------------------------------------------------------------------- sft / eval / best


def write_eval_csv(path: Path, n_per: int = 1) -> Path:
    from puzzles import categories

    rng = random.Random(7)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "prompt", "answer"])
        for cat in ("gravity", "unit_conversion"):
            for i in range(n_per):
                p = categories.generate(cat, rng)
                w.writerow([f"{cat[:4]}{i}", p.prompt, p.answer])
    return path


def test_eval_command_writes_results_and_summary(tiny_model_dir, tmp_path):
    data = write_eval_csv(tmp_path / "val.csv", n_per=2)
    out = tmp_path / "eval"
    r = invoke("eval", "--model", tiny_model_dir, "--data", data, "--out", out, "limit=2", "sampling.max_tokens=2")
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 2 and set(summary["per_category"]) == {"gravity", "unit_conversion"}  # stratified
    assert len((out / "results.jsonl").read_text().splitlines()) == 2


def test_eval_command_rejects_a_bad_csv(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,prompt\n1,hello\n")  # no answer column
    r = invoke("eval", "--model", tiny_model_dir, "--data", bad, "--out", tmp_path / "o")
    assert r.exit_code != 0 and "Traceback" not in r.output


def test_sft_command_trains_and_saves(tiny_model_dir, tmp_path):
    data = tmp_path / "sft.jsonl"
    rows = [{"prompt": f"In Alice's Wonderland, {i}?", "completion": f"ok</think>\n\\boxed{{{i}}}"} for i in range(2)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    r = invoke("sft", "--model", tiny_model_dir, "--data", data, "--out", out, "lora.rank=4", "max_steps=1",
               "batch_size=2", "grad_accum=1", "max_length=128")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["steps"] == 1
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 4
    r = invoke("sft", "--model", tiny_model_dir, "--data", data, "--out", out, "lora.rank=4", "max_steps=1",
               "batch_size=2", "grad_accum=1", "max_length=128")
    assert r.exit_code != 0 and "refusing to overwrite" in r.output  # the adapter is never overwritten


def test_rank_over_32_is_refused_by_the_cli(tiny_model_dir, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    r = invoke("sft", "--model", tiny_model_dir, "--data", data, "--out", tmp_path / "o", "lora.rank=33")
    assert r.exit_code == 2 and "33" in r.output


def test_best_names_the_top_checkpoint(tmp_path):
    from fastnemo.run import RunDir

    run = RunDir(tmp_path / "run")
    assert invoke("best", run.path).exit_code != 0  # nothing evaluated yet
    for key, acc in (("r1-sft", None), ("r1-eval-sft", 0.25)):
        d = run.stage_dir(key)
        art = d / "adapter" if acc is None else d / "results.jsonl"
        if acc is None:
            art.mkdir()
            (art / "adapter_config.json").write_text("{}")
            run.finish(key, {"adapter": art})
        else:
            art.write_text("")
            run.finish(key, {"results": art}, {"checkpoint": "r1-sft", "accuracy": acc, "per_category": {}})
    r = invoke("best", run.path)
    assert r.exit_code == 0, r.output
    top = json.loads(r.stdout.strip().splitlines()[-1])
    assert top["checkpoint"] == "r1-sft" and top["accuracy"] == 0.25
    assert top["adapter"] == str(run.path / "r1-sft" / "adapter")


# ----------------------------------------------------------------------------- startup and overrides


def test_help_imports_no_torch():
    """`fastnemo --help` (and a command's help) must not pay torch's import: commands load lazily."""
    import subprocess
    import sys

    code = ("import sys\nfrom click.testing import CliRunner\nfrom fastnemo.cli import main\n"
            "for args in (['--help'], ['sft', '--help'], ['grpo', '--help'], ['data', '--help']):\n"
            "    assert CliRunner().invoke(main, args).exit_code == 0, args\n"
            "print(sorted(m for m in ('torch', 'transformers', 'trl', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_recipe_check_applies_and_refuses_overrides():
    smoke = REPO / "recipes" / "smoke.toml"
    r = invoke("recipe", "--check", smoke, "lora.rank=64")
    assert r.exit_code != 0 and "lora.rank" in r.output and "64" in r.output
    r = invoke("recipe", "--check", smoke, "sft.maxsteps=3")
    assert r.exit_code != 0 and "'maxsteps'" in r.output
    r = invoke("recipe", "--check", smoke, "sft.max_steps=3")
    assert r.exit_code == 0, r.output
    from fastnemo.config import load_recipe

    assert load_recipe(smoke, ["sft.max_steps=3"]).sft.max_steps == 3


@pytest.mark.parametrize(
    ("command", "args", "needle"),
    [
        ("distill", ["goldilocks_low=0.9", "goldilocks_high=0.1"], "goldilocks"),
        ("grpo", ["loss_type=dapo2"], "grpo.loss_type"),
        ("grpo", ["group_size=1"], "grpo.group_size"),
        ("sft", ["lora.rank=64"], "lora.rank"),
        ("eval", ["model.load_in_4bit=true"], "model.load_in_4bit"),
        ("sft", ["learning_rate=fast"], "sft.learning_rate"),
    ],
)
def test_stage_commands_refuse_bad_values_before_loading_a_model(tmp_path, command, args, needle):
    """The model folder is empty: a refusal that names the key proves nothing was loaded first."""
    model = tmp_path / "empty-model"
    model.mkdir()
    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    r = invoke(command, "--model", model, "--data", data, "--out", tmp_path / "o", *args)
    assert r.exit_code == 2 and needle in r.output, r.output
    assert "Traceback" not in r.output and not (tmp_path / "o").exists()


def test_old_hand_copied_options_are_gone():
    r = invoke("distill", "--model", ".", "--out", "x", "--low", "0.9")
    assert r.exit_code == 2 and "--low" in r.output


def test_qualify_adds_the_commands_section_only_for_its_own_keys():
    from fastnemo.cli import qualify

    assert qualify("sft", "max_steps=3") == "sft.max_steps=3"
    assert qualify("eval", "sampling.max_tokens=8") == "eval.sampling.max_tokens=8"
    assert qualify("distill", "data=x.csv") == "distill.data=x.csv"
    assert qualify("distill", "data.n=5") == "data.n=5"  # the [data] section, not distill.data
    assert qualify("sft", "lora.rank=8") == "lora.rank=8" and qualify("sft", "seed=1") == "seed=1"


def test_recipe_check_names_the_stages_already_done_and_hours_below_a_tenth(tiny_recipe, tmp_path):
    recipe = tiny_recipe(tmp_path, ["data", "sft", "eval"], model={"tiny": True})
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text(json.dumps({"stages": {"r1-data": {"artifacts": {}}}}))
    res = invoke("recipe", "--check", recipe)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert any("r1-data" in ln and "(done" in ln for ln in lines)
    assert not any("r1-sft" in ln and "(done" in ln for ln in lines)
    hours = [ln.split("│")[2].strip() for ln in lines if ln.startswith(("│ sft ", "│ eval "))]
    assert hours and "0.0" not in hours, hours  # never "0.0" for a stage that takes time
    from fastnemo.plan import hours_text

    assert [hours_text(h) for h in (0, 0.01, 0.06, 2.34)] == ["0", "< 0.1", "0.1", "2.3"]
    assert "one H100" in res.output


def test_recipe_refuses_changed_keys_of_a_finished_stage_in_one_line_and_redo_redoes_it(tmp_path, tiny_recipe):
    path = tiny_recipe(tmp_path, ["data"])
    assert invoke("recipe", path).exit_code == 0
    refused = invoke("recipe", path, "seed=3")
    errors = [line for line in refused.output.splitlines() if line.startswith("Error:")]
    assert refused.exit_code == 1 and len(errors) == 1 and "r1-data: seed 0 -> 3" in errors[0], refused.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["seed"] == 0  # still what ran
    redone = invoke("recipe", path, "seed=3", "--redo", "r1-data")
    assert redone.exit_code == 0, redone.output
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["r1-data"]["config"]["seed"] == 3
    assert json.loads((tmp_path / "run" / "config.json").read_text())["seed"] == 3
    assert invoke("recipe", path, "--redo", "r9-data").output.count("no such stage") == 1
