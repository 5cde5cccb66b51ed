"""Supervised fine-tuning of the session's model with TRL's ``SFTTrainer``.

Rows are prompt/completion pairs: the prompt is rendered by ``session.chat_prompt`` (the very text
evaluation feeds the model), the completion is the trace. TRL then computes the loss on the completion
tokens only and appends the end-of-turn token. The trainer wraps ``session.model`` itself: training updates
the one in-memory LoRA that generation uses next.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fastnemo.config import SFTConfig


def to_dataset(session, rows: list[dict]):
    from datasets import Dataset

    if not rows:
        raise ValueError("SFT data is empty: nothing to train on (check the data stage's filters)")
    if "input_ids" in rows[0]:  # packed recall rows (fastnemo.recall): tokenized, the loss mask in labels
        return Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    return Dataset.from_list(
        [{"prompt": session.chat_prompt(r["prompt"]), "completion": r["completion"]} for r in rows]
    )


def check_kept(trainer, session, rows: list[dict], max_length: int) -> None:
    """TRL drops every row whose prompt alone fills ``max_length`` (no completion token left to learn); when
    that is every row, name them and the fix instead of the sampler's "num_samples=0"."""
    if len(trainer.train_dataset) > 0:
        return
    lengths = [len(session.tokenizer(session.chat_prompt(r["prompt"]), add_special_tokens=False)["input_ids"])
               for r in rows]
    first = next((i for i, n in enumerate(lengths) if n >= max_length), 0)
    raise ValueError(f"SFT data: all {len(rows)} rows have a prompt of >= sft.max_length = {max_length} tokens "
                     f"(first: row {first + 1}, {lengths[first]} tokens), so no completion token is left to train "
                     f"on; raise sft.max_length (up to model.max_seq_length) or shorten the prompts")


def common_args(session, seed: int, save_steps: int, report_to: str = "none", out_dir: Path | None = None) -> dict:
    """TrainingArguments every fastnemo trainer shares (SFT and DAPO): checkpoints for resume, seeds,
    precision, checkpointing, no tqdm (rich bars and metrics.jsonl instead) and the recipe's tracker."""
    from fastnemo.tracking import trainer_args

    on_gpu = torch.cuda.is_available()
    return {
        "save_strategy": "steps",
        "save_steps": save_steps,
        "save_total_limit": 2,
        "seed": seed,
        "data_seed": seed,
        "bf16": on_gpu and session.model.dtype == torch.bfloat16,
        "gradient_checkpointing": session.model_cfg.gradient_checkpointing,
        "gradient_checkpointing_kwargs": {"use_reentrant": False},
        **trainer_args(report_to, out_dir or "."),
        "disable_tqdm": True,
        "use_cpu": not on_gpu,
        # lora.optimizer_8bit: bitsandbytes' 8-bit AdamW (CUDA only; the CPU tests keep torch's AdamW)
        "optim": "adamw_bnb_8bit" if on_gpu and session.lora_cfg.optimizer_8bit else "adamw_torch",
    }


CHECKPOINT_FILES = ("trainer_state.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt",
                    "rng_state.pth")  # what a resume reads (rng_state_<rank>.pth on N ranks, checked alike)


def build_trainer(trainer_cls, session, args, stage: str, log=None, **kwargs):
    """``trainer_cls`` (a TRL trainer) on ``session.model`` itself, set up as every fastnemo trainer is (SFT
    and DAPO): a PEFT lm_head accepted (fastnemo.lora trains it), the rich bar + metrics callback instead of
    the printer, checkpoints synced to disk."""
    from transformers import PrinterCallback

    from fastnemo.callbacks import RichTrainerCallback, SyncCheckpoints
    from fastnemo.patches.trl import trl_accepts_lm_head

    with trl_accepts_lm_head(session.model):
        trainer = trainer_cls(model=session.model, args=args, processing_class=session.tokenizer,
                              callbacks=[RichTrainerCallback(stage, on_log_fn=log), SyncCheckpoints()], **kwargs)
    trainer.remove_callback(PrinterCallback)  # the rich bar and metrics.jsonl carry the logs
    return trainer


def train_resumed(trainer, session, ckpt_dir: Path, max_steps: int, on_resume=None) -> tuple[int, list[dict]]:
    """``resume`` from the last complete checkpoint in ``ckpt_dir`` (``on_resume(step)`` is told its step
    first, 0 for a fresh start), writing lean checkpoints (the LoRA tensors only)."""
    from fastnemo.lora import lean_checkpoints

    ckpt = last_checkpoint(ckpt_dir, max_steps)
    if on_resume:
        on_resume(checkpoint_step(ckpt))
    with lean_checkpoints(session.model):
        return resume(trainer, ckpt, max_steps)


def checkpoint_problem(path: Path) -> str | None:
    """None when every file a resume reads loads whole, else "FILE: why". Hugging Face writes trainer_state.json
    last, but without fsync: after a power loss any file may be short, so each one is opened (the zip and
    safetensors headers span the file, so a truncation fails here, not hours into the resumed run)."""
    import json

    from safetensors import safe_open

    path = Path(path)
    files = list(CHECKPOINT_FILES) + [p.name for p in path.glob("rng_state_*.pth")]
    if any(path.glob("rng_state_*.pth")):
        files.remove("rng_state.pth")
    for name in files:
        f = path / name
        try:
            if name.endswith(".json"):
                if not isinstance(json.loads(f.read_text()).get("global_step"), int):
                    return f"{f}: no global_step"
            elif name.endswith(".safetensors"):
                with safe_open(f, "pt") as st:
                    for k in st.keys():  # noqa: SIM118 - safe_open is no dict
                        st.get_slice(k)
            else:
                torch.load(f, map_location="cpu", weights_only=False, mmap=True)
        except FileNotFoundError:
            return f"{f}: missing"
        except Exception as e:  # noqa: BLE001 - any failure to load means: not resumable from here
            return f"{f}: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else 'unreadable'}"
    return None


def checkpoint_step(path: str | Path | None) -> int:
    return int(Path(path).name.split("-")[1]) if path else 0


def last_checkpoint(out_dir: Path, max_steps: int = -1, say=None) -> str | None:
    """The newest checkpoint a resume can use: complete (``checkpoint_problem``) and not past ``max_steps``
    (a kept checkpoint of a longer try would overshoot; -1: any). Each one passed over is ``say``-ed in a line
    naming its faulty file, so a fallback to an older checkpoint is never silent."""
    if say is None:
        from fastnemo.progress import console

        say = console.print
    ckpts = [p for p in Path(out_dir).glob("checkpoint-*") if p.name.split("-", 1)[1].isdigit()]
    for p in sorted(ckpts, key=checkpoint_step, reverse=True):
        if max_steps > 0 and checkpoint_step(p) > max_steps:
            say(f"[yellow]{p} is past max_steps {max_steps}: not resumed from")
            continue
        problem = checkpoint_problem(p)
        if problem is None:
            return str(p)
        say(f"[yellow]checkpoint {p.name} is incomplete ({problem}): resuming from an earlier one")
    return None


def checkpoint_complete(path: Path) -> bool:
    return checkpoint_problem(path) is None


def resume(trainer, ckpt: str | None, max_steps: int) -> tuple[int, list[dict]]:
    """Train from ``ckpt`` (None: from scratch) up to ``max_steps``; returns (global step, log history of the
    whole run). A checkpoint that already holds the last step is loaded, not trained on: the Trainer would take
    one more step past it (it checks for the end only after a step)."""
    import json

    if ckpt is not None:
        state = json.loads((Path(ckpt) / "trainer_state.json").read_text())
        target = max_steps if max_steps > 0 else state["max_steps"]
        if state["global_step"] >= target:
            model = trainer.model
            model.load_adapter(ckpt, model.active_adapters[0], is_trainable=True)  # as Trainer's resume does
            return state["global_step"], state["log_history"]
    result = trainer.train(resume_from_checkpoint=ckpt)
    return result.global_step, trainer.state.log_history


def whole_run_loss(log_history: list[dict]) -> float | None:
    """Mean training loss over every logged step of the run, each logged mean weighted by the steps it
    covers: the same number for a run resumed from a checkpoint (whose history it carries) and an
    uninterrupted one (the Trainer's own ``training_loss`` counts only the steps of its last process)."""
    total, steps, prev = 0.0, 0, 0
    for rec in log_history:
        if "loss" in rec and isinstance(rec["loss"], (int, float)):
            total += rec["loss"] * (rec["step"] - prev)
            steps += rec["step"] - prev
            prev = rec["step"]
    if steps:
        return total / steps
    # no step logged (max_steps < logging_steps): the Trainer's own figure, the last one it logged
    ends = [rec["train_loss"] for rec in log_history if isinstance(rec.get("train_loss"), (int, float))]
    return ends[-1] if ends else None


def train(session, rows: list[dict], cfg: SFTConfig, out_dir: Path, seed: int = 0, log=None,
          on_resume=None, report_to: str = "none") -> dict:
    """Train ``session.model`` in place on ``rows``; resumes from the last complete checkpoint in
    ``out_dir`` (``on_resume(step)`` is told its step first, 0 for a fresh start). Returns summary metrics."""
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    from fastnemo.config import per_rank
    from fastnemo.distributed import world
    from fastnemo.patches.trl import ensure_fused_lm_head

    ensure_fused_lm_head()
    # the recipe's batch is global: N data-parallel processes (fastnemo.distributed) each take a share
    batch_size, grad_accum = per_rank(cfg.batch_size, cfg.grad_accum, world())
    args = TRLSFTConfig(
        output_dir=str(out_dir),
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum,
        max_length=cfg.max_length,
        warmup_steps=cfg.warmup,
        lr_scheduler_type="cosine",
        logging_steps=cfg.logging_steps,
        dataset_num_proc=1,
        **common_args(session, seed, cfg.save_steps, report_to, out_dir),
    )
    trainer_cls = SFTTrainer
    if cfg.token_budget:
        from fastnemo.batching import budget_trainer

        trainer_cls = budget_trainer(SFTTrainer, cfg.token_budget, cfg.max_length)
    trainer = build_trainer(trainer_cls, session, args, "sft", log, train_dataset=to_dataset(session, rows))
    check_kept(trainer, session, rows, cfg.max_length)
    engine = session.started_engine
    if engine:
        engine.sleep()  # a colocated vLLM hands its memory back while the trainer runs
    steps, history = train_resumed(trainer, session, out_dir, cfg.max_steps, on_resume)
    if engine:
        engine.wake()
        engine.sync_weights()
    return {"train_loss": whole_run_loss(history), "steps": steps, "rows": len(rows)}
