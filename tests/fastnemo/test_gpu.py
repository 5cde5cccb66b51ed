"""GPU tests of the unsloth backend on a real-width slice of Nemotron-3-Nano (random weights, 3 layers: Mamba,
MoE, attention). Run on the H100 test machine (see bench/README.md): ``PYTHONPATH=/tmp/site:. pytest -m gpu``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

LAYERS = ["linear_attention", "moe", "full_attention"]


@pytest.fixture(scope="module")
def slice_dir(tmp_path_factory):
    from bench.common import build_slice_model

    return build_slice_model(tmp_path_factory.mktemp("models") / "slice", LAYERS)


def _load(path, four_bit: bool, adapter=None, targets=None):
    from fastnemo import unsloth_backend
    from fastnemo.config import DEFAULT_TARGETS, LoraConfig, ModelConfig

    model_cfg = ModelConfig(path=str(path), backend="unsloth", load_in_4bit=four_bit, max_seq_length=1024)
    lora_cfg = LoraConfig(rank=16, alpha=16, target_modules=list(targets or DEFAULT_TARGETS))
    return unsloth_backend.load(path, model_cfg, lora_cfg, adapter)


def _batch(vocab: int, n: int = 2, length: int = 256):
    g = torch.Generator().manual_seed(0)
    return torch.randint(8, vocab, (n, length), generator=g).cuda()


@pytest.mark.parametrize("four_bit", [False, True], ids=["16bit", "4bit"])
def test_unsloth_lora_trains_every_target(slice_dir, four_bit, tmp_path):
    """Every targeted LoRA tensor gets a nonzero gradient, the loss falls on a fixed batch, and the saved
    adapter reloads to identical logits."""
    from fastnemo.unsloth_backend import _target_of, lora_parameter_groups

    model, tok = _load(slice_dir, four_bit)
    groups = lora_parameter_groups(model)
    print("LoRA tensors per target:", groups)
    for t in ("q_proj", "k_proj", "v_proj", "o_proj", "in_proj", "up_proj", "down_proj"):
        assert t in groups, f"{t} got no LoRA: {groups}"
    ids = _batch(min(len(tok), model.config.vocab_size))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-3)
    model.train()
    losses, dead = [], None
    for step in range(8):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        if step == 1:  # after one update both A and B have a gradient path
            dead = [
                n
                for n, p in model.named_parameters()
                if p.requires_grad and "lora_" in n and (p.grad is None or not p.grad.abs().sum() > 0)
            ]
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
    print("losses:", [round(x, 4) for x in losses])
    assert not dead, f"LoRA tensors without gradient: {sorted({_target_of(n) for n in dead})} e.g. {dead[:3]}"
    assert losses[-1] < losses[0] - 0.05, losses

    if four_bit:
        return
    model.eval()
    with torch.no_grad():
        ref = model(input_ids=ids[:1, :64]).logits.float()
    model.save_pretrained(tmp_path / "adapter")
    del model, opt, params
    torch.cuda.empty_cache()
    again, _ = _load(slice_dir, False, adapter=tmp_path / "adapter")
    again.eval()
    with torch.no_grad():
        out = again(input_ids=ids[:1, :64]).logits.float()
    assert torch.allclose(out, ref, atol=1e-3, rtol=1e-3), (out - ref).abs().max()
