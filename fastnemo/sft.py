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
        "optim": "adamw_bnb_8bit" if on_gpu and getattr(getattr(session, "lora_cfg", None), "optimizer_8bit",
                                                          False) else "adamw_torch",
    }


def last_checkpoint(out_dir: Path) -> str | None:
    ckpts = sorted(out_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    complete = [p for p in ckpts if checkpoint_complete(p)]
    return str(complete[-1]) if complete else None


def checkpoint_complete(path: Path) -> bool:
    """A checkpoint folder is complete once its trainer state is written whole: the Trainer writes it after
    the weights, optimizer and RNG states, so a kill at any point of a save leaves it absent or torn."""
    import json

    try:
        json.loads((path / "trainer_state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return True


def train(session, rows: list[dict], cfg: SFTConfig, out_dir: Path, seed: int = 0, log=None,
          report_to: str = "none") -> dict:
    """Train ``session.model`` in place on ``rows``; resumes from the last complete checkpoint in
    ``out_dir``. Returns summary metrics."""
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    from fastnemo.callbacks import RichTrainerCallback
    from fastnemo.distributed import per_rank, world
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
    from fastnemo.patches.trl import trl_accepts_lm_head  # TRL refuses a PEFT lm_head; lora trains it

    with trl_accepts_lm_head(session.model):
        trainer = trainer_cls(
            model=session.model,
            args=args,
            train_dataset=to_dataset(session, rows),
            processing_class=session.tokenizer,
            callbacks=[RichTrainerCallback("sft", on_log_fn=log)],
        )
    check_kept(trainer, session, rows, cfg.max_length)
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the rich bar and metrics.jsonl carry the logs
    engine = session.started_engine
    if engine:
        engine.sleep()  # a colocated vLLM hands its memory back while the trainer runs
    from fastnemo.lora import lean_checkpoints

    with lean_checkpoints(session.model):
        result = trainer.train(resume_from_checkpoint=last_checkpoint(out_dir))
    if engine:
        engine.wake()
        engine.sync_weights()
    return {"train_loss": result.training_loss, "steps": result.global_step, "rows": len(rows)}
