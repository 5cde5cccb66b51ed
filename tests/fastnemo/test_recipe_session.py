"""One model, three jobs: a whole recipe (SFT, evaluation, distillation, DAPO) loads the model once, and
what generation samples from is the LoRA the last training stage left in memory."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from fastnemo.config import load_recipe
from fastnemo.recipe import run_recipe
from fastnemo.session import ModelSession

# data -> SFT -> eval -> distill -> DAPO -> eval on 12 generated rows, each stage as small as it goes
KEYS = {
    "name": "one-model", "rows": None, "data": {"n": 12},
    "sft": {"learning_rate": 5e-3, "max_steps": 2, "batch_size": 2},
    "eval": {"n_generated": 6, "sampling": {"max_tokens": 8}},
    "distill": {"prompts": 4, "k": 2, "max_tokens": 8},
    "grpo": {"prompts": 4, "max_steps": 1, "group_size": 2, "batch_prompts": 1, "max_tokens": 8,
             "learning_rate": 1e-2, "dynamic_sampling": False},
}


def test_a_whole_recipe_loads_one_model_and_generates_with_what_it_trained(tmp_path, tiny_recipe, monkeypatch):
    sessions = []
    original = ModelSession.load.__func__

    def recording_load(cls, *args, **kwargs):
        session = original(cls, *args, **kwargs)
        sessions.append(session)
        return session

    monkeypatch.setattr(ModelSession, "load", classmethod(recording_load))
    generated_with = []
    real_generate = ModelSession.generate

    def recording_generate(self, texts, sampling):
        generated_with.append({n: p.detach().clone() for n, p in self.model.named_parameters() if "lora_B" in n})
        return real_generate(self, texts, sampling)

    monkeypatch.setattr(ModelSession, "generate", recording_generate)

    stages = ["data", "sft", "eval", "distill", "grpo", "eval"]
    run = run_recipe(load_recipe(tiny_recipe(tmp_path, stages, **KEYS)))

    assert len(sessions) == 1, "the recipe loaded a second model"
    session = sessions[0]
    stages = run.manifest()["stages"]
    assert list(stages) == ["r1-data", "r1-sft", "r1-eval-sft", "r1-distill", "r1-grpo", "r1-eval-grpo"]

    # the last training stage's saved adapter IS the in-memory LoRA (no reload in between)
    saved = load_file(run.path / "r1-grpo" / "adapter" / "adapter_model.safetensors")
    live = {n: p for n, p in session.model.named_parameters() if "lora_B" in n}
    assert any("lora_B" in key for key in saved)
    for key, tensor in saved.items():
        if "lora_B" not in key:
            continue
        live_key = next(n for n in live if n.replace(".default", "").endswith(key.split("base_model.model.")[-1]))
        torch.testing.assert_close(live[live_key], tensor)

    # generation after SFT used the SFT-trained LoRA (B no longer zero: a fresh LoRA has B = 0), and the
    # final evaluation used exactly the live weights DAPO left. (A tiny random model earns no reward, so
    # DAPO's advantages are zero here: tests/fastnemo/test_grpo.py plants rewards to show DAPO steps
    # change the weights generation uses next.)
    first_eval, last_eval = generated_with[0], generated_with[-1]
    assert any(t.abs().sum() > 0 for t in first_eval.values())
    assert all(torch.equal(last_eval[n], live[n]) for n in last_eval)
