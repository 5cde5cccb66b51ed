"""DAPO on the tiny model: dynamic sampling drops zero-signal groups and refills, real steps train the
session's one model in place, rollouts through the engine, and a resumed run."""

from __future__ import annotations

import torch

from fastnemo import dapo, grpo
from fastnemo.config import GRPOConfig, Recipe

G = 2  # completions per prompt: the smallest group keeps the CPU tests quick


def rows_for(session, n, flat: bool, tag: str):
    """Short prompts (the tiny model's CPU prefill dominates these tests); rewards are planted anyway."""
    cats = ("gravity", "cipher")
    return [{"prompt": session.chat_prompt(f"{tag} puzzle {i}: 2 + {i} ="), "answer": str(2 + i),
             "category": cats[i % 2], "id": f"{tag}{i}", "flat": flat} for i in range(n)]


def planted_reward(log: list | None = None):
    """Deterministic rewards: every completion of a "flat" prompt scores 0 (a group with no signal), the
    completions of another prompt score 0, 1, ... in group order (always a signal)."""

    def planted(prompts, completions, flat, **kwargs):
        if log is not None:
            log.append(list(prompts))
        return [0.0 if f else float(i % G) for i, f in enumerate(flat)]

    return planted


def small_cfg(**kw):
    # overlong "penalty", not "mask": a random model's completions are all truncated, masking leaves no loss
    base = {"group_size": G, "batch_prompts": 2, "max_tokens": 4, "learning_rate": 5e-2, "max_steps": 2,
            "save_steps": 100, "overlong": "penalty"}
    return GRPOConfig(**{**base, **kw})


def test_group_signal():
    r = torch.tensor([1.0, 1.0, 0.0, 1.0, float("nan"), 2.0, 3.0, 3.0])
    assert dapo.group_signal(r, 2).tolist() == [False, True, False, False]
    assert dapo.group_signal(r, 4).tolist() == [True, True]


def test_join_batches_pads_and_renormalizes():
    a = {"prompt_ids": torch.tensor([[5, 6], [7, 8]]), "prompt_mask": torch.ones(2, 2, dtype=torch.long),
         "completion_ids": torch.tensor([[1, 2, 3], [4, 0, 0]]),
         "completion_mask": torch.tensor([[1, 1, 1], [1, 0, 0]]),
         "advantages": torch.tensor([1.0, -1.0]), "num_items_in_batch": torch.tensor(4)}
    b = {"prompt_ids": torch.tensor([[9, 9, 9]]), "prompt_mask": torch.ones(1, 3, dtype=torch.long),
         "completion_ids": torch.tensor([[7]]), "completion_mask": torch.tensor([[1]]),
         "advantages": torch.tensor([0.5]), "num_items_in_batch": torch.tensor(1)}
    out = dapo.join_batches([(a, [1]), (b, [0])], pad_id=0)
    assert out["prompt_ids"].tolist() == [[0, 7, 8], [9, 9, 9]]  # prompts left-padded
    assert out["prompt_mask"].tolist() == [[0, 1, 1], [1, 1, 1]]
    assert out["completion_ids"].tolist() == [[4, 0, 0], [7, 0, 0]]  # completions right-padded
    assert out["completion_mask"].tolist() == [[1, 0, 0], [1, 0, 0]]
    assert out["advantages"].tolist() == [-1.0, 0.5]
    assert out["num_items_in_batch"].item() == 2  # the DAPO token count of the rows kept


def unsloth_window(batch: dict, pad_id: int) -> torch.Tensor:
    """The token ids in the window Unsloth's GRPO scores (unsloth_zoo rl_replacements, as read there): prompt
    + completion with every pad moved to the right, the last completion-width + max_left_pad columns."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    packed = torch.gather(ids, 1, torch.argsort(ids != pad_id, dim=1, descending=True, stable=True))
    return packed[:, -(batch["completion_ids"].shape[1] + int(batch["max_left_pad"].max())):]


def unsloth_batch(prompts: list[list[int]], completions: list[list[int]], pad_id: int = 0) -> dict:
    """A scored batch in Unsloth's layout whose "log-probs" are the window's token ids, so that alignment is
    visible: after a join, each completion token must still sit on its own log-prob."""
    P, C = max(map(len, prompts)), max(map(len, completions))
    b = {"prompt_ids": torch.tensor([[pad_id] * (P - len(p)) + p for p in prompts]),
         "prompt_mask": torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts]),
         "completion_ids": torch.tensor([c + [pad_id] * (C - len(c)) for c in completions]),
         "completion_mask": torch.tensor([[1] * len(c) + [0] * (C - len(c)) for c in completions]),
         "advantages": torch.arange(len(prompts), dtype=torch.float), "sampling_per_token_logps": None,
         "max_left_pad": torch.full((len(prompts), 1), P - min(map(len, prompts)))}
    b["old_per_token_logps"] = unsloth_window(b, pad_id).float()
    return b


def test_join_batches_keeps_unsloth_logprobs_on_their_tokens():
    a = unsloth_batch([[5, 6, 7], [8]], [[11, 12], [13, 14, 15, 16]])
    b = unsloth_batch([[9, 9, 9, 9, 9], [21, 22]], [[31], [41, 42]])
    for batch in (a, b):  # Unsloth's per-row flag when rollout log-probs serve as the old ones
        batch["unsloth_rollout_logps_as_old"] = torch.ones(2, dtype=torch.bool)
    out = dapo.join_batches([(a, [1]), (b, [0, 1])], pad_id=0)
    window = unsloth_window(out, pad_id=0)
    assert out["old_per_token_logps"].shape == window.shape  # completions + the joined max_left_pad
    assert out["max_left_pad"].flatten().tolist() == [4, 4, 4]  # prompt [8] padded to 5 columns
    # Unsloth's completion mask over the window: from column max_left_pad - left padding on, pads excluded
    left = (out["prompt_mask"] == 0).sum(1, keepdim=True)
    completion = (torch.arange(window.shape[1]) >= 4 - left) & (window != 0)
    assert completion.sum() == out["completion_mask"].sum()
    assert torch.equal(out["old_per_token_logps"][completion], window[completion].float())
    assert out["sampling_per_token_logps"] is None
    assert out["advantages"].tolist() == [1.0, 0.0, 1.0]
    assert out["unsloth_rollout_logps_as_old"].tolist() == [True, True, True]


def test_dynamic_sampling_drops_flat_groups_and_refills(tiny_session, tmp_path):
    flat = rows_for(tiny_session, 2, True, "flat")
    signal = rows_for(tiny_session, 3, False, "sig")
    seen = []
    trainer = grpo.make_trainer(tiny_session, small_cfg(), flat + signal, tmp_path,
                                rewards=([planted_reward(seen)], [1.0]))
    trainer._refill_rows = signal  # refills come from prompts with a signal only: a deterministic outcome
    trainer.model.train()
    batch = [dict(r) for r in flat for _ in range(G)]  # the sampler dealt two zero-signal groups
    out = trainer._generate_and_score_completions(batch)

    assert out["advantages"].shape == (2 * G,) and bool((out["advantages"] != 0).all())
    assert seen[0] == [r["prompt"] for r in batch]  # the flat groups were generated and scored first
    refill = seen[1]
    assert set(refill) <= {r["prompt"] for r in signal} and len(refill) == 2 * G
    tok = tiny_session.tokenizer
    kept = [tok.decode(ids[mask.bool()], skip_special_tokens=False)
            for ids, mask in zip(out["prompt_ids"], out["prompt_mask"])]
    assert kept == refill  # the batch holds exactly the refilled groups, in order
    assert out["num_items_in_batch"].item() == out["completion_mask"].sum().item()
    m = trainer._metrics["train"]
    assert m["dynamic/dropped_share"] == [0.5] and m["dynamic/refills"] == [1]
    assert m["dynamic/zero_signal_kept"] == [0]


def test_dynamic_sampling_gives_up_after_max_refills(tiny_session, tmp_path):
    flat = rows_for(tiny_session, 3, True, "flat")
    seen = []
    trainer = grpo.make_trainer(tiny_session, small_cfg(), flat, tmp_path, max_refills=1,
                                rewards=([planted_reward(seen)], [1.0]))
    trainer.model.train()
    out = trainer._generate_and_score_completions([dict(r) for r in flat[:2] for _ in range(G)])
    assert len(seen) == 2  # one try plus one refill, then it stops
    assert out["advantages"].shape == (2 * G,) and bool((out["advantages"] == 0).all())  # full, no signal
    m = trainer._metrics["train"]
    assert m["dynamic/dropped_share"] == [1.0] and m["dynamic/zero_signal_kept"] == [2]


def lora_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_dapo_steps_train_the_one_session_model(tiny_session, tmp_path):
    from fastnemo.session import ModelSession

    loads = ModelSession.loads
    model = tiny_session.model
    probe = tiny_session.tokenizer(tiny_session.chat_prompt("1 + 1 ="), return_tensors="pt")
    with torch.no_grad():
        before_logits = model(**probe).logits
    before = lora_state(model)
    records = []
    rows = rows_for(tiny_session, 4, False, "sig")
    # two optimizer steps on one rollout batch: the second is off-policy, so the clip range is exercised
    trainer = grpo.make_trainer(tiny_session, small_cfg(batch_prompts=1), rows, tmp_path, log=records.append,
                                rewards=([planted_reward()], [1.0]), updates_per_generation=2)
    assert trainer.model is model  # TRL wraps the session's model itself: no copy, no second model
    trainer.train()

    after = lora_state(tiny_session.model)
    assert tiny_session.model is model and ModelSession.loads == loads
    assert any(not torch.equal(before[n], after[n]) for n in before)
    with torch.no_grad():
        after_logits = tiny_session.model(**probe).logits
    assert not torch.allclose(before_logits, after_logits)  # what the engine generates with next
    steps = [r for r in records if "loss" in r]
    assert len(steps) == 2
    for key in ("reward", "dynamic/dropped_share", "completions/length_mean", "completions/length_p95",
                "entropy", "clip_ratio/region_mean", "time/generate_s", "time/train_s", "memory/peak_gb"):
        assert key in steps[0], key
    assert any(k.startswith("reward/") and k.endswith("/mean") for k in steps[0])
    assert steps[0]["dynamic/dropped_share"] == 0.0
    assert "clip_ratio/region_mean" in steps[1]  # the off-policy update logs its clipping too
    assert steps[0]["time/generate_s"] > 0 and steps[1]["time/generate_s"] == 0  # one rollout, two updates


def test_engine_rollouts(tiny_session, tmp_path):
    """Rollouts through session.engine (the route vLLM takes on GPU), here with the hf engine."""
    rows = rows_for(tiny_session, 2, False, "sig")
    synced = []
    tiny_session.engine.sync_weights = lambda: synced.append(True)
    trainer = grpo.make_trainer(tiny_session, small_cfg(max_steps=2, batch_prompts=1), rows, tmp_path,
                                rollouts="engine", rewards=([planted_reward()], [1.0]))
    assert trainer.rollout_func is not None
    before = lora_state(tiny_session.model)
    trainer.train()
    after = lora_state(tiny_session.model)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert len(synced) == 1  # before step 2's rollout: step 1 changed the weights


def test_train_resumes_from_checkpoint(tiny_session, tmp_path):
    recipe = Recipe(grpo=small_cfg(max_steps=1, save_steps=1, dynamic_sampling=False, overlong="mask",
                                   prompts=2, batch_prompts=1))
    summary = grpo.train(tiny_session, recipe, tmp_path, seed=0)
    assert summary["steps"] == 1 and (tmp_path / "checkpoints" / "checkpoint-1").is_dir()
    recipe.grpo.max_steps = 2
    records = []
    summary = grpo.train(tiny_session, recipe, tmp_path, seed=0, log=records.append)
    assert summary["steps"] == 2 and (tmp_path / "checkpoints" / "checkpoint-2").is_dir()
    assert [r["step"] for r in records if "reward" in r] == [2]  # step 1 was not redone

    # killed after the last checkpoint, before the adapter: the rerun takes that checkpoint, no step 3
    after = {n: t.detach().clone() for n, t in tiny_session.model.named_parameters() if "lora_" in n}
    with torch.no_grad():
        for n, t in tiny_session.model.named_parameters():
            if "lora_" in n:
                t.zero_()
    records.clear()
    summary = grpo.train(tiny_session, recipe, tmp_path, seed=0, log=records.append)
    assert summary["steps"] == 2 and records == [] and summary["reward_end"] is not None
    assert not (tmp_path / "checkpoints" / "checkpoint-3").exists()
    for n, t in tiny_session.model.named_parameters():
        if "lora_" in n:
            assert torch.equal(t, after[n]), n  # the checkpoint's very weights


def test_max_refills_is_the_recipe_key(tiny_session, tmp_path):
    flat = rows_for(tiny_session, 2, True, "flat")
    trainer = grpo.make_trainer(tiny_session, small_cfg(max_refills=0), flat, tmp_path,
                                rewards=([planted_reward()], [1.0]))
    assert trainer.max_refills == 0
    trainer.model.train()
    trainer._generate_and_score_completions([dict(r) for r in flat for _ in range(G)])
    assert trainer._metrics["train"]["dynamic/refills"] == [0]  # no refill round was allowed


def test_dapo_module_refuses_another_trl_version():
    """DAPOTrainer overrides private TRL methods: another TRL must fail at import, naming both versions."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    pinned = re.search(r'"trl==([^"]+)"', (repo / "pyproject.toml").read_text()).group(1)
    from fastnemo import dapo

    assert dapo.TRL_VERSION == pinned  # the guard and the package pin agree
    code = "import trl\ntrl.__version__ = '0.0.1'\nimport fastnemo.dapo\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo, check=False)
    assert r.returncode != 0 and "ImportError" in r.stderr
    assert "0.0.1" in r.stderr and f"trl=={pinned}" in r.stderr


def test_too_few_goldilocks_prompts_are_topped_up_to_one_step(tiny_session, tmp_path):
    from fastnemo.distill import generate_puzzles
    from puzzles.files import write_jsonl

    one = generate_puzzles(1, 0)[0]
    path = tmp_path / "goldilocks.jsonl"
    write_jsonl(path, [{"id": one.id, "prompt": one.prompt, "answer": one.answer, "category": one.category}])
    recipe = Recipe()
    recipe.grpo = GRPOConfig(prompts=8, batch_prompts=3)
    rows = grpo.prompt_rows(tiny_session, recipe, path, seed=0)
    assert len(rows) == 3 and rows[0]["id"] == one.id and len({r["id"] for r in rows}) == 3
