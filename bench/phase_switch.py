"""Phase switching: train -> generate -> train on fastnemo's one shared model vs the reload-based alternative.

DAPO and distillation alternate training and generation (DAPO: every step). Two ways to do it, each in its own
process by default (its own memory):
  shared  one ModelSession: SFT steps (``fastnemo.sft.train``), ``engine.wake`` + ``session.generate``,
          ``engine.sleep``, SFT steps again. The switches are the engine's wake/sleep (no-ops for the hf
          engine; sft.train's closing ``engine.sync_weights`` is timed inside "train").
  reload  what a pipeline of separate train and generate jobs does: SFT steps, save the adapter, free the
          model, load a generator (base model + adapter), generate, free it, reload the trainer (base model +
          adapter, trainable), SFT steps again.
Both run the same training (fastnemo.sft.train) and generation (the session's engine) code on the same rows,
prompts and seeds, so the difference is the switching alone. ``--cycles N`` alternates generate/train N times
(train, [generate, train] x N); ``--repeats`` passes (load + cycles) per variant, each in a fresh process,
the variants' processes alternating (A B A B: a burst of load on the shared machine hits both), the median of
each phase shown; every process does an untimed warm-up (one step, one generate) in each process.
Memory: torch.cuda.memory_allocated / max_memory_allocated on a GPU, RSS / peak
RSS on CPU; "delta" is memory after the last phase minus memory after the first load.

  python bench/phase_switch.py --json runs/bench/phase.json          # GPU: real-width slice
  python bench/phase_switch.py --steps 2 --cycles 2                   # CPU: tiny model
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common

VARIANTS = ("shared", "reload")
BASELINE = "reload"
PHASES = ("load", "train", "to_generate", "generate", "to_train")


def configs(path: Path, rank: int, engine: str, batch: int, seq: int, steps: int):
    from fastnemo.config import GenerationConfig, LoraConfig, ModelConfig, SFTConfig

    model_cfg = ModelConfig(path=str(path), max_seq_length=seq, gradient_checkpointing=True)
    lora_cfg = LoraConfig(rank=rank, alpha=rank)
    gen_cfg = GenerationConfig(engine=engine, batch_size=64)
    sft_cfg = SFTConfig(
        learning_rate=1e-4,
        max_steps=steps,
        batch_size=batch,
        grad_accum=1,
        max_length=seq,
        warmup=0,
        save_steps=10**6,
        logging_steps=steps,
    )
    return model_cfg, lora_cfg, gen_cfg, sft_cfg


def measure(
    variant: str,
    path: Path,
    rank: int,
    engine: str,
    batch: int,
    seq: int,
    steps: int,
    cycles: int,
    prompts: int,
    group: int,
    max_tokens: int,
    repeats: int = 1,
) -> dict:
    from transformers import AutoTokenizer

    from fastnemo import sft
    from fastnemo.config import SamplingConfig
    from fastnemo.session import ModelSession

    model_cfg, lora_cfg, gen_cfg, sft_cfg = configs(path, rank, engine, batch, seq, steps)
    rows = common.sft_rows(AutoTokenizer.from_pretrained(path), batch * steps * (cycles + 1), seq)
    puzzles = common.puzzle_prompts(prompts, seed=1)
    sampling = SamplingConfig(n=group, temperature=1.0, max_tokens=max_tokens)
    secs = dict.fromkeys(PHASES, 0.0)
    tmp = Path(tempfile.mkdtemp(prefix=f"fastnemo-bench-phase-{variant}-"))

    def timed(phase: str, fn, *args):
        common.sync()
        t = time.perf_counter()
        out = fn(*args)
        common.sync()
        secs[phase] += time.perf_counter() - t
        common.stamp(
            f"{variant} {phase} {time.perf_counter() - t:.2f}s, memory {common.allocated_gib():.3f} GiB"
        )
        return out

    def load(adapter=None):
        return ModelSession.load(path, model_cfg, lora_cfg, gen_cfg, adapter=adapter, seed=0)

    def free():
        nonlocal session
        session = None
        common.free_cuda()

    def reload_after(adapter: Path):
        """The reload path's switch: save the adapter, free the model, load base model + adapter again."""
        session.save_adapter(adapter)
        free()
        return load(adapter)

    runs = iter(range(10**6))

    def train(k: int):
        # a fresh output folder each call: sft.train resumes from a checkpoint it finds there (and the
        # Trainer writes one at the last step, which both variants pay)
        part = rows[k * batch * steps : (k + 1) * batch * steps]
        return sft.train(session, part, sft_cfg, tmp / f"sft{next(runs)}")["train_loss"]

    # Untimed warm-up (imports, dataset code, kernels, the OS file cache) so the first timed phase is not
    # charged for what a long run pays once.
    session = load()
    sft.train(session, rows[: batch * steps], dataclasses.replace(sft_cfg, max_steps=1), tmp / "warmup")
    session.generate(puzzles[:1], sampling)
    free()

    def one_pass() -> dict:
        nonlocal session
        for k in secs:
            secs[k] = 0.0
        loads0 = ModelSession.loads
        session = timed("load", load)
        loaded = common.allocated_gib()
        common.reset_peak()
        losses = [timed("train", train, 0)]
        tokens = 0
        for c in range(cycles):
            if variant == "shared":
                timed("to_generate", session.engine.wake)
            else:
                session = timed("to_generate", reload_after, tmp / f"adapter{next(runs)}")
            out = timed("generate", session.generate, puzzles, sampling)
            tokens += sum(comp.n_tokens for group_out in out for comp in group_out)
            if variant == "shared":
                timed("to_train", session.engine.sleep)
            else:
                session = timed("to_train", reload_after, tmp / f"adapter{next(runs)}")
            losses.append(timed("train", train, c + 1))
        end = common.allocated_gib()
        peak = common.peak_gib()
        free()
        return {
            **{f"{k}_s": v for k, v in secs.items()},
            "switch_s": secs["to_generate"] + secs["to_train"],
            "total_s": sum(secs.values()),
            "gen_tokens": tokens,
            "loaded_gib": loaded,
            "end_gib": end,
            "delta_gib": end - loaded,
            "peak_gib": peak,
            "loads": ModelSession.loads - loads0,
            "losses": losses,
        }

    passes = [one_pass() for _ in range(repeats)]
    shutil.rmtree(tmp, ignore_errors=True)
    out = {"variant": variant}
    for key in passes[0]:  # the median over the passes: a shared machine stalls now and then
        vals = [p[key] for p in passes]
        out[key] = statistics.median(vals) if isinstance(vals[0], float) else vals[-1]
    out["switch_per_cycle_s"] = out["switch_s"] / cycles
    return out


@click.command()
@click.option("--variants", default=",".join(VARIANTS), show_default=True, help="Comma list.")
@click.option(
    "--engine",
    default="hf",
    show_default=True,
    type=click.Choice(["hf", "vllm"]),
    help="The session's generation engine (both variants).",
)
@click.option(
    "--cycles", default=2, show_default=True, help="Generate/train switches: train, [generate, train] x N."
)
@click.option("--steps", default=None, type=int, help="SFT steps per train phase; default 4 (GPU), 2 (CPU).")
@click.option("--shape", default=None, help="SFT BATCHxSEQ; default 2x1024 (GPU), 2x256 (CPU).")
@click.option(
    "--prompts", default=None, type=int, help="Puzzles per generate phase; default 8 (GPU), 2 (CPU)."
)
@click.option("--group", default=4, show_default=True, help="Completions per puzzle.")
@click.option("--max-tokens", default=None, type=int, help="Max new tokens; default 256 (GPU), 16 (CPU).")
@click.option(
    "--repeats",
    default=3,
    show_default=True,
    help="Passes per variant, each in a fresh process, alternating variants (the median is shown).",
)
@click.option("--rank", default=32, show_default=True)
@common.model_options
@common.runner_options
def main(
    variants,
    engine,
    cycles,
    steps,
    shape,
    prompts,
    group,
    max_tokens,
    repeats,
    rank,
    slice_spec,
    model_dir,
    json_path,
    log_dir,
    timeout,
    in_process,
    one_variant,
):
    """Seconds and memory to go train -> generate -> train: one shared model vs reloading, in one run."""
    gpu = common.on_gpu()
    steps = steps or (4 if gpu else 2)
    batch, seq = (int(x) for x in (shape or ("2x1024" if gpu else "2x256")).lower().split("x"))
    prompts = prompts or (8 if gpu else 2)
    max_tokens = max_tokens or (256 if gpu else 16)
    path, scale = common.bench_model(model_dir, slice_spec=slice_spec)
    run = (path, rank, engine, batch, seq, steps, cycles, prompts, group, max_tokens, repeats)
    if one_variant:
        print("RESULT " + json.dumps(measure(one_variant, *run), default=str))
        return
    from rich.console import Console

    console = Console(width=170)
    settings = {
        "model": scale,
        "engine": engine,
        "cycles": cycles,
        "sft_steps": steps,
        "shape": f"{batch}x{seq}",
        "prompts": prompts,
        "group": group,
        "max_tokens": max_tokens,
        "repeats": repeats,
        "rank": rank,
        "in_process": in_process,
    }
    console.print(common.header_table("phase_switch", settings))
    args = common.child_args(engine=engine, cycles=cycles, steps=steps, shape=f"{batch}x{seq}", prompts=prompts,
                             group=group, max_tokens=max_tokens, repeats=1, rank=rank, model_dir=model_dir,
                             slice=slice_spec)

    def run_one(v: str) -> dict:
        here = (lambda: measure(v, *run[:-1], 1)) if in_process else None
        return common.run_variant(__file__, v, args, log_dir, timeout, here)

    # one pass per process, the variants' processes alternating: both see the same bursts of machine load
    results = list(common.interleaved(variants.split(","), repeats, run_one, "total_s").values())
    base = next((r for r in results if r["variant"] == BASELINE and "total_s" in r), {})
    for r in results:
        r["switch_vs_reload"] = common.ratio(r.get("switch_s"), base.get("switch_s"))
        r["total_vs_reload"] = common.ratio(r.get("total_s"), base.get("total_s"))
        r["peak_vs_reload"] = common.ratio(r.get("peak_gib"), base.get("peak_gib"))
    cols = [
        "variant",
        "load_s",
        "train_s",
        "to_generate_s",
        "generate_s",
        "to_train_s",
        "switch_s",
        "switch_vs_reload",
        "total_s",
        "total_vs_reload",
        "rounds",
        "error",
    ]
    console.print(
        common.results_table("train -> generate -> train: seconds (summed over the cycles)", results, cols)
    )
    cols = ["variant", "loaded_gib", "end_gib", "delta_gib", "peak_gib", "peak_vs_reload", "loads"]
    console.print(common.results_table("memory (GiB)", results, cols))
    common.write_json(json_path, {"bench": "phase_switch", "settings": settings, "results": results})


if __name__ == "__main__":
    main()
