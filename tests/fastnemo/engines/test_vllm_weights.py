"""The weights the plain-vLLM engine pushes on every sync (weight_sync = "merge"), checked without vLLM: the
exact key set and shapes of the model's own checkpoint, so vLLM 0.26's reload takes every one of them (the
GPU lane's probe found the fused 3-D experts and the router's bias buffer missing: garbage after a
level-2 sleep)."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from fastnemo.engines.vllm import merged_weights


@pytest.fixture(scope="module")
def peft_tiny(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "in_proj"]))


def test_merged_weights_are_the_checkpoint_keys_and_shapes(peft_tiny, tiny_model_dir):
    sent = {n: tuple(t.shape) for n, t in merged_weights(peft_tiny)}
    ckpt = {}
    for f in tiny_model_dir.glob("*.safetensors"):
        with safe_open(str(f), "pt") as g:
            for k in g.keys():  # noqa: SIM118 (safe_open is not iterable); backbone. loads as model.
                ckpt[k.replace("backbone.", "model.", 1)] = tuple(g.get_slice(k).get_shape())
    assert sent == ckpt
    assert any(n.endswith("mixer.gate.e_score_correction_bias") for n in sent)  # a buffer, not a parameter
    assert any(".experts.0.up_proj.weight" in n for n in sent)


def test_merged_weights_carry_the_lora_delta(peft_tiny):
    with torch.no_grad():
        for n, p in peft_tiny.named_parameters():
            if "lora_B" in n:
                p.fill_(0.1)
    sent = dict(merged_weights(peft_tiny))
    q = next(m for n, m in peft_tiny.named_modules() if n.endswith("q_proj") and hasattr(m, "base_layer"))
    name = next(k for k in sent if k.endswith("q_proj.weight"))
    assert not torch.equal(sent[name], q.base_layer.weight)
    assert torch.allclose(sent[name], q.base_layer.weight + q.get_delta_weight("default"))
