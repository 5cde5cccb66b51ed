"""Recipe parsing: every error names the file and the key; the repo's own recipes load."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastnemo.config import (
    Recipe,
    RecipeError,
    load_recipe,
    per_rank,
    to_dict,
)
from fastnemo.targets import DEFAULT_TARGETS, MAX_LORA_RANK

REPO = Path(__file__).resolve().parents[2]


def test_reading_a_recipe_imports_no_torch(imports_no_torch):
    """`fastnemo recipe --check` and `fastnemo plan` read recipes in seconds: the LoRA target checks live in
    the torch-free fastnemo.targets, not in fastnemo.lora."""
    imports_no_torch("from fastnemo.config import load_recipe; load_recipe('recipes/smoke.toml')")


def write(tmp_path: Path, text: str, name: str = "r.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_minimal_recipe_gets_documented_defaults(tmp_path):
    r = load_recipe(write(tmp_path, 'name = "x"\n'))
    assert r.name == "x"
    assert r.lora.rank == 32 and r.lora.target_modules == list(DEFAULT_TARGETS)
    assert r.eval.sampling.max_tokens == 7680 and r.eval.sampling.temperature == 0.0
    assert r.source == str((tmp_path / "r.toml").resolve())
    assert to_dict(r)["lora"]["rank"] == 32


def test_nested_tables_and_int_for_float(tmp_path):
    r = load_recipe(write(tmp_path, "[sft]\nlearning_rate = 1\n[eval.sampling]\nmax_tokens = 48\ntop_p = 1\n"))
    assert r.sft.learning_rate == 1.0 and isinstance(r.sft.learning_rate, float)
    assert r.eval.sampling.max_tokens == 48 and isinstance(r.eval.sampling.top_p, float)


def test_unknown_top_level_key_names_key_and_file(tmp_path):
    p = write(tmp_path, 'name = "x"\nlerning_rate = 1e-3\n')
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    assert "lerning_rate" in str(e.value) and str(p) in str(e.value)


def test_unknown_key_in_table_names_key_table_and_file(tmp_path):
    p = write(tmp_path, "[lora]\nrank = 8\nranks = 16\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert "'ranks'" in msg and "lora" in msg and str(p) in msg


def test_unknown_key_in_nested_table(tmp_path):
    p = write(tmp_path, "[eval.sampling]\nmax_token = 4\n")
    with pytest.raises(RecipeError, match=r"eval\.sampling.*'max_token'"):
        load_recipe(p)


def test_source_is_not_settable(tmp_path):
    with pytest.raises(RecipeError, match="'source'"):
        load_recipe(write(tmp_path, 'source = "elsewhere.toml"\n'))


@pytest.mark.parametrize(
    "text, key",
    [
        ('[lora]\nrank = "8"\n', "lora.rank"),
        ("[lora]\nrank = 8.0\n", "lora.rank"),
        ("[lora]\nrank = true\n", "lora.rank"),  # a bool is not an int here
        ('[sft]\nlearning_rate = "1e-3"\n', "sft.learning_rate"),
        ('[model]\ntiny = "yes"\n', "model.tiny"),
        ('stages = "sft"\n', "stages"),
        ("stages = [1, 2]\n", "stages[0]"),
        ('[lora]\ntarget_modules = "q_proj"\n', "lora.target_modules"),
        ('model = "tiny"\n', "model"),  # a table expected
    ],
)
def test_wrong_type_names_the_key(tmp_path, text, key):
    p = write(tmp_path, text)
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    assert key in str(e.value) and str(p) in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="not found") as e:
        load_recipe(tmp_path / "nope.toml")
    assert "nope.toml" in str(e.value)


def test_directory_is_not_a_recipe(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path)


def test_invalid_toml(tmp_path):
    p = write(tmp_path, "[lora\nrank = 8\n")
    with pytest.raises(RecipeError, match="not valid TOML") as e:
        load_recipe(p)
    assert str(p) in str(e.value)


@pytest.mark.parametrize("rank, ok", [(1, True), (MAX_LORA_RANK, True), (MAX_LORA_RANK + 1, False), (0, False)])
def test_lora_rank_bounds(tmp_path, rank, ok):
    p = write(tmp_path, f"[lora]\nrank = {rank}\n")
    if ok:
        assert load_recipe(p).lora.rank == rank
    else:
        with pytest.raises(RecipeError, match="lora.rank") as e:
            load_recipe(p)
        assert str(rank) in str(e.value)


def test_unknown_stage(tmp_path):
    p = write(tmp_path, 'stages = ["data", "sft", "evaluate"]\n')
    with pytest.raises(RecipeError, match="'evaluate'") as e:
        load_recipe(p)
    assert str(p) in str(e.value)


@pytest.mark.parametrize(
    "text, key",
    [
        ('[model]\nbackend = "vllm"\n', "model.backend"),
        ('[generation]\nengine = "sglang"\n', "generation.engine"),
        ("[grpo]\ngroup_size = 1\n", "grpo.group_size"),
        ("[grpo]\ngroup_size = 17\n", "grpo.group_size"),
        ('[grpo]\noverlong = "cut"\n', "grpo.overlong"),
        ("rounds = 0\n", "rounds"),
    ],
)
def test_cross_field_checks(tmp_path, text, key):
    with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
        load_recipe(write(tmp_path, text))


def test_relative_paths_resolve_against_the_recipe_file(tmp_path, monkeypatch):
    sub = tmp_path / "recipes"
    sub.mkdir()
    write(sub, 'run_dir = "../runs/x"\n[model]\npath = "../models/m"\n[eval]\ndata = "val.csv"\n')
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory must not matter
    r = load_recipe(Path("..") / "recipes" / "r.toml", [f"data.like={str(tmp_path / 'abs.csv')!r}"])
    assert r.paths.run_dir == (tmp_path / "runs" / "x").resolve()
    assert r.paths.model == (tmp_path / "models" / "m").resolve()
    assert r.paths.eval_data == (sub / "val.csv").resolve()
    assert r.paths.like == tmp_path / "abs.csv"  # absolute paths are kept
    assert r.paths.start_from is None and r.paths.trace_set is None  # unset ("")
    # the keys keep what the user wrote: config.json and the provenance fingerprints record those
    assert to_dict(r)["run_dir"] == "../runs/x" and to_dict(r)["model"]["path"] == "../models/m"
    assert "paths" not in to_dict(r) and "overrides" not in to_dict(r)


def test_paths_without_source_are_relative_to_cwd():
    assert Recipe(run_dir="a/b").paths.run_dir == Path("a/b")


@pytest.mark.parametrize(("batch", "accum", "n", "want"), [
    (4, 1, 2, (2, 1)), (1, 8, 2, (1, 4)), (4, 8, 2, (4, 4)), (2, 2, 4, (1, 1)), (3, 4, 2, (3, 2)), (4, 2, 1, (4, 2)),
])
def test_per_rank_keeps_the_global_batch(batch, accum, n, want):
    assert per_rank(batch, accum, n) == want
    assert want[0] * want[1] * n == batch * accum and want[0] <= batch


def test_repo_recipes_all_load():
    files = sorted((REPO / "recipes").glob("*.toml"))
    assert files, "the repo ships recipes"
    for f in files:
        r = load_recipe(f)
        assert r.stages and r.lora.rank <= MAX_LORA_RANK, f


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[model]\ndtype = "bf16"', "model.dtype"),
        ('[model]\nexperts_implementation = "fast"', "model.experts_implementation"),
        ('[lora]\ntarget_modules = ["q_proj", "conv1d"]', "conv1d"),
        ('[lora]\ntarget_modules = ["q_proj", "qproj"]', "qproj"),
        ("[distill]\ngoldilocks_low = 0.9\ngoldilocks_high = 0.1", "goldilocks"),
        ("[grpo]\nmicro_batch = 3", "micro_batch"),
        ('stages = ["data", "sft", "eval", "eval"]', "two 'eval'"),
        ('stages = ["data", "sft", "sft"]', "once per round"),
    ],
)
def test_cross_field_values_are_checked_before_any_work(tmp_path, text, needle):
    path = tmp_path / "r.toml"
    path.write_text(text + "\n")
    with pytest.raises(RecipeError, match=needle):
        load_recipe(path)


# ------------------------------------------------------------------ the dataclasses are the single source


def test_every_recipe_key_has_help_text():
    import dataclasses

    from fastnemo import config

    missing = [name for name, f, _ in config.iter_keys() if not f.metadata.get("help", "").strip()]
    assert not missing, f"recipe keys without help text in fastnemo/config.py: {missing}"
    for f in dataclasses.fields(Recipe):  # the sections too
        assert f.metadata.get("help"), f.name


def test_readme_recipe_table_is_current():
    from fastnemo.cli import replace_between_markers
    from fastnemo.config import recipe_table

    text = (REPO / "README.md").read_text()
    assert replace_between_markers(text, recipe_table()) == text, (
        "README.md's recipe table is stale: run `python -m fastnemo recipe-keys --update README.md`")


@pytest.mark.parametrize(
    ("build", "needle"),
    [
        (lambda c: c.DistillConfig(goldilocks_low=0.9, goldilocks_high=0.1), "goldilocks"),
        (lambda c: c.GRPOConfig(loss_type="dapo2"), "grpo.loss_type"),
        (lambda c: c.LoraConfig(rank=64), "lora.rank"),
        (lambda c: c.ModelConfig(load_in_4bit=True, backend="hf"), "model.load_in_4bit"),
        (lambda c: c.SamplingConfig(top_p=0.0), "top_p"),
        (lambda c: c.SFTConfig(max_steps="3"), "sft.max_steps"),
        (lambda c: c.GRPOConfig(max_refills=-1), "grpo.max_refills"),
    ],
)
def test_sections_check_themselves_when_built_in_python(build, needle):
    from fastnemo import config

    with pytest.raises(RecipeError, match=needle.replace(".", r"\.")):
        build(config)


def test_load_in_4bit_is_accepted_with_unsloth(tmp_path):
    r = load_recipe(write(tmp_path, '[model]\nbackend = "unsloth"\nload_in_4bit = true\n'))
    assert r.model.load_in_4bit
    with pytest.raises(RecipeError, match=r"model\.load_in_4bit"):
        load_recipe(write(tmp_path, "[model]\nload_in_4bit = true\n"))


def test_overrides_are_checked_like_keys_in_the_file(tmp_path):
    p = write(tmp_path, "[sft]\nmax_steps = 12\n[lora]\nrank = 8\n")
    r = load_recipe(p, ["sft.max_steps=3", "lora.target_modules=['q_proj']", "model.backend=unsloth",
                        'name="o"', "sft.learning_rate=1"])
    assert (r.sft.max_steps, r.lora.rank, r.lora.target_modules) == (3, 8, ["q_proj"])
    assert r.model.backend == "unsloth" and r.name == "o" and r.sft.learning_rate == 1.0
    for item, key in [("lora.rank=64", "lora.rank"), ("lora.ranks=4", "'ranks'"), ("sft.max_steps=abc", "sft.max_steps"),
                      ("grpo.overlong=cut", "grpo.overlong"), ("lora=4", "lora"), ("sft.max_steps", "KEY=VALUE"),
                      ("lora.rank.x=1", "lora.rank")]:
        with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
            load_recipe(p, [item])


@pytest.mark.parametrize(("override", "needle"), [
    ("sft.learning_rate=nan", "sft.learning_rate must be a finite number"),
    ("sft.learning_rate=inf", "sft.learning_rate must be a finite number"),
    ("grpo.learning_rate=-inf", "grpo.learning_rate must be a finite number"),
    ("lora.dropout=nan", "lora.dropout must be a finite number"),
    ("data.shares={cipher = nan}", r"data.shares.cipher must be a finite number"),
    ("seed=1180591620717411303424", "seed: 1180591620717411303424 is out of range"),  # 2**70
    ("seed=4294967296", r"seed must be in 0..4294967295"),
    ("eval.sampling.seed=-1", r"eval.sampling.seed must be in 0..4294967295"),
    ("data.workers=100000", r"data.workers must be in 1..64"),
    ("sft.max_steps=" + "9" * 30, "out of range"),
])
def test_non_finite_floats_and_out_of_range_ints_are_refused_naming_the_key(tmp_path, override, needle):
    """They passed --check: a NaN/inf learning rate trained a NaN adapter, a 2**70 seed crashed numpy."""
    with pytest.raises(RecipeError, match=needle):
        load_recipe(write(tmp_path, ""), [override])


@pytest.mark.parametrize(("content", "needle"), [
    ("name = 'x'\n".encode("utf-16"), "not UTF-8"),
    (b"name = '\xe9t\xe9'\n", "not UTF-8"),  # latin-1
    (b"a = " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "not valid TOML"),
    (b"seed = " + b"9" * 5000 + b"\n", "not valid TOML|out of range"),
])
def test_a_recipe_in_another_encoding_or_nested_past_the_parser_is_one_line(tmp_path, content, needle):
    path = tmp_path / "r.toml"
    path.write_bytes(content)
    with pytest.raises(RecipeError, match=needle) as e:
        load_recipe(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_an_override_typo_is_the_override_s_fault_with_the_closest_key(tmp_path):
    from fastnemo.config import RecipeError, load_recipe

    path = tmp_path / "r.toml"
    path.write_text("[sft]\nmax_steps = 2\n")
    with pytest.raises(RecipeError, match=r"^override 'sft.max_step=3': \[sft\] has no key 'max_step' \(did you "
                                          r"mean 'max_steps'\?\)"):
        load_recipe(path, ["sft.max_step=3"])
    path.write_text("[sft]\nmax_step = 2\n")
    with pytest.raises(RecipeError, match=r"r.toml: sft: unknown key 'max_step' \(did you mean 'max_steps'\?\)"):
        load_recipe(path)
