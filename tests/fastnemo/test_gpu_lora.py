"""GPU tests of fastnemo.lora on a real-width slice of Nemotron-3-Nano (random bf16 weights; Mamba, MoE,
attention): the winners' full target set trains and packs, the out_proj route matches the fused kernel, and
the grouped expert LoRA matches PEFT's ParamWrapper (with its time and peak memory printed beside it).
Run on the GPU lane: ``pytest -m gpu -s tests/fastnemo/test_gpu_lora.py``.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

def _session(path, targets, experts, **lora):
    from fastnemo.config import GenerationConfig, LoraConfig, ModelConfig
    from fastnemo.session import ModelSession

    return ModelSession.load(path, ModelConfig(path=str(path), dtype="bfloat16", max_seq_length=1024),
                             LoraConfig(rank=32, alpha=32, target_modules=list(targets), train_experts=experts,
                                        **lora),
                             GenerationConfig(engine="hf"))


def _timed(fn, repeats: int = 3):
    """(seconds per call after one warm-up, peak GiB over the calls): printed, never asserted."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeats, torch.cuda.max_memory_allocated() / 2**30


def test_full_target_set_trains_packs_and_verifies(slice_dir, tmp_path):
    """q/k/v/o, in/out_proj, shared + all routed experts' up/down_proj and lm_head: after SFT steps every LoRA
    tensor has moved; the packed zip is in vLLM's layout and verifies against the slice."""
    from fastnemo import sft
    from fastnemo.config import SFTConfig
    from fastnemo.pack import pack, verify
    from fastnemo.targets import FULL_TARGETS

    s = _session(slice_dir, FULL_TARGETS, experts=True)
    before = {n: p.detach().clone() for n, p in s.model.named_parameters() if p.requires_grad}
    print("trainable parameters (full set, slice):", sum(p.numel() for p in before.values()))
    rows = [{"prompt": f"In Alice's Wonderland, {i} -> {2 * i}. Now {i + 1}?",
             "completion": f"Each number is doubled.</think>\n\\boxed{{{2 * i + 2}}}"} for i in range(8)]
    torch.cuda.reset_peak_memory_stats()
    sft.train(s, rows, SFTConfig(learning_rate=1e-3, max_steps=3, batch_size=4, grad_accum=1, max_length=256,
                                 warmup=0.0, save_steps=100, logging_steps=1), tmp_path / "ckpt")
    print("SFT peak GiB:", torch.cuda.max_memory_allocated() / 2**30)
    still = [n for n, p in s.model.named_parameters() if p.requires_grad and torch.equal(p.detach(), before[n])]
    assert not still, f"LoRA tensors that never moved: {still[:5]}"
    z = pack(s.save_adapter(tmp_path / "adapter"), tmp_path / "submission.zip")
    report = verify(z, slice_dir, None)
    print("verify:", report)
    assert report["experts"] == 128 * 2  # every expert of the slice's MoE layer, up and down


def test_out_proj_route_matches_the_fused_kernel(slice_dir):
    """With out_proj's LoRA at zero, the patched fused path (kernel without projection, then the module) gives
    the logits of the unpatched fused kernel; with B != 0 the gradient reaches out_proj's LoRA."""
    from transformers import AutoModelForCausalLM
    from transformers.models.nemotron_h import modeling_nemotron_h as mh

    s = _session(slice_dir, ["q_proj", "out_proj"], experts=False)
    assert getattr(mh.mamba2_split_conv1d_scan_combined, "fastnemo_wrapped", False)
    base = AutoModelForCausalLM.from_pretrained(slice_dir, dtype=torch.bfloat16, device_map="cuda")
    ids = torch.randint(8, 1000, (2, 512), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    s.model.train()
    base.train()  # training mode, no cache: the fused kernel path
    with torch.no_grad():
        got, want = s.model(input_ids=ids).logits.float(), base(input_ids=ids).logits.float()
    err = (got - want).abs().max().item()
    print("out_proj route vs fused kernel, max |logit diff|:", err, "logit scale:", want.abs().max().item())
    assert err <= 2e-2 * max(1.0, want.abs().max().item())  # bf16 rounding of the split projection

    def step(model):
        def run():
            model(input_ids=ids, labels=ids).loss.backward()
        return run

    print("fwd+bwd (s, peak GiB) patched:", _timed(step(s.model)), "unpatched:", _timed(step(base)))
    with torch.no_grad():
        for n, p in s.model.named_parameters():
            if "out_proj.lora_B" in n:
                p.normal_(std=0.01)
    s.model.zero_grad(set_to_none=True)
    s.model(input_ids=ids, labels=ids).loss.backward()
    grads = {n: p.grad for n, p in s.model.named_parameters() if "out_proj.lora_" in n}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values()), grads.keys()


def test_grouped_expert_lora_matches_param_wrapper_and_times_it(slice_dir):
    """One real-width MoE layer (128 experts, 6 routed): fastnemo's grouped LoRA vs PEFT's ParamWrapper
    (which folds W + dW for all experts): same output and LoRA gradients within bf16 tolerance."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from fastnemo.lora import install_grouped_expert_lora
    from fastnemo.targets import EXPERT_PARAMETERS

    base = AutoModelForCausalLM.from_pretrained(slice_dir, dtype=torch.bfloat16, device_map="cuda")
    ref = get_peft_model(base, LoraConfig(r=32, lora_alpha=32, target_modules=["q_proj"],
                                          target_parameters=list(EXPERT_PARAMETERS)))
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if "experts" in n and "lora_B" in n:
                p.normal_(std=0.01)
    grouped = copy.deepcopy(ref)
    assert install_grouped_expert_lora(grouped) == 1
    moe_ref = ref.get_base_model().model.layers[1].mixer
    moe = grouped.get_base_model().model.layers[1].mixer
    x = torch.randn(4096, 2688, device="cuda", dtype=torch.bfloat16, generator=torch.Generator("cuda").manual_seed(0))
    outs = {}
    for name, m in (("param_wrapper", moe_ref), ("grouped", moe)):
        xi = x.clone().requires_grad_(True)
        out = m(xi[None])
        out.float().square().mean().backward()
        outs[name] = (out.detach().float(), {n: p.grad.float() for n, p in m.named_parameters() if p.grad is not None})
    (o_ref, g_ref), (o, g) = outs["param_wrapper"], outs["grouped"]
    rel = ((o - o_ref).norm() / o_ref.norm()).item()
    print("grouped vs ParamWrapper: output rel err", rel)
    assert rel < 2e-2
    assert g.keys() == g_ref.keys()
    for n in g_ref:
        r = ((g[n] - g_ref[n]).norm() / g_ref[n].norm().clamp(min=1e-12)).item()
        print(f"  grad {n}: rel err {r:.2e}")
        assert r < 5e-2, n

    def step(m):
        def run():
            m.zero_grad(set_to_none=True)
            m(x[None]).float().square().mean().backward()
        return run

    print("expert LoRA fwd+bwd at 4096 tokens (s, peak GiB): ParamWrapper", _timed(step(moe_ref)),
          "grouped", _timed(step(moe)))


def test_unsloth_trains_out_proj_and_leaves_lm_head_out(slice_dir, tmp_path):
    """The recipes' backend with the winners' modules: out_proj's LoRA trains under Unsloth's kernels (routed
    past the fused Mamba kernel) through ``sft.train``; lm_head is left out, never a full modules_to_save
    copy (Unsloth's fused loss bypasses an lm_head LoRA: measured here 2026-12-02); the zip verifies."""
    pytest.importorskip("unsloth")

    from fastnemo import sft
    from fastnemo.config import GenerationConfig, LoraConfig, ModelConfig, SFTConfig
    from fastnemo.pack import pack, verify
    from fastnemo.session import ModelSession
    from fastnemo.targets import DEFAULT_TARGETS

    s = ModelSession.load(slice_dir, ModelConfig(path=str(slice_dir), backend="unsloth", max_seq_length=1024),
                          LoraConfig(rank=16, alpha=16, target_modules=list(DEFAULT_TARGETS)),
                          GenerationConfig(engine="hf"))
    names = [n for n, _ in s.model.named_parameters()]
    assert not any("modules_to_save" in n or "lm_head.lora" in n for n in names)
    watched = {n: p.detach().clone() for n, p in s.model.named_parameters()
               if p.requires_grad and "out_proj.lora_B" in n}
    assert watched, names[:10]
    rows = [{"prompt": f"In Alice's Wonderland, {i} -> {2 * i}. Now {i + 1}?",
             "completion": f"Each number is doubled.</think>\n\\boxed{{{2 * i + 2}}}"} for i in range(8)]
    sft.train(s, rows, SFTConfig(learning_rate=1e-3, max_steps=3, batch_size=4, grad_accum=1, max_length=256,
                                 warmup=0.0, save_steps=100, logging_steps=1), tmp_path / "ckpt")
    still = [n for n, p in s.model.named_parameters() if n in watched and torch.equal(p.detach(), watched[n])]
    assert not still, f"out_proj LoRA tensors that never moved under Unsloth: {still[:4]}"
    report = verify(pack(s.save_adapter(tmp_path / "adapter"), tmp_path / "submission.zip"), slice_dir, None)
    assert "out_proj" in report["target_modules"] and "lm_head" not in report["target_modules"]


def test_release_hands_the_whole_model_back(slice_dir, tmp_path):
    """After SFT with the winners' levers (full set, 8-bit AdamW, bf16 LoRA), the release leaves this process
    almost no GPU memory: the harness child's vLLM then asks for a share of the whole card. The lane,
    2026-12-07: the Trainer had registered the embedding with bitsandbytes' global manager, which kept the
    model's whole warm-up segment (62 of 79 GiB) after the model itself was gone; then (2026-12-07) cuBLAS's
    two 32 MiB workspaces did the same (58.8 GiB held) until fastnemo.session.free_cuda_cache cleared them."""
    from fastnemo import sft
    from fastnemo.config import SFTConfig, build_recipe
    from fastnemo.recipe import Context
    from fastnemo.run import RunDir
    from fastnemo.targets import FULL_TARGETS

    torch.cuda.memory._record_memory_history(stacks="python")  # so that a failure names who allocated the rest
    s = _session(slice_dir, FULL_TARGETS, experts=True, optimizer_8bit=True, bf16_weights=True)
    rows = [{"prompt": f"In Alice's Wonderland, {i} -> {2 * i}. Now {i + 1}?",
             "completion": f"Each number is doubled.</think>\n\\boxed{{{2 * i + 2}}}"} for i in range(4)]
    sft.train(s, rows, SFTConfig(learning_rate=1e-3, max_steps=1, batch_size=4, grad_accum=1, max_length=256,
                                 warmup=0.0, save_steps=100, logging_steps=1), tmp_path / "ckpt")
    held = torch.cuda.memory_reserved() / 2**30
    ctx = Context(recipe=build_recipe({"lora": {"optimizer_8bit": True}}), run=RunDir(tmp_path / "run"))
    ctx.session = s
    del s
    ctx.release_session()
    left = torch.cuda.memory_reserved() / 2**30
    print(f"GPU memory reserved by this process: {held:.2f} GiB after SFT, {left:.2f} GiB after the release")
    why = "" if left < min(0.5, held / 10) else _holders()
    torch.cuda.memory._record_memory_history(enabled=None)  # the tests after this one run unrecorded
    assert not why, f"{left:.2f} of {held:.2f} GiB still held after the release\n{why}"


def _holders(limit: int = 12) -> str:
    """What keeps this process's GPU segments: the live blocks of the largest segments with the Python frames
    that allocated them, and the live CUDA tensors gc can see with their referrers' types."""
    import gc

    lines = [f"allocated {torch.cuda.memory_allocated() / 2**30:.2f} GiB, reserved "
             + f"{torch.cuda.memory_reserved() / 2**30:.2f} GiB"]
    for seg in sorted(torch.cuda.memory._snapshot()["segments"], key=lambda g: -g["total_size"])[:4]:
        live = [b for b in seg["blocks"] if b["state"] == "active_allocated"]
        lines.append(f"segment {seg['total_size'] / 2**20:.0f} MiB: {len(live)} live blocks, "
                     f"{sum(b['size'] for b in live) / 2**20:.1f} MiB")
        for b in sorted(live, key=lambda b: -b["size"])[:limit]:
            frames = [f"{f['filename'].rsplit('/', 2)[-1]}:{f['line']} {f['name']}" for f in b.get("frames", [])
                      if f["filename"].endswith(".py")][:5]
            lines.append(f"  {b['size'] / 2**20:8.2f} MiB  " + " < ".join(frames or ["(no Python frame)"]))
    tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.is_cuda]
    lines.append(f"{len(tensors)} live CUDA tensors")
    for t in sorted(tensors, key=lambda t: -t.untyped_storage().nbytes())[:limit]:
        refs = [type(r).__name__ + (f"{list(r)[:4]}" if isinstance(r, dict) else "")
                for r in gc.get_referrers(t) if r is not tensors][:3]
        lines.append(f"  {tuple(t.shape)} {t.dtype} {t.untyped_storage().nbytes() / 2**20:.2f} MiB, held by {refs}")
    return "\n".join(lines)
