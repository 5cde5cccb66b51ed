"""SFT step throughput and peak memory: fastnemo's backends vs plain transformers + PEFT + TRL SFTTrainer.

Variants (each in its own process, so Unsloth's import-time patches never touch the others' numbers):
  hf         fastnemo session, backend "hf" (transformers + PEFT, grouped_mm experts, mamba kernels)
  trl        plain transformers + PEFT + TRL SFTTrainer, same model, LoRA and batch
  unsloth16  fastnemo session, backend "unsloth", 16-bit base
  unsloth4   fastnemo session, backend "unsloth", bitsandbytes 4-bit base
All train LoRA with gradient checkpointing on random token batches of each shape (batch x seq_len) and
report tokens/s over the timed steps, weights in memory after load and the peak during the steps. It also
records which LoRA targets got a nonzero gradient (a target listed but not trained is a silent bug).

  python bench/sft_throughput.py --json runs/bench/sft.json                 # GPU: real-width slice
  python bench/sft_throughput.py --variants hf,trl --shapes 1x64 --steps 2  # CPU smoke run, tiny model
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

GPU_VARIANTS = "hf,trl,unsloth16,unsloth4"
CPU_VARIANTS = "hf"  # TRL 1.15 SFTTrainer needs triton (its fused LM-head loss): no CPU run


def _shapes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in s.lower().split("x")) for s in text.split(",")]


def _targets(text: str) -> list[str]:
    from fastnemo.config import DEFAULT_TARGETS

    return list(DEFAULT_TARGETS) if text == "default" else text.split(",")


def load_variant(variant: str, path: Path, targets: list[str], rank: int, max_len: int):
    """(peft model, tokenizer) for a fastnemo backend variant."""
    from fastnemo.config import LoraConfig, ModelConfig

    model_cfg = ModelConfig(
        path=str(path),
        backend="unsloth" if variant.startswith("unsloth") else "hf",
        load_in_4bit=variant == "unsloth4",
        max_seq_length=max_len,
        gradient_checkpointing=True,
    )
    lora_cfg = LoraConfig(rank=rank, alpha=rank, target_modules=targets)
    if model_cfg.backend == "unsloth":
        from fastnemo import unsloth_backend

        model, tok = unsloth_backend.load(path, model_cfg, lora_cfg)
    else:
        from fastnemo.session import _load_hf

        model, tok = _load_hf(path, model_cfg, lora_cfg, None)
        # what fastnemo's SFT does for the hf backend: non-reentrant checkpointing of every block
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model, tok


def grad_report(model) -> dict:
    """Per LoRA target: how many LoRA tensors exist and how many have a nonzero gradient."""
    from fastnemo.unsloth_backend import _target_of

    out: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad and "lora_" in name:
            t = _target_of(name)
            n = out.setdefault(t, [0, 0])
            n[0] += 1
            n[1] += int(p.grad is not None and bool(p.grad.abs().sum() > 0))
    return {t: f"{nz}/{n}" for t, (n, nz) in sorted(out.items())}


def run_steps(model, vocab: int, shapes, warmup: int, steps: int, lr: float = 1e-4) -> list[dict]:
    import torch

    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    rows = []
    for batch, seq in shapes:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(8, vocab, (batch, seq), generator=g).to(device)
        common.free_cuda()
        common.reset_peak()
        losses, grads = [], {}
        t0 = 0.0
        try:
            for i in range(warmup + steps):
                if i == warmup:
                    common.sync()
                    t0 = time.perf_counter()
                loss = model(input_ids=ids, labels=ids).loss
                loss.backward()
                common.stamp(f"{batch}x{seq} step {i} loss {float(loss):.4f}")
                if i == 1:  # after one update every LoRA A and B has a gradient path
                    grads = grad_report(model)
                opt.step()
                opt.zero_grad(set_to_none=True)
                losses.append(float(loss))
            common.sync()
            dt = time.perf_counter() - t0
            rows.append(dict(shape=f"{batch}x{seq}", tok_s=batch * seq * steps / dt, step_s=dt / steps,
                             peak_gib=common.peak_gib(), loss_first=losses[0], loss_last=losses[-1], grads=grads))
        except torch.OutOfMemoryError as e:
            rows.append(dict(shape=f"{batch}x{seq}", error=f"OOM: {str(e)[:160]}", peak_gib=common.peak_gib()))
            opt.zero_grad(set_to_none=True)
    return rows


def run_trl(path: Path, targets: list[str], rank: int, shapes, warmup: int, steps: int) -> list[dict]:
    """Plain transformers + PEFT + TRL SFTTrainer on the same model, LoRA and batches."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    gpu = common.on_gpu()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.bfloat16 if gpu else torch.float32,
        experts_implementation="grouped_mm" if gpu else "eager", device_map="cuda" if gpu else None,
    )
    weights = common.allocated_gib()
    rows = []

    class Clock(TrainerCallback):
        def __init__(self):
            self.t0, self.t1 = 0.0, 0.0

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == warmup:
                common.sync()
                self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            common.sync()
            self.t1 = time.perf_counter()
            common.stamp(f"trl step {state.global_step}")

    # TRL 1.15 refuses a LoRA on lm_head (it reads lm_head.weight directly for its log-probs): drop it here.
    targets = [t for t in targets if t != "lm_head"]
    peft_cfg = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, task_type="CAUSAL_LM")
    for batch, seq in shapes:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(8, len(tok), (batch * (warmup + steps), seq), generator=g).tolist()
        ds = Dataset.from_dict({"input_ids": ids})
        args = SFTConfig(
            output_dir="/tmp/fastnemo-bench-trl", per_device_train_batch_size=batch, max_length=seq,
            max_steps=warmup + steps, gradient_checkpointing=True, bf16=gpu, use_cpu=not gpu, report_to=[],
            logging_steps=1, save_strategy="no", learning_rate=1e-4, dataset_num_proc=None, packing=False,
            lr_scheduler_type="constant", warmup_steps=0,
        )
        clock, trainer = Clock(), None
        common.free_cuda()
        common.reset_peak()
        try:
            trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                                 peft_config=peft_cfg, callbacks=[clock])
            trainer.train()
            dt = clock.t1 - clock.t0
            losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
            rows.append(dict(shape=f"{batch}x{seq}", tok_s=batch * seq * steps / dt, step_s=dt / steps,
                             peak_gib=common.peak_gib(), weights_gib=weights,
                             loss_first=losses[0] if losses else None, loss_last=losses[-1] if losses else None))
            model = trainer.model.unload() if hasattr(trainer.model, "unload") else trainer.model
        except torch.OutOfMemoryError as e:
            rows.append(dict(shape=f"{batch}x{seq}", error=f"OOM: {str(e)[:160]}", peak_gib=common.peak_gib()))
        del trainer
    return rows


def one(variant: str, path: Path, targets, rank, shapes, warmup, steps) -> dict:
    t0 = time.perf_counter()
    if variant == "trl":
        rows = run_trl(path, targets, rank, shapes, warmup, steps)
        return dict(variant=variant, load_s=time.perf_counter() - t0, rows=rows, note="targets without lm_head")
    model, tok = load_variant(variant, path, targets, rank, max(s for _, s in shapes))
    load_s = time.perf_counter() - t0
    common.stamp(f"{variant} loaded in {load_s:.1f}s")
    weights = common.allocated_gib()
    vocab = min(len(tok), model.config.vocab_size)
    rows = run_steps(model, vocab, shapes, warmup, steps)
    for r in rows:
        r["weights_gib"] = weights
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return dict(variant=variant, load_s=load_s, trainable_params=trainable, rows=rows)


@click.command()
@click.option("--variants", default=None, help=f"Comma list; default {GPU_VARIANTS} on GPU, {CPU_VARIANTS} on CPU.")
@click.option("--shapes", default=None, help="Comma list of BATCHxSEQ; default 4x2048 (GPU), 1x64 (CPU).")
@click.option("--targets", default="default", show_default=True, help="LoRA targets, comma list, or 'default'.")
@click.option("--rank", default=32, show_default=True)
@click.option("--warmup", default=2, show_default=True)
@click.option("--steps", default=5, show_default=True)
@click.option("--model-dir", default="/tmp/fastnemo-bench", show_default=True, help="Where the bench model is built.")
@click.option("--json", "json_path", default=None, help="Write all results here.")
@click.option("--log-dir", default=None, help="Write each variant's full log here.")
@click.option("--timeout", default=240.0, show_default=True, help="Seconds per variant (load + steps).")
@click.option("--one", "one_variant", default=None, hidden=True)
def main(variants, shapes, targets, rank, warmup, steps, model_dir, json_path, log_dir, timeout, one_variant):
    """Compare SFT step throughput and peak memory across backends in one run."""
    gpu = common.on_gpu()
    shapes = _shapes(shapes or ("4x2048" if gpu else "1x64"))
    tlist = _targets(targets)
    path, scale = common.bench_model(model_dir)
    if one_variant:
        print("RESULT " + json.dumps(one(one_variant, path, tlist, rank, shapes, warmup, steps), default=str))
        return
    from rich.console import Console

    console = Console(width=160)
    settings = dict(model=scale, shapes=",".join(f"{b}x{s}" for b, s in shapes), rank=rank, targets=",".join(tlist),
                    warmup=warmup, steps=steps, gradient_checkpointing=True)
    console.print(common.header_table("sft_throughput", settings))
    results = []
    for v in (variants or (GPU_VARIANTS if gpu else CPU_VARIANTS)).split(","):
        common.stamp(f"variant {v}")
        cmd = [sys.executable, __file__, "--one", v, "--shapes", ",".join(f"{b}x{s}" for b, s in shapes),
               "--targets", targets, "--rank", str(rank), "--warmup", str(warmup), "--steps", str(steps),
               "--model-dir", model_dir]
        log = Path(log_dir) / f"sft_{v}.log" if log_dir else None
        rc, output = common.run_child(cmd, log, timeout)
        res = common.child_result(output)
        if res is None:
            tail = output[-3000:]
            console.print(f"[red]{v} failed (rc {rc})[/red]\n{tail}")
            results.append(dict(variant=v, error=("timeout " if rc == -9 else "") + tail[-600:]))
            continue
        results.append(res)
    rows = []
    base = {r["shape"]: r.get("tok_s") for res in results if res["variant"] == "trl" for r in res.get("rows", [])}
    for res in results:
        for r in res.get("rows", [dict(error=res.get("error", "")[-120:])]):
            ref = base.get(r.get("shape"))
            rows.append(dict(variant=res["variant"], **r, vs_trl=(r["tok_s"] / ref) if ref and r.get("tok_s") else ""))
    cols = ["variant", "shape", "tok_s", "vs_trl", "step_s", "weights_gib", "peak_gib", "loss_first", "loss_last", "error"]
    console.print(common.results_table("SFT step (LoRA, gradient checkpointing)", rows, cols))
    grads = [dict(variant=r["variant"], shape=r["shape"], **r["grads"]) for r in rows if r.get("grads")]
    if grads:
        keys = sorted({k for g in grads for k in g} - {"variant", "shape"})
        console.print(common.results_table("LoRA tensors with a nonzero gradient (nonzero/total)", grads,
                                           ["variant", "shape", *keys]))
    common.write_json(json_path, dict(bench="sft_throughput", settings=settings, results=results))


if __name__ == "__main__":
    main()
