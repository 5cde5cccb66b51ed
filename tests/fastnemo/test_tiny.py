"""The tiny nemotron_h model and its tokenizer: every Nemotron-3-Nano layer kind, special tokens that the
chat template and generation rely on, and a saved folder that refuses to be overwritten."""

from __future__ import annotations

import json

import pytest
import torch

from fastnemo.tiny import SPECIAL_TOKENS, build_tiny_model, tiny_config, train_tokenizer


def test_tiny_config_has_every_layer_kind():
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(128)
    assert cfg.model_type == "nemotron_h" and cfg.vocab_size == 128
    model = AutoModelForCausalLM.from_config(cfg)
    kinds = {type(layer.mixer).__name__ for layer in model.model.layers}
    assert kinds == {"NemotronHMamba2Mixer", "NemotronHAttention", "NemotronHMoE"}
    assert sum(p.numel() for p in model.parameters()) < 1_000_000  # toy-sized: fast on 2 CPU cores


def test_tiny_config_overrides():
    cfg = tiny_config(128, hidden_size=32, n_routed_experts=2)
    assert cfg.hidden_size == 32 and cfg.n_routed_experts == 2


def test_tokenizer_specials_and_round_trip():
    tok = train_tokenizer(["hello world 0101 -> 1010", "In Alice's Wonderland"], vocab_size=300)
    for s in SPECIAL_TOKENS:
        (i,) = tok(s, add_special_tokens=False)["input_ids"]  # one token, never split
        assert tok.convert_ids_to_tokens(i) == s
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<pad>"
    text = "Ünïcödé ∑ 12.5 m/s² \\boxed{x}\n\ttab"  # unseen characters: byte-level, nothing lost
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text
    assert tok("abc")["input_ids"] == tok("abc", add_special_tokens=False)["input_ids"]  # no BOS added


def test_saved_model_and_tokenizer_agree(tiny_model_dir):
    from transformers import AutoConfig, AutoTokenizer

    cfg = AutoConfig.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert cfg.model_type == "nemotron_h"
    assert cfg.vocab_size == len(tok)
    assert cfg.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id  # generation stops
    assert cfg.pad_token_id == tok.pad_token_id
    assert not cfg.use_mamba_kernels  # the CPU path (no mamba_ssm / causal_conv1d)
    assert tok.chat_template and "<think>" in tok.chat_template
    assert any(tiny_model_dir.glob("*.safetensors"))
    assert not [p for p in tiny_model_dir.parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_saved_model_runs_forward(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ids = torch.tensor([[5, 10, 20, 30]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, 4, model.config.vocab_size)
    assert torch.isfinite(logits).all()


def test_build_refuses_to_overwrite(tiny_model_dir):
    before = json.loads((tiny_model_dir / "config.json").read_text())
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        build_tiny_model(tiny_model_dir)
    assert json.loads((tiny_model_dir / "config.json").read_text()) == before


def test_build_refuses_a_nonempty_folder_without_a_model(tmp_path):
    """A folder holding anything else is not replaced (only an empty one is)."""
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        build_tiny_model(tmp_path, vocab_size=300)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
