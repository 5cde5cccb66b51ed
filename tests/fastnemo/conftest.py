"""Fixtures for the engine tests: one tiny random nemotron_h model per test session."""

from __future__ import annotations

import os

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
