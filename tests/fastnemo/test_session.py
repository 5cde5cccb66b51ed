"""The model session on the tiny nemotron_h: LoRA targets train, PEFT's refusals surface, the chat prompt is
the competition's, adapters save safely and reload, generation is batch-independent."""

from __future__ import annotations

import json

import pytest
import torch

from fastnemo.config import GenerationConfig, LoraConfig, ModelConfig, SamplingConfig
from fastnemo.session import ModelSession
from fastnemo.targets import DEFAULT_TARGETS
from puzzles import PROMPT_SUFFIX


def load(model_dir, targets=None, adapter=None, **lora):
    lora_cfg = LoraConfig(rank=4, alpha=8, **lora)
    if targets is not None:
        lora_cfg.target_modules = targets
    return ModelSession.load(model_dir, ModelConfig(path=str(model_dir), dtype="float32"), lora_cfg,
                             GenerationConfig(batch_size=8), adapter=adapter)


def lm_batch(session, n: int = 2):
    texts = [session.chat_prompt(f"puzzle {i}: 0101 -> 1010") + f"reasoning {i}</think>\\boxed{{{i}}}"
             for i in range(n)]
    session.tokenizer.padding_side = "right"
    enc = session.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return {**enc, "labels": labels}


def lora_params(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if "lora_A" in n or "lora_B" in n}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_every_targeted_lora_weight_receives_a_gradient(tiny_session, checkpointing):
    """The check DEFAULT_TARGETS' comment in fastnemo/targets.py refers to."""
    model = tiny_session.model
    params = lora_params(model)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in params}
    assert adapted == set(DEFAULT_TARGETS)  # every default target exists in nemotron_h and got a LoRA
    assert all(p.requires_grad for p in params.values())
    assert not any(p.requires_grad for n, p in model.named_parameters() if n not in params)  # base frozen
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    batch = lm_batch(tiny_session)
    opt = torch.optim.SGD(list(params.values()), lr=1e-2)
    # lora_B starts at zero, so before one step lora_A gets no gradient: step once, then look
    model(**batch).loss.backward()
    opt.step()
    opt.zero_grad()
    assert all(p.abs().sum() > 0 for n, p in params.items() if "lora_B" in n)
    model(**batch).loss.backward()
    no_grad = [n for n, p in params.items() if p.grad is None or p.grad.abs().sum() == 0]
    assert not no_grad, f"LoRA weights without gradient: {no_grad}"


def test_conv1d_still_refused_out_proj_now_trains(tiny_model_dir):
    with pytest.raises(ValueError, match="conv1d"):
        load(tiny_model_dir, targets=["q_proj", "conv1d"])
    s = load(tiny_model_dir, targets=["q_proj", "out_proj"])  # fastnemo.lora routes it past the fused kernel
    assert any("out_proj.lora_A" in n for n, _ in s.model.named_parameters())


def test_nonexistent_target_names_the_module(tiny_model_dir):
    with pytest.raises(ValueError, match="gate_prj") as e:
        load(tiny_model_dir, targets=["q_proj", "gate_prj"])
    assert "q_proj" in str(e.value).split("available")[1]  # lists what does exist


def test_load_needs_a_model_folder(tmp_path, tiny_model_dir):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load(tmp_path)
    (tmp_path / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no weights"):
        load(tmp_path)


def test_loads_are_counted(tiny_model_dir):
    before = ModelSession.loads
    load(tiny_model_dir)
    assert ModelSession.loads == before + 1


# ----------------------------------------------------------------------------------------- chat prompt


def test_chat_template_renders_turns_like_nemotron(tiny_session):
    tok = tiny_session.tokenizer
    text = tok.apply_chat_template(
        [{"role": "system", "content": "SYS"}, {"role": "user", "content": "USER"},
         {"role": "assistant", "content": "THINK</think>ANSWER"}], tokenize=False)
    assert text == ("<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nUSER<|im_end|>\n"
                    "<|im_start|>assistant\n<think>\nTHINK</think>ANSWER<|im_end|>\n")
    no_system = tok.apply_chat_template([{"role": "user", "content": "U"}], tokenize=False)
    assert no_system.startswith("<|im_start|>system\n<|im_end|>\n<|im_start|>user\nU")
    off = tok.apply_chat_template([{"role": "user", "content": "U"}], tokenize=False, add_generation_prompt=True,
                                  enable_thinking=False)
    assert off.endswith("<|im_start|>assistant\n<think></think>")


def test_chat_prompt_is_the_competition_prompt(tiny_session):
    p = tiny_session.chat_prompt("In Alice's Wonderland, 3 -> 4. Now 5?")
    assert p == ("<|im_start|>system\n<|im_end|>\n<|im_start|>user\nIn Alice's Wonderland, 3 -> 4. Now 5?"
                 + PROMPT_SUFFIX + "<|im_end|>\n<|im_start|>assistant\n<think>\n")
    assert p.endswith("<think>\n")
    tok = tiny_session.tokenizer
    ids = tok(p, add_special_tokens=False)["input_ids"]
    for special in ("<|im_start|>", "<|im_end|>", "<think>"):
        assert tok.convert_tokens_to_ids(special) in ids  # one token each, not spelled out in pieces
    assert tok.decode(ids) == p


# -------------------------------------------------------------------------------------------- adapters


def test_save_adapter_names_base_model_and_refuses_overwrite(tiny_session, tmp_path):
    out = tiny_session.save_adapter(tmp_path / "adapter")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == ModelConfig.base_model_name
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8 and set(cfg["target_modules"]) == set(DEFAULT_TARGETS)
    assert (out / "adapter_model.safetensors").stat().st_size > 0
    before = (out / "adapter_model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        tiny_session.save_adapter(out)
    assert (out / "adapter_model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no temp folder left behind


def test_saved_adapter_reloads_trainable_with_its_weights(tiny_session, tiny_model_dir, tmp_path):
    with torch.no_grad():
        for p in lora_params(tiny_session.model).values():
            p.normal_(0, 0.02)
    saved = {n: p.detach().clone() for n, p in lora_params(tiny_session.model).items()}
    out = tiny_session.save_adapter(tmp_path / "adapter")
    again = load(tiny_model_dir, adapter=out)
    got = lora_params(again.model)
    assert set(got) == set(saved)
    for n, p in got.items():
        assert torch.equal(p, saved[n]), n
        assert p.requires_grad, n  # a resumed run keeps training it


# ------------------------------------------------------------------------------------------ generation


def test_generate_shapes_and_finish_reasons(tiny_session):
    out = tiny_session.generate(["a", "b c d"], SamplingConfig(n=2, temperature=1.0, max_tokens=5, seed=1))
    assert len(out) == 2 and all(len(cs) == 2 for cs in out)
    for c in (c for cs in out for c in cs):
        assert c.finish_reason in ("stop", "length") and 0 <= c.n_tokens <= 5
        assert c.finish_reason == "stop" or c.n_tokens == 5
        assert "<|im_end|>" not in c.text


def test_greedy_generation_does_not_depend_on_the_batch(tiny_session):
    """Left padding must not change a prompt's output (Mamba layers included)."""
    prompts = ["short", "a much longer prompt about bits 0101 and the rules of the wonderland"]
    sampling = SamplingConfig(max_tokens=6)
    together = tiny_session.generate(prompts, sampling)
    alone = [tiny_session.generate([p], sampling)[0] for p in prompts]
    assert [cs[0].text for cs in together] == [cs[0].text for cs in alone]


def test_generate_restores_training_mode(tiny_session):
    tiny_session.model.train()
    tiny_session.generate(["x"], SamplingConfig(max_tokens=2))
    assert tiny_session.model.training
