"""Where the first minutes of a GPU run go, and how far the memory plan is from measured peaks.

Loads a real-width slice on the hf backend (transformers + PEFT, grouped_mm experts, mamba-ssm kernels),
then times each forward/backward step (LoRA rank 32, gradient checkpointing) shape by shape, printing every
step as it ends: the first step of the first shape carries the Triton compilation and autotuning of the
mamba_ssm kernels (their autotune keys are chunk size and head/state widths, not the sequence length, so
later shapes reuse them), later steps are steady state. Each shape's peak (torch.cuda.max_memory_allocated)
is printed beside ``fastnemo.plan``'s estimate for the same slice, shape and LoRA (headroom excluded: it
stands for what the allocator does not count).

  python bench/device/probe.py --shapes 2x256,2x1024,4x2048 --json $OUT/probe.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import common


@click.command()
@click.option("--shapes", default="2x256,2x1024,4x2048", show_default=True)
@click.option("--steps", default=3, show_default=True, help="Steps per shape (the first one is not timed).")
@click.option("--rank", default=32, show_default=True)
@common.model_options
@click.option("--json", "json_path", default=None)
def main(shapes, steps, rank, slice_spec, model_dir, json_path):
    import torch

    from fastnemo.config import LoraConfig, ModelConfig
    from fastnemo.session import ModelSession

    common.stamp("imports done")
    path, scale = common.bench_model(model_dir, slice_spec=slice_spec)
    common.stamp(f"model ready: {scale}")
    cfg = ModelConfig(path=str(path), backend="hf", gradient_checkpointing=True)
    session = ModelSession.load(path, cfg, LoraConfig(rank=rank, alpha=rank))
    model = session.model
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model.train()
    common.stamp(f"loaded: {common.allocated_gib():.2f} GiB, experts {model.config._experts_implementation}")
    vocab = min(len(session.tokenizer), model.config.vocab_size)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    results = []
    for shape in shapes.split(","):
        b, s = (int(x) for x in shape.lower().split("x"))
        ids = torch.randint(8, vocab, (b, s), generator=torch.Generator().manual_seed(0))
        ids = ids.to(session.device)
        common.reset_peak()
        times = []
        for step in range(steps):
            t0 = time.perf_counter()
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            common.sync()
            times.append(time.perf_counter() - t0)
            common.stamp(f"{shape} step {step}: {times[-1]:.3f} s")
        steady = sorted(times[1:])[len(times[1:]) // 2] if len(times) > 1 else times[0]
        r = {"shape": shape, "first_s": times[0], "step_s": steady, "tok_s": b * s / steady,
             "peak_gib": common.peak_gib(), "plan_gib": common.planned_train_gib(path, b, s, rank, LoraConfig().target_modules)}
        r["plan_vs_peak"] = r["plan_gib"] / r["peak_gib"]
        common.stamp(json.dumps(r))
        results.append(r)
    common.write_json(json_path, {"bench": "probe", "model": scale, "rank": rank, "results": results})


if __name__ == "__main__":
    main()
