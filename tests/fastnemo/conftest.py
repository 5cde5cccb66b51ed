"""Fixtures for the engine tests: one tiny random nemotron_h model per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny nemotron_h model + tokenizer saved with save_pretrained (built once, ~10 s)."""
    from fastnemo.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-nemotron", seed=0)


@pytest.fixture()
def tiny_session(tiny_model_dir):
    """A fresh model session (tiny model, fresh LoRA rank 4, hf engine) for each test."""
    from fastnemo.config import GenerationConfig, LoraConfig, ModelConfig
    from fastnemo.session import ModelSession

    return ModelSession.load(
        tiny_model_dir,
        ModelConfig(path=str(tiny_model_dir), dtype="float32", gradient_checkpointing=False),
        LoraConfig(rank=4, alpha=8),
        GenerationConfig(engine="hf", batch_size=8),
    )


@pytest.fixture(scope="session")
def slice_dir(tmp_path_factory):
    """A real-width random slice of Nemotron-3-Nano (Mamba, MoE, attention) for the GPU tests, built once a
    session for every GPU module (bench.common builds the bench's slices the same way)."""
    from bench.common import build_slice_model

    return build_slice_model(tmp_path_factory.mktemp("models") / "slice",
                             ["linear_attention", "moe", "full_attention"])


# ---------------------------------------------------------------------------- tiny-model recipes

# What every tiny-model recipe test shares; each test's own keys go over these (tests/fastnemo/test_recipe*.py,
# test_distributed.py, test_lora.py). Four "i + i" rows SFT can train on in two steps.
TINY_ROWS = [{"id": f"r{i}", "category": "equations", "prompt": f"In Alice's Wonderland, {i} + {i} = ?",
              "answer": str(2 * i), "completion": f"Add them.</think>\n\\boxed{{{2 * i}}}"} for i in range(4)]
TINY_RECIPE = {
    "run_dir": "run",
    "model": {"dtype": "float32", "gradient_checkpointing": False},
    "lora": {"rank": 4, "alpha": 8},
    "generation": {"batch_size": 8},
    "sft": {"learning_rate": 1e-3, "max_steps": 2, "batch_size": 4, "grad_accum": 1, "max_length": 256,
            "save_steps": 100, "logging_steps": 1},
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def _toml(tables: dict, prefix: str = "") -> str:
    """A recipe dict as TOML (values as JSON: the same text for strings, numbers, booleans and lists)."""
    import json

    plain = [f"{k} = {json.dumps(v)}" for k, v in tables.items() if not isinstance(v, dict)]
    nested = [f"\n[{prefix}{k}]\n" + _toml(v, f"{prefix}{k}.") for k, v in tables.items() if isinstance(v, dict)]
    return "\n".join(plain) + "\n" + "".join(nested)


@pytest.fixture(scope="session")
def tiny_recipe(tiny_model_dir):
    """``tiny_recipe(folder, stages, **keys) -> folder/recipe.toml``: a recipe for the tiny model (its run in
    folder/run), TINY_RECIPE under the test's own ``keys``: top-level values, or a table as a dict merged key
    by key (``sft={"max_steps": 3}``, ``eval={"sampling": {"max_tokens": 2}}``). With ``rows`` (default
    TINY_ROWS; None: none) they are written to folder/sft.jsonl, which data.path names unless a data table
    is given."""
    import json
    from pathlib import Path

    def write(folder: Path, stages: list[str], rows: list[dict] | None = TINY_ROWS, **keys) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        base = _merge(TINY_RECIPE, {"model": {"path": str(tiny_model_dir)}})
        if rows is not None:
            (folder / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            if "data" not in keys:
                base["data"] = {"path": "sft.jsonl"}
        path = folder / "recipe.toml"
        path.write_text(_toml(_merge(base, {"stages": stages, **keys})))
        return path

    return write


@pytest.fixture(scope="session")
def imports_no_torch():
    """``imports_no_torch(code)``: run ``code`` in a fresh interpreter (the test's has torch loaded) and assert
    that torch stayed out of it."""
    return _imports_no_torch


def _imports_no_torch(code: str) -> None:
    """Run ``code`` in a fresh interpreter (this one has torch loaded already) and check torch stayed out."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    check = "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('fastnemo'))"
    done = subprocess.run([sys.executable, "-c", f"import sys\n{code}\n{check}"], check=False, cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
