"""fastnemo.lora on the tiny nemotron_h: the grouped expert LoRA equals PEFT's ParamWrapper (outputs and
gradients), per-expert unstacking equals the stacked adapter, lm_head's LoRA trains through TRL's fused head,
out_proj's LoRA trains, and unservable targets are refused before any model loads."""

from __future__ import annotations

import copy

import pytest
import torch

from fastnemo import lora, sft, targets
from fastnemo.config import GenerationConfig, LoraConfig, ModelConfig, SFTConfig
from fastnemo.session import ModelSession
from fastnemo.tiny import tiny_config

FULL = list(targets.FULL_TARGETS)


def peft_expert_model(seed: int = 0):
    """A tiny nemotron_h whose expert width (48) differs from its hidden width (64), so a transposed factor
    cannot pass, with PEFT LoRA on q_proj and the fused experts and non-zero B."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_config(tiny_config(256, moe_intermediate_size=48)).float()
    model = get_peft_model(base, PeftLoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"],
                                                target_parameters=list(targets.EXPERT_PARAMETERS)))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    return model


def test_grouped_experts_match_peft_param_wrapper():
    reference = peft_expert_model()
    grouped = copy.deepcopy(reference)
    assert lora.install_grouped_expert_lora(grouped) == 2  # both MoE layers
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
    out_ref, out = reference(input_ids=ids).logits, grouped(input_ids=ids).logits
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    out_ref.square().mean().backward()
    out.square().mean().backward()
    ref_grads = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    grads = {n: p.grad for n, p in grouped.named_parameters() if p.grad is not None}
    assert set(grads) == set(ref_grads) and any("experts" in n for n in grads)
    for n, ref in ref_grads.items():
        torch.testing.assert_close(grads[n], ref, rtol=1e-4, atol=1e-6, msg=n)


def test_grouped_experts_off_when_adapter_disabled():
    model = peft_expert_model()
    lora.install_grouped_expert_lora(model)
    ids = torch.randint(0, 256, (1, 16))
    with model.disable_adapter():
        off = model(input_ids=ids).logits
    base = model.get_base_model()
    for m in base.modules():  # the base model's output: LoRA B zeroed
        if hasattr(m, "lora_B"):
            for b in m.lora_B.values():
                torch.nn.init.zeros_(b.weight)
    torch.testing.assert_close(off, model(input_ids=ids).logits)


def test_unstacked_per_expert_equals_stacked():
    """The reshape pack uses: applying (A_e, B_e) per expert on its tokens gives what PEFT's stacked
    ParamWrapper gives for the same inputs (its own delta weight, expert by expert)."""
    model = peft_expert_model()
    experts = model.get_base_model().model.layers[1].mixer.experts
    for wrapper in (experts, experts.base_layer):  # down_proj (outer), up_proj (inner)
        name = wrapper.parameter_name
        delta = wrapper.get_delta_weight("default")  # (E, out, in), PEFT's own stacked math
        w = getattr(experts.base_layer.base_layer, name)
        pairs = lora.unstack(wrapper.lora_A["default"].weight, wrapper.lora_B["default"].weight, w.shape[0])
        x = torch.randn(5, w.shape[2])
        for e, (a, b) in enumerate(pairs):
            assert a.shape == (4, w.shape[2]) and b.shape == (w.shape[1], 4)
            per_expert = (x @ a.T) @ b.T * wrapper.scaling["default"]
            torch.testing.assert_close(per_expert, x @ delta[e].T, rtol=1e-5, atol=1e-6)
        a2, b2 = lora.restack(pairs)
        assert torch.equal(a2, wrapper.lora_A["default"].weight) and torch.equal(b2, wrapper.lora_B["default"].weight)


ROWS = [
    {"prompt": "In Alice's Wonderland, 12 -> 21, 45 -> 54. Now 34?",
     "completion": "The digits are reversed.</think>\n\\boxed{43}"},
    {"prompt": "In Alice's Wonderland, 2 -> 4, 3 -> 6. Now 5?",
     "completion": "Each number is doubled.</think>\n\\boxed{10}"},
] * 4


def session(model_dir, targets, experts=False):
    return ModelSession.load(model_dir, ModelConfig(path=str(model_dir), dtype="float32",
                                                    gradient_checkpointing=False),
                             LoraConfig(rank=4, alpha=8, target_modules=targets, train_experts=experts),
                             GenerationConfig(engine="hf", batch_size=8))


def sft_cfg(steps=6) -> SFTConfig:
    return SFTConfig(learning_rate=1e-2, max_steps=steps, batch_size=4, grad_accum=1, max_length=256, warmup=0.0,
                     save_steps=100, logging_steps=1)


def test_lm_head_lora_trains_in_sft_and_helps(tiny_model_dir, tmp_path):
    """TRL's fused head sees lm_head's LoRA: its B moves, and on the same rows and seed the loss falls
    further than without it."""
    with_head = session(tiny_model_dir, ["q_proj", "lm_head"])
    head = with_head.model.get_output_embeddings()
    b0 = head.lora_B["default"].weight.detach().clone()
    logs_head, logs_base = [], []
    sft.train(with_head, ROWS, sft_cfg(), tmp_path / "a", log=logs_head.append)
    assert (head.lora_B["default"].weight - b0).abs().max() > 0
    without = session(tiny_model_dir, ["q_proj"])
    sft.train(without, ROWS, sft_cfg(), tmp_path / "b", log=logs_base.append)
    loss = [m["loss"] for m in logs_head if "loss" in m]
    base_loss = [m["loss"] for m in logs_base if "loss" in m]
    assert loss[0] == pytest.approx(base_loss[0], rel=1e-4)  # same start: B is zero
    assert loss[-1] < base_loss[-1]


def test_lm_head_adapter_holds_only_its_lora(tiny_model_dir, tmp_path):
    from safetensors import safe_open

    s = session(tiny_model_dir, ["q_proj", "lm_head"])
    out = s.save_adapter(tmp_path / "ad")
    with safe_open(out / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    head = [k for k in keys if "lm_head" in k]
    assert sorted(head) == ["base_model.model.lm_head.lora_A.weight", "base_model.model.lm_head.lora_B.weight"]
    assert not any("base_layer" in k or "embed" in k for k in keys)


def test_lm_head_checkpoints_hold_only_lora_and_resume(tiny_model_dir, tmp_path):
    """The Trainer's checkpoints leave the frozen base lm_head out (PEFT's "auto" would save it whole), and
    training resumes from them."""
    from safetensors import safe_open

    s = session(tiny_model_dir, ["q_proj", "lm_head"])
    cfg = sft_cfg(steps=2)
    cfg.save_steps = 1
    sft.train(s, ROWS, cfg, tmp_path / "ck")
    ckpt = tmp_path / "ck" / "checkpoint-2"
    with safe_open(ckpt / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert "base_model.model.lm_head.lora_B.weight" in keys
    assert not any("base_layer" in k or "embed" in k or k.endswith("lm_head.weight") for k in keys), keys
    assert "save_pretrained" not in s.model.__dict__  # the lean save is undone after training
    cfg.max_steps = 3
    out = sft.train(s, ROWS, cfg, tmp_path / "ck")
    assert out["steps"] == 3 and (tmp_path / "ck" / "checkpoint-3").exists()


def test_full_target_set_trains_every_target(tiny_model_dir, tmp_path):
    """The winners' set (every servable module, the routed experts included) on the tiny model: after a few
    SFT steps every LoRA tensor has moved."""
    s = session(tiny_model_dir, FULL, experts=True)
    params = {n: p.detach().clone() for n, p in s.model.named_parameters() if p.requires_grad}
    kinds = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in params}
    assert set(FULL) - {"up_proj", "down_proj"} <= kinds and "experts" in kinds and "base_layer" in kinds
    sft.train(s, ROWS, sft_cfg(4), tmp_path / "ckpt")
    still = [n for n, p in s.model.named_parameters() if p.requires_grad and torch.equal(p.detach(), params[n])]
    assert not still, f"LoRA tensors that never moved: {still}"


def test_the_routes_do_not_keep_a_dropped_model_alive(tiny_model_dir):
    """The lm_head and out_proj routes find their module by weight; a dropped model must leave them (a held
    module would keep the whole model's GPU segment: fastnemo.patches.bitsandbytes)."""
    import gc
    import weakref

    s = session(tiny_model_dir, ["lm_head", "out_proj", "q_proj"])
    assert len(lora._LM_HEADS) >= 1 and len(lora._OUT_PROJS) >= 1
    head = weakref.ref(s.model.get_output_embeddings())
    del s
    gc.collect()
    assert head() is None and len(lora._LM_HEADS) == 0 and len(lora._OUT_PROJS) == 0


def test_out_proj_lora_gets_gradient_and_zero_lora_matches_base(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    s = session(tiny_model_dir, ["out_proj"])
    ids = torch.randint(0, 200, (1, 12))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    torch.testing.assert_close(s.model(input_ids=ids).logits, base(input_ids=ids).logits)  # B = 0
    s.model.train()
    s.model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in s.model.named_parameters() if "out_proj.lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_fused_kernel_wrapper_applies_the_module():
    """The fused-path shim: asked with a LoRA'd out_proj's weight, it runs the kernel without the
    projection and applies the module (here a stand-in kernel that records what it was given)."""
    seen = {}

    def kernel(x, outproj_weight=None, outproj_bias=None):
        seen["w"] = outproj_weight
        return x if outproj_weight is None else x @ outproj_weight.T

    class Fake(torch.nn.Module):  # a PEFT-like LoRA linear
        def __init__(self):
            super().__init__()
            self.base_layer = torch.nn.Linear(8, 4, bias=False)

        def forward(self, x):
            return self.base_layer(x) + 1.0

    m = Fake()
    lora._OUT_PROJS[id(m.base_layer.weight)] = m
    try:
        fused = lora._fused_without_out_proj(kernel)
        x = torch.randn(2, 8)
        torch.testing.assert_close(fused(x, outproj_weight=m.base_layer.weight), m(x))
        assert seen["w"] is None
        other = torch.randn(4, 8)
        torch.testing.assert_close(fused(x, outproj_weight=other), x @ other.T)
    finally:
        lora._OUT_PROJS.pop(id(m.base_layer.weight))


@pytest.mark.parametrize(("targets", "rank", "needle"), [
    (["q_proj", "conv1d"], 8, "conv1d"),
    (["q_proj", "gate"], 8, "router"),
    (["q_proj", "gate_prj"], 8, "gate_prj"),
    (["q_proj"], 33, "rank"),
])
def test_bad_lora_refused_before_the_model_loads(tmp_path, targets, rank, needle):
    (tmp_path / "config.json").write_text("{}")  # not a loadable model: the check must come first
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=needle):
        ModelSession.load(tmp_path, ModelConfig(path=str(tmp_path)), LoraConfig(rank=rank, target_modules=targets))


def test_lm_head_lora_trains_in_dapo(tiny_model_dir, tmp_path):
    """DAPO's log-probs also come from TRL's fused head: lm_head's B moves after real DAPO steps."""
    from fastnemo import grpo
    from fastnemo.config import GRPOConfig

    s = session(tiny_model_dir, ["q_proj", "lm_head"])
    b = s.model.get_output_embeddings().lora_B["default"].weight
    b0 = b.detach().clone()
    rows = [{"prompt": s.chat_prompt(f"puzzle {i}: 2 + {i} ="), "answer": str(2 + i), "category": "gravity",
             "id": f"p{i}"} for i in range(2)]

    def reward(prompts, completions, **kwargs):  # always a signal inside each group of 2
        return [float(i % 2) for i in range(len(prompts))]

    cfg = GRPOConfig(group_size=2, batch_prompts=1, max_tokens=4, learning_rate=5e-2, max_steps=1, save_steps=100,
                     overlong="penalty")
    grpo.make_trainer(s, cfg, rows, tmp_path, rewards=([reward], [1.0])).train()
    assert (b - b0).abs().max() > 0


def test_packed_zip_reloads_to_the_same_logits(tiny_model_dir, tmp_path):
    """An unzipped submission (vLLM layout: backbone names, per-expert keys) loads back as a trainable session
    with the logits of the session that saved it."""
    import zipfile

    from fastnemo.pack import pack

    s = session(tiny_model_dir, FULL, experts=True)
    with torch.no_grad():
        for n, p in s.model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    zip_path = pack(s.save_adapter(tmp_path / "ad"), tmp_path / "sub.zip")
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(tmp_path / "unzipped")
    again = ModelSession.load(tiny_model_dir, ModelConfig(path=str(tiny_model_dir), dtype="float32"),
                              LoraConfig(rank=4, alpha=8), GenerationConfig(engine="hf"), adapter=tmp_path / "unzipped")
    ids = torch.randint(0, 200, (1, 16))
    s.model.eval()
    again.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(again.model(input_ids=ids).logits, s.model(input_ids=ids).logits)
    assert sum(p.numel() for p in again.model.parameters() if p.requires_grad) == sum(
        p.numel() for p in s.model.parameters() if p.requires_grad)


def test_recipe_with_the_full_target_set_trains_and_packs(tmp_path, tiny_model_dir, tiny_recipe):
    """The whole recipe (data -> sft -> pack) with the winners' set and train_experts on the tiny model: the
    submission it packs is vLLM's layout and verifies (loaded back into PEFT); the trainable count is the
    plan's."""
    import json
    import zipfile

    from fastnemo import plan as P
    from fastnemo.config import load_recipe
    from fastnemo.pack import verify
    from fastnemo.recipe import run_recipe

    path = tiny_recipe(tmp_path, ["data", "sft", "pack"], name="full",
                       lora={"target_modules": FULL, "train_experts": True})
    run_recipe(load_recipe(path))
    (z,) = (tmp_path / "run").rglob("submission.zip")
    report = verify(z, tiny_model_dir, None, load=True)
    assert report["experts"] == 2 * 4 * 2 and set(report["target_modules"]) == set(FULL)
    with zipfile.ZipFile(z) as zf:
        assert sorted(zf.namelist()) == ["adapter_config.json", "adapter_model.safetensors"]
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert report["params"] == P.lora_params(cfg, cfg["layers_block_type"], 4, FULL, True)  # 19,488
