"""SFT on the tiny model: the loss falls, only completion tokens are trained on, a checkpoint resumes."""

from __future__ import annotations

import pytest
import torch

from fastnemo import sft
from fastnemo.config import GenerationConfig, LoraConfig, ModelConfig, SFTConfig
from fastnemo.session import ModelSession

ROWS = [
    {"prompt": "In Alice's Wonderland, 12 -> 21, 45 -> 54. Now 34?",
     "completion": "The digits are reversed.</think>\n\\boxed{43}"},
    {"prompt": "In Alice's Wonderland, 2 -> 4, 3 -> 6. Now 5?",
     "completion": "Each number is doubled.</think>\n\\boxed{10}"},
] * 4


def fresh_session(model_dir) -> ModelSession:
    """What a new process loads: the base model with a fresh LoRA (a checkpoint restores the trained one)."""
    return ModelSession.load(model_dir, ModelConfig(path=str(model_dir), dtype="float32", gradient_checkpointing=False),
                             LoraConfig(rank=4, alpha=8), GenerationConfig(engine="hf"))


def cfg(**kw) -> SFTConfig:
    base = {"learning_rate": 1e-2, "max_steps": 4, "batch_size": 4, "grad_accum": 1, "max_length": 256,
            "warmup": 0.0, "save_steps": 100, "logging_steps": 1}
    return SFTConfig(**{**base, **kw})


@pytest.fixture()
def trainers(monkeypatch):
    """The SFTTrainer instances fastnemo.sft.train builds (the real TRL class, recorded as it is made)."""
    import trl

    made = []

    class Recorded(trl.SFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(trl, "SFTTrainer", Recorded)
    return made


def fixed_batch(trainer):
    return trainer.data_collator([trainer.train_dataset[i] for i in range(2)])


def test_loss_falls_and_only_completions_are_labelled(tiny_session, trainers, tmp_path):
    logs = []
    summary = sft.train(tiny_session, ROWS, cfg(), tmp_path / "ckpt", log=logs.append)
    assert summary["steps"] == 4 and summary["rows"] == len(ROWS)
    (trainer,) = trainers
    assert trainer.model is tiny_session.model  # trains the session's one model in place

    tok = tiny_session.tokenizer
    batch = fixed_batch(trainer)
    for i in range(2):
        prompt_ids = tok(tiny_session.chat_prompt(ROWS[i]["prompt"]), add_special_tokens=False)["input_ids"]
        n = len(prompt_ids)
        ids, labels = batch["input_ids"][i], batch["labels"][i]
        assert ids[:n].tolist() == prompt_ids  # the prompt exactly as evaluation renders it
        assert (labels[:n] == -100).all(), "prompt tokens must carry no loss"
        real = int(batch["attention_mask"][i].sum()) if "attention_mask" in batch else len(ids)
        assert labels[n:real].tolist() == ids[n:real].tolist()  # every completion token is a target
        assert tok.decode(ids[n:real]) == ROWS[i]["completion"] + tok.eos_token  # TRL appends end-of-turn
        assert (labels[real:] == -100).all()

    model = tiny_session.model
    model.eval()
    with torch.no_grad():
        after = model(**batch).loss.item()
        with model.disable_adapter():  # a fresh LoRA (B = 0) is the base model: the loss before training
            before = model(**batch).loss.item()
    assert after < before - 0.2, (before, after)  # deterministic: seeds fixed, one process
    losses = [r["loss"] for r in logs if "loss" in r]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert all("step" in r for r in logs)


def test_empty_data_is_an_error(tiny_session, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        sft.train(tiny_session, [], cfg(), tmp_path / "ckpt")


def test_prompts_longer_than_max_length_name_the_rows_and_the_fix(tiny_session, tmp_path):
    """TRL drops a row whose prompt fills max_length; when that is every row the sampler said "num_samples=0"."""
    with pytest.raises(ValueError, match=r"all 8 rows .* sft.max_length = 8 tokens \(first: row 1, \d+ tokens\)"
                       r".*raise sft.max_length"):
        sft.train(tiny_session, ROWS, cfg(max_length=8), tmp_path / "ckpt")


def test_resume_continues_the_step_count(tiny_session, tiny_model_dir, tmp_path):
    out = tmp_path / "ckpt"
    first = sft.train(tiny_session, ROWS, cfg(max_steps=2, save_steps=2), out)
    assert first["steps"] == 2
    assert sft.last_checkpoint(out).endswith("checkpoint-2")

    # a new process would load a fresh session: the checkpoint restores the LoRA, optimizer and step
    fresh = ModelSession.load(tiny_model_dir, ModelConfig(path=str(tiny_model_dir), dtype="float32",
                                                          gradient_checkpointing=False),
                              LoraConfig(rank=4, alpha=8), GenerationConfig(engine="hf"))
    logs = []
    second = sft.train(fresh, ROWS, cfg(max_steps=4, save_steps=2), out, log=logs.append)
    assert second["steps"] == 4
    steps = [r["step"] for r in logs if "loss" in r]
    assert steps == [3, 4], steps  # steps 1-2 were not trained again
    assert sft.last_checkpoint(out).endswith("checkpoint-4")


def test_resume_from_the_last_checkpoint_trains_no_step_past_max_steps(tiny_session, tiny_model_dir, tmp_path):
    out = tmp_path / "ckpt"
    first = sft.train(tiny_session, ROWS, cfg(max_steps=4, save_steps=2), out)
    done = {n: t.detach().clone() for n, t in tiny_session.model.named_parameters() if "lora_" in n}
    # killed after checkpoint-4, before the adapter was saved: a new process resumes
    logs, told = [], []
    fresh = fresh_session(tiny_model_dir)
    again = sft.train(fresh, ROWS, cfg(max_steps=4, save_steps=2), out, log=logs.append, on_resume=told.append)
    assert again["steps"] == 4 and told == [4] and logs == []  # loaded, not trained: no step 5
    assert again["train_loss"] == pytest.approx(first["train_loss"])  # the whole run's, from the checkpoint
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    for n, t in fresh.model.named_parameters():
        if "lora_" in n:
            assert torch.equal(t, done[n]), n  # exactly the uninterrupted run's weights

    # a lower max_steps (the stage never finished, so its new value is used): the checkpoint that matches
    third = fresh_session(tiny_model_dir)
    assert sft.train(third, ROWS, cfg(max_steps=2, save_steps=2), out)["steps"] == 2


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng_state.pth", "adapter_model.safetensors",
                                  "trainer_state.json"])
def test_a_checkpoint_with_any_file_that_does_not_load_is_passed_over_and_named(tiny_session, tmp_path, name):
    out = tmp_path / "ckpt"
    sft.train(tiny_session, ROWS, cfg(max_steps=4, save_steps=2), out)
    f = out / "checkpoint-4" / name
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    said = []
    assert sft.last_checkpoint(out, say=said.append) == str(out / "checkpoint-2")
    assert len(said) == 1 and f"checkpoint-4 is incomplete ({f}: " in said[0]
    f.unlink()
    assert sft.checkpoint_problem(out / "checkpoint-4") == f"{f}: missing"


def test_last_checkpoint_orders_by_step_and_skips_what_is_past_max_steps(tmp_path):
    assert sft.last_checkpoint(tmp_path) is None
    for step in (2, 10, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
    said = []
    assert sft.last_checkpoint(tmp_path, say=said.append) is None  # empty folders: nothing loads
    assert len(said) == 3 and "checkpoint-10 is incomplete" in said[0]  # newest first: numeric, not string
    assert sft.last_checkpoint(tmp_path, max_steps=4, say=said.append) is None
    assert "past max_steps 4" in said[3]


def test_whole_run_loss_weights_each_logged_mean_by_its_steps():
    history = [{"step": 2, "loss": 4.0}, {"step": 4, "loss": 1.0}, {"step": 5, "loss": 1.0},
               {"step": 5, "train_loss": 9.0}]
    assert sft.whole_run_loss(history) == pytest.approx((8 + 2 + 1) / 5)
    assert sft.whole_run_loss([{"step": 3, "train_loss": 2.5}]) == 2.5  # nothing logged per step
    assert sft.whole_run_loss([]) is None
