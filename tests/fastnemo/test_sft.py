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


def test_last_checkpoint_skips_incomplete(tmp_path):
    assert sft.last_checkpoint(tmp_path) is None
    for step in (2, 10, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-12").mkdir()  # killed while saving: no trainer_state.json yet
    assert sft.last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")  # numeric, not string, order
