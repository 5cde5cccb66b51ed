"""SFT throughput and peak memory: fastnemo's real SFT path vs a plain transformers + PEFT + TRL user, side by side.

Variants (each in its own process by default, so Unsloth's import-time patches never touch the others' numbers
and every variant has its own memory peak):
  fastnemo   ``fastnemo.sft.train`` on a ``ModelSession`` (backend "hf"): TRL SFTTrainer with its fused LM
             head, on the session's PEFT model (what ``fastnemo run`` trains with)
  trl        the baseline: AutoModelForCausalLM.from_pretrained (defaults) + get_peft_model (same targets and
             rank) + TRL SFTTrainer, same rows, batch, sequence length, schedule and checkpointing
  unsloth16  ``fastnemo.sft.train`` on a ModelSession with backend "unsloth", 16-bit base  (GPU + unsloth)
  unsloth4   the same with a bitsandbytes 4-bit base                                       (GPU + unsloth)
Every variant trains on the same prompt/completion rows (puzzle + solver trace, truncated to exactly SEQ
tokens: no padding), ``warmup`` untimed steps then ``steps`` timed ones. Tokens are counted at the embedding
layer, time between the trainer's per-step logs; tokens/s is from the median step (tok_s_mean: from the
mean). On CPU the variants' processes alternate for ``--rounds`` rounds and the medians are shown. Memory: torch.cuda.max_memory_allocated on a GPU, the
process's peak RSS on CPU (both reset after loading, so "peak" is the training peak, weights included).
After training, one extra forward/backward records which LoRA targets get a nonzero gradient.

  python bench/sft_throughput.py --json runs/bench/sft.json                    # GPU: real-width slice MEAE
  python bench/sft_throughput.py --slice 6 --shapes 1x2048,4x2048               # GPU: the first 6 real layers
  python bench/sft_throughput.py --shapes 2x256 --steps 4                       # CPU: tiny model
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common

VARIANTS = ("fastnemo", "trl", "unsloth16", "unsloth4")
BASELINE = "trl"


def _shapes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in s.lower().split("x")) for s in text.split(",")]


def _targets(text: str) -> list[str]:
    from fastnemo.targets import PLAIN_PEFT_TARGETS

    # "default": the set the plain PEFT + TRL baseline can train too
    return list(PLAIN_PEFT_TARGETS) if text == "default" else text.split(",")


def skip_reason(variant: str) -> str | None:
    if variant.startswith("unsloth"):
        if not common.on_gpu():
            return "skipped: Unsloth needs a CUDA GPU"
        if importlib.util.find_spec("unsloth") is None:
            return "skipped: unsloth is not importable (stage it: bench/README.md)"
    return None


class StepClock:
    """Times steps (warmup, warmup + steps] from the trainer's per-step logs and counts the tokens those steps
    feed the embedding layer (gradient checkpointing recomputes decoder blocks, never the embedding)."""

    def __init__(self, model, warmup: int, steps: int):
        self.warmup, self.last = warmup, warmup + steps
        self.t0 = self.t1 = None
        self.stamps: list[float] = []  # end of steps warmup .. warmup + steps
        self.tokens = 0
        self.losses: list[float] = []
        model.get_input_embeddings().register_forward_pre_hook(self._count)

    def _count(self, module, args):
        if self.t0 is not None and self.t1 is None:
            self.tokens += args[0].numel()

    def on_log(self, record: dict) -> None:
        if "loss" in record:
            self.losses.append(float(record["loss"]))
        step = record.get("step")
        if step is not None and self.warmup <= step <= self.last and len(self.stamps) == step - self.warmup:
            common.sync()
            self.stamps.append(time.perf_counter())
            self.t0 = self.stamps[0]
            self.t1 = self.stamps[-1] if step == self.last else None
        common.stamp(f"step {step} loss {record.get('loss', '')}")


def sft_cfg(batch: int, seq: int, warmup: int, steps: int):
    from fastnemo.config import SFTConfig

    # no LR warm-up and no checkpoints: the steps are timed, not the schedule or the disk
    return SFTConfig(
        learning_rate=1e-4,
        max_steps=warmup + steps,
        batch_size=batch,
        grad_accum=1,
        max_length=seq,
        warmup=0,
        save_steps=10**6,
        logging_steps=1,
    )


def train_fastnemo(variant, path, targets, rank, rows, cfg, clock_args, out_dir):
    from fastnemo import sft
    from fastnemo.config import LoraConfig, ModelConfig
    from fastnemo.session import ModelSession

    model_cfg = ModelConfig(
        path=str(path),
        backend="unsloth" if variant.startswith("unsloth") else "hf",
        load_in_4bit=variant == "unsloth4",
        max_seq_length=cfg.max_length,
        gradient_checkpointing=True,
    )
    session = ModelSession.load(path, model_cfg, LoraConfig(rank=rank, alpha=rank, target_modules=targets))
    loaded = common.allocated_gib()
    clock = StepClock(session.model, *clock_args)
    common.reset_peak()
    sft.train(session, rows, cfg, out_dir, log=clock.on_log)
    return (
        session.model,
        session.tokenizer,
        loaded,
        clock,
        {"experts": session.model.config._experts_implementation},
    )


def train_plain(path, targets, rank, rows, cfg, clock_args, out_dir):
    """What a transformers + PEFT + TRL user writes: default loading, get_peft_model, SFTTrainer."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    gpu = common.on_gpu()
    notes = {}
    if importlib.util.find_spec("triton") is None:
        # TRL's fused LM-head kernel is Triton-only: without this plain-torch stand-in (fastnemo.patches.trl)
        # no TRL trainer can take a step on the CPU wheel of torch.
        from fastnemo.patches.trl import ensure_fused_lm_head

        ensure_fused_lm_head()
        notes["note"] = "no triton: TRL's fused LM head via fastnemo.patches.trl"
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.bfloat16 if gpu else torch.float32, device_map="cuda" if gpu else None
    )
    notes["experts"] = model.config._experts_implementation
    model = get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, task_type="CAUSAL_LM")
    )
    loaded = common.allocated_gib()
    clock = StepClock(model, *clock_args)

    class Log(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            clock.on_log({"step": state.global_step, **(logs or {})})

    ds = Dataset.from_list(
        [{"prompt": common.render_prompt(tok, r["prompt"]), "completion": r["completion"]} for r in rows]
    )
    args = SFTConfig(
        output_dir=str(out_dir),
        learning_rate=cfg.learning_rate,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=1,
        max_length=cfg.max_length,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        logging_steps=1,
        save_strategy="no",
        bf16=gpu,
        use_cpu=not gpu,
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        report_to="none",
        disable_tqdm=True,
        dataset_num_proc=1,
    )
    common.reset_peak()
    SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[Log()]).train()
    return model, tok, loaded, clock, notes


def grad_report(model, vocab: int, seq: int) -> dict:
    """Per LoRA target: LoRA tensors with a nonzero gradient after one forward/backward (nonzero/total)."""
    import torch

    from fastnemo.unsloth_backend import _target_of

    model.train()
    model.zero_grad(set_to_none=True)
    ids = torch.randint(8, vocab, (1, min(seq, 128)), generator=torch.Generator().manual_seed(0))
    model(
        input_ids=ids.to(next(model.parameters()).device), labels=ids.to(next(model.parameters()).device)
    ).loss.backward()
    out: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad and "lora_" in name:
            n = out.setdefault(_target_of(name), [0, 0])
            n[0] += 1
            n[1] += int(p.grad is not None and bool(p.grad.abs().sum() > 0))
    model.zero_grad(set_to_none=True)
    return {t: f"{nz}/{n}" for t, (n, nz) in sorted(out.items())}


def measure(
    variant: str, path: Path, targets: list[str], rank: int, batch: int, seq: int, warmup: int, steps: int
) -> dict:
    import tempfile

    from transformers import AutoTokenizer

    t0 = time.perf_counter()
    rows = common.sft_rows(AutoTokenizer.from_pretrained(path), batch * (warmup + steps), seq)
    cfg = sft_cfg(batch, seq, warmup, steps)
    with tempfile.TemporaryDirectory(prefix=f"fastnemo-bench-sft-{variant}-") as out_dir:
        if variant == BASELINE:
            model, tok, loaded, clock, notes = train_plain(
                path, targets, rank, rows, cfg, (warmup, steps), out_dir
            )
        else:
            model, tok, loaded, clock, notes = train_fastnemo(
                variant, path, targets, rank, rows, cfg, (warmup, steps), Path(out_dir)
            )
    peak = common.peak_gib()
    total_s = time.perf_counter() - t0
    if clock.t1 is None:
        raise RuntimeError(f"{variant}: the trainer logged no step {clock.last} (steps: {clock.losses})")
    # the median step, not the mean: a shared machine stalls now and then
    step_s = statistics.median(b - a for a, b in zip(clock.stamps, clock.stamps[1:]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    plan_gib = common.planned_train_gib(path, batch, seq, rank, targets, four_bit=variant == "unsloth4")
    return {
        "variant": variant,
        "shape": f"{batch}x{seq}",
        "tok_s": clock.tokens / steps / step_s,
        "step_s": step_s,
        "tok_s_mean": clock.tokens / (clock.t1 - clock.t0),
        "tokens": clock.tokens,
        "loaded_gib": loaded,
        "peak_gib": peak,
        "plan_gib": plan_gib,
        "plan_vs_peak": plan_gib / peak if peak else None,
        "total_s": total_s,
        "loss_first": clock.losses[0] if clock.losses else None,
        "loss_last": clock.losses[-1] if clock.losses else None,
        "trainable_params": trainable,
        "grads": grad_report(model, min(len(tok), model.config.vocab_size), seq),
        **notes,
    }


@click.command()
@click.option(
    "--variants",
    default=",".join(VARIANTS),
    show_default=True,
    help=f"Comma list of {', '.join(VARIANTS)}; unsloth ones are skipped (with a note) off GPU.",
)
@click.option("--shapes", default=None, help="Comma list of BATCHxSEQ; default 4x2048 (GPU), 2x256 (CPU).")
@click.option(
    "--targets", default="default", show_default=True, help="LoRA targets, comma list, or 'default'."
)
@click.option("--rank", default=32, show_default=True)
@click.option("--warmup", default=2, show_default=True, help="Untimed steps first (compilation, autotuning).")
@click.option("--steps", default=5, show_default=True, help="Timed steps.")
@common.model_options
@click.option(
    "--rounds",
    default=None,
    type=int,
    help="Processes per variant and shape, alternating variants (median shown); default 1 GPU, 2 CPU.",
)
@common.runner_options
def main(
    variants,
    shapes,
    targets,
    rank,
    warmup,
    steps,
    slice_spec,
    model_dir,
    json_path,
    log_dir,
    timeout,
    rounds,
    in_process,
    one_variant,
):
    """SFT tokens/s and peak memory: fastnemo's SFT path vs plain transformers + PEFT + TRL, in one run."""
    shapes = _shapes(shapes or ("4x2048" if common.on_gpu() else "2x256"))
    tlist = _targets(targets)
    rounds = rounds or (1 if common.on_gpu() else 2)
    path, scale = common.bench_model(model_dir, slice_spec=slice_spec)
    if one_variant:
        ((b, s),) = shapes
        print(
            "RESULT " + json.dumps(measure(one_variant, path, tlist, rank, b, s, warmup, steps), default=str)
        )
        return
    from rich.console import Console

    console = Console(width=170)
    settings = {
        "model": scale,
        "shapes": ",".join(f"{b}x{s}" for b, s in shapes),
        "rank": rank,
        "targets": ",".join(tlist),
        "warmup": warmup,
        "steps": steps,
        "gradient_checkpointing": True,
        "rounds": rounds,
        "in_process": in_process,
    }
    console.print(common.header_table("sft_throughput", settings))
    results = []
    for b, s in shapes:
        args = common.child_args(shapes=f"{b}x{s}", targets=targets, rank=rank, warmup=warmup, steps=steps,
                                 model_dir=model_dir, slice=slice_spec)

        def run_one(v: str, b=b, s=s, args=args) -> dict:
            if reason := skip_reason(v):
                return {"variant": v, "note": reason}
            here = (lambda: measure(v, path, tlist, rank, b, s, warmup, steps)) if in_process else None
            return common.run_variant(__file__, v, args, log_dir, timeout, here)

        names = ["fastnemo" if v == "hf" else v for v in variants.split(",")]  # "hf": the old name
        merged = common.interleaved(names, rounds, run_one, "tok_s")
        results += [{**r, "shape": f"{b}x{s}"} for r in merged.values()]
    base = {r["shape"]: r for r in results if r["variant"] == BASELINE and "tok_s" in r}
    for r in results:
        ref = base.get(r["shape"], {})
        r["tok_s_vs_trl"] = common.ratio(r.get("tok_s"), ref.get("tok_s"))
        r["peak_vs_trl"] = common.ratio(r.get("peak_gib"), ref.get("peak_gib"))
    cols = [
        "variant",
        "shape",
        "tok_s",
        "tok_s_vs_trl",
        "tok_s_mean",
        "step_s",
        "loaded_gib",
        "peak_gib",
        "peak_vs_trl",
        "plan_gib",
        "experts",
        "rounds",
        "note",
        "error",
    ]
    console.print(
        common.results_table("SFT (LoRA, gradient checkpointing): tokens/s and peak memory", results, cols)
    )
    grads = [dict(variant=r["variant"], shape=r["shape"], **r["grads"]) for r in results if r.get("grads")]
    if grads:
        keys = sorted({k for g in grads for k in g} - {"variant", "shape"})
        console.print(
            common.results_table(
                "LoRA tensors with a nonzero gradient (nonzero/total)", grads, ["variant", "shape", *keys]
            )
        )
    common.write_json(json_path, {"bench": "sft_throughput", "settings": settings, "results": results})


if __name__ == "__main__":
    main()
