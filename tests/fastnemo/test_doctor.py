"""``fastnemo doctor`` on this machine (CPU, no vLLM/Unsloth/Mamba kernels), and the one-line refusals."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from fastnemo import doctor
from fastnemo.cli import main
from fastnemo.requires import MissingPackage, require


def test_doctor_prints_one_table_of_gpu_packages_fused_path_disk_model_and_engines(tiny_recipe, tmp_path):
    recipe = tiny_recipe(tmp_path, ["sft"])
    res = CliRunner().invoke(main, ["doctor", str(recipe)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    out = res.output
    for item in ("GPU", "torch", "transformers", "trl", "peft", "vllm", "unsloth", "bitsandbytes", "mamba_ssm",
                 "causal_conv1d", "fused Mamba path", "disk at run_dir", "model config", "model weights",
                 "tokenizer", "chat template", "backend hf", "backend unsloth", "engine vllm"):
        assert f"│ {item} " in out, item
    lines = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") >= 3}
    assert "5.17.0" in lines["transformers"] and " ok " in lines["model weights"]
    assert "GiB free" in lines["disk at run_dir"]
    if not doctor.found("mamba_ssm"):
        assert " off " in lines["fused Mamba path"] and " no " in lines["full model at 8k"]


def test_a_broken_package_shows_its_exception_in_one_line(tmp_path, monkeypatch):
    (tmp_path / "brokenpkg").mkdir()
    (tmp_path / "brokenpkg" / "__init__.py").write_text("raise RuntimeError('CUDA driver too old\\nmore')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    assert doctor.finish_import(doctor.start_import("brokenpkg")) == "RuntimeError: CUDA driver too old"
    assert doctor.finish_import(doctor.start_import("json:loads")) is None
    assert doctor.finish_import(doctor.start_import("json:no_such")) == "ImportError: json has no no_such"


def test_unsloth_zoo_is_checked_after_unsloth_as_it_is_used(tmp_path, monkeypatch):
    """unsloth_zoo's __init__ refuses to import unless unsloth was imported first (UNSLOTH_IS_PRESENT): two
    packages with that contract (the real ones need a GPU) read broken alone, ok in doctor's order."""
    for name, body in (("unsloth", "import os\nos.environ['UNSLOTH_IS_PRESENT'] = '1'\n"),
                       ("unsloth_zoo", ("import os\nif 'UNSLOTH_IS_PRESENT' not in os.environ:\n"
                                        "    raise ImportError('Please install Unsloth via `pip install unsloth`!')\n"))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(body)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    assert doctor.finish_import(doctor.start_import("unsloth_zoo")).startswith("ImportError: Please install")
    assert doctor.import_specs("unsloth_zoo") == ("unsloth", "unsloth_zoo")
    assert doctor.finish_import(doctor.start_import(*doctor.import_specs("unsloth_zoo"))) is None


def test_model_rows_name_what_the_folder_lacks(tiny_model_dir, tmp_path):
    rows = {r[0]: r[1] for r in doctor.model_rows(tiny_model_dir)}
    assert rows == {"model config": "ok", "model weights": "ok", "tokenizer": "ok", "chat template": "ok"}
    (tmp_path / "config.json").write_text('{"model_type": "nemotron_h"}')
    rows = {r[0]: r[1] for r in doctor.model_rows(tmp_path)}
    assert rows["model config"] == "ok" and rows["model weights"] == "missing" and rows["tokenizer"] == "missing"


def test_require_names_the_package_and_points_to_doctor():
    require("json", why="x")  # found: quiet
    with pytest.raises(MissingPackage, match=r"^fastnemo score needs mamba-ssm, which is not installed \(the "
                                             r"README's second install step.*`fastnemo doctor`"):
        require("mamba_ssm", why="fastnemo score") if not doctor.found("mamba_ssm") else pytest.skip("installed")


def test_score_without_vllm_is_one_line(tmp_path):
    if doctor.found("vllm"):
        pytest.skip("vllm is installed here")
    (tmp_path / "s.zip").write_bytes(b"")
    (tmp_path / "d.csv").write_text("id,prompt,answer\n1,p,2\n")
    res = CliRunner().invoke(main, ["score", str(tmp_path / "s.zip"), "--data", str(tmp_path / "d.csv"),
                                    "--model", "m"])
    assert res.exit_code == 1
    assert res.output.count("\n") == 1 and "needs vllm" in res.output and "fastnemo doctor" in res.output
