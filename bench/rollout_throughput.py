"""Rollout throughput at DAPO group sizes: the session's engines vs plain transformers ``generate``, side by side.

Variants (each in its own process by default: its own memory peak, and vLLM lives in its own venv on CPU):
  fastnemo      ``session.generate(puzzles, SamplingConfig(n=G, temperature=1.0))`` on a ModelSession with the
                hf engine: transformers generate on the training model itself (what DAPO and distill call)
  transformers  the baseline: a separately loaded AutoModelForCausalLM (defaults) + get_peft_model (same
                targets and rank), left-padded batches, ``generate(do_sample=True, temperature=1.0,
                num_return_sequences=G)``, same prompts, batching and max_new_tokens
  vllm          the same ``session.generate`` on a ModelSession with the vllm engine (in-process vLLM, LoRA
                synced from the training model); run with a python that has vllm: this one, or the vLLM
                lane's venv (/tmp/fastnemo-vllm-venv, see tests/vllm_lane.sh); skipped with a note otherwise
For each group size G: one untimed warm-up call, then ``--repeats`` timed calls (the median tokens/s is
shown, with the range), each ``--prompts`` puzzles x G completions of at most ``--max-tokens`` tokens. Generated tokens/s counts the tokens each completion really has (up to its end of
turn), not the padded slots. Memory: torch.cuda.max_memory_allocated on a GPU, peak RSS on CPU, reset after
loading.

  python bench/rollout_throughput.py --json runs/bench/rollout.json               # GPU: real-width slice
  python bench/rollout_throughput.py --groups 2,4,8 --prompts 4 --max-tokens 64   # CPU: tiny model
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common

VARIANTS = ("fastnemo", "transformers", "vllm")
BASELINE = "transformers"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def lora_cfg(rank: int):
    from fastnemo.config import LoraConfig
    from fastnemo.targets import PLAIN_PEFT_TARGETS

    # the set the plain PEFT baseline can build too (PEFT refuses out_proj on Mamba)
    return LoraConfig(rank=rank, alpha=rank, target_modules=list(PLAIN_PEFT_TARGETS))


def session_generator(engine: str, path: Path, rank: int, batch_size: int):
    """(generate(puzzles, n, max_tokens, seed) -> completion token counts, model) on a fastnemo session."""
    from fastnemo.config import GenerationConfig, ModelConfig, SamplingConfig
    from fastnemo.session import ModelSession

    gen_cfg = GenerationConfig(engine=engine, batch_size=batch_size)
    session = ModelSession.load(path, ModelConfig(path=str(path)), lora_cfg(rank), gen_cfg)

    def generate(puzzles: list[str], n: int, max_tokens: int, seed: int) -> list[int]:
        out = session.generate(
            puzzles, SamplingConfig(n=n, temperature=1.0, top_p=1.0, max_tokens=max_tokens, seed=seed)
        )
        return [c.n_tokens for group in out for c in group]

    return generate, session.model


def plain_generator(path: Path, rank: int, batch_size: int):
    """The same, written as a transformers + PEFT user would: a model of its own, generate() per batch."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gpu = common.on_gpu()
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.bfloat16 if gpu else torch.float32, device_map="cuda" if gpu else None
    )
    cfg = lora_cfg(rank)
    model = get_peft_model(
        model,
        LoraConfig(
            r=cfg.rank, lora_alpha=cfg.alpha, target_modules=cfg.target_modules, task_type="CAUSAL_LM"
        ),
    ).eval()
    eos, pad = tok.eos_token_id, tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    @torch.no_grad()
    def generate(puzzles: list[str], n: int, max_tokens: int, seed: int) -> list[int]:
        counts = []
        per_call = max(1, batch_size // n)
        for start in range(0, len(puzzles), per_call):
            texts = [common.render_prompt(tok, p) for p in puzzles[start : start + per_call]]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            torch.manual_seed(seed + start)
            out = model.generate(
                **enc,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=None,
                num_return_sequences=n,
                max_new_tokens=max_tokens,
                pad_token_id=pad,
                eos_token_id=eos,
            )
            for ids in out[:, enc["input_ids"].shape[1] :].tolist():
                counts.append(ids.index(eos) if eos in ids else sum(t != pad for t in ids))
        return counts

    return generate, model


def measure(
    variant: str,
    path: Path,
    rank: int,
    groups: list[int],
    prompts: int,
    max_tokens: int,
    batch_size: int,
    repeats: int = 1,
) -> dict:
    t0 = time.perf_counter()
    if variant == BASELINE:
        generate, model = plain_generator(path, rank, batch_size)
    else:
        generate, model = session_generator("vllm" if variant == "vllm" else "hf", path, rank, batch_size)
    load_s = time.perf_counter() - t0
    loaded = common.allocated_gib()
    puzzles = common.puzzle_prompts(prompts, seed=1)
    rows = []
    for g in groups:
        generate(puzzles[:1], g, min(8, max_tokens), seed=123)  # warm-up: allocator, kernels, graph capture
        runs = []
        common.reset_peak()
        for rep in range(repeats):  # a shared machine's load comes and goes: the median of a few calls
            common.sync()
            t = time.perf_counter()
            counts = generate(puzzles, g, max_tokens, seed=rep)
            common.sync()
            runs.append((sum(counts) / (time.perf_counter() - t), counts))
            common.stamp(f"{variant} G={g}: {sum(counts)} tokens, {runs[-1][0]:.1f} tok/s")
        tok_s = sorted(r for r, _ in runs)
        counts = runs[0][1]
        rows.append(
            {
                "group": g,
                "completions": len(counts),
                "tokens": sum(counts),
                "tok_s": statistics.median(tok_s),
                "tok_s_range": f"{tok_s[0]:.4g}-{tok_s[-1]:.4g}",
                "full_length": sum(c == max_tokens for c in counts) / len(counts),
                "peak_gib": common.peak_gib(),
            }
        )
    return {
        "variant": variant,
        "load_s": load_s,
        "loaded_gib": loaded,
        "experts": getattr(model.config, "_experts_implementation", ""),
        "rows": rows,
    }


def skip_reason(variant: str, python: str | None) -> str | None:
    if variant == "vllm" and python is None:
        return "skipped: vllm not importable here and no vLLM venv (tests/vllm_lane.sh builds one)"
    return None


@click.command()
@click.option("--variants", default=",".join(VARIANTS), show_default=True, help="Comma list.")
@click.option(
    "--groups", default="2,4,8", show_default=True, help="DAPO group sizes G (completions per prompt)."
)
@click.option("--prompts", default=None, type=int, help="Puzzles per call; default 16 (GPU), 4 (CPU).")
@click.option("--max-tokens", default=None, type=int, help="Max new tokens; default 1024 (GPU), 64 (CPU).")
@click.option(
    "--batch-size", default=64, show_default=True, help="Completions per generate call (max_num_seqs)."
)
@click.option(
    "--repeats", default=3, show_default=True, help="Timed calls per group size (the median is shown)."
)
@click.option(
    "--rounds",
    default=None,
    type=int,
    help="Processes per variant, alternating variants (median shown); default 1 (GPU), 2 (CPU).",
)
@click.option(
    "--rank", default=32, show_default=True, help="LoRA rank (the policy being sampled carries a LoRA)."
)
@common.model_options
@click.option("--vllm-python", default=None, help="Python to run the vllm variant with (default: found).")
@common.runner_options
def main(
    variants,
    groups,
    prompts,
    max_tokens,
    batch_size,
    repeats,
    rounds,
    rank,
    slice_spec,
    model_dir,
    vllm_python,
    json_path,
    log_dir,
    timeout,
    in_process,
    one_variant,
):
    """Generated tokens/s at DAPO group sizes: fastnemo's engines vs plain transformers generate, in one run."""
    gpu = common.on_gpu()
    groups = _ints(groups)
    prompts = prompts or (16 if gpu else 4)
    max_tokens = max_tokens or (1024 if gpu else 64)
    rounds = rounds or (1 if gpu else 2)
    path, scale = common.bench_model(model_dir, slice_spec=slice_spec)
    if one_variant:
        res = measure(one_variant, path, rank, groups, prompts, max_tokens, batch_size, repeats)
        print("RESULT " + json.dumps(res, default=str))
        return
    from rich.console import Console

    console = Console(width=170)
    vllm_py = vllm_python or common.vllm_python()
    settings = {
        "model": scale,
        "groups": groups,
        "prompts": prompts,
        "max_tokens": max_tokens,
        "batch_size": batch_size,
        "repeats": repeats,
        "rounds": rounds,
        "rank": rank,
        "temperature": 1.0,
        "top_p": 1.0,
        "vllm_python": vllm_py or "-",
        "in_process": in_process,
    }
    console.print(common.header_table("rollout_throughput", settings))
    args = common.child_args(groups=",".join(map(str, groups)), prompts=prompts, max_tokens=max_tokens,
                             batch_size=batch_size, repeats=repeats, rank=rank, model_dir=model_dir,
                             slice=slice_spec)

    def run_one(v: str) -> dict:
        if reason := skip_reason(v, vllm_py):
            return {"variant": v, "note": reason}
        if v == "vllm" and vllm_py != sys.executable:  # the vLLM venv runs this script itself
            log = Path(log_dir) / "rollout_throughput_vllm.log" if log_dir else None
            rc, out = common.run_child([vllm_py, __file__, "--one", v, *args], log, timeout)
            return common.child_result(out) or {"variant": v, "error": common.child_error(rc, out)}
        here = (
            (lambda: measure(v, path, rank, groups, prompts, max_tokens, batch_size, repeats))
            if in_process
            else None
        )
        return common.run_variant(__file__, v, args, log_dir, timeout, here)

    # the variants' processes alternate round by round: a burst of load on a shared machine hits them alike
    results = list(common.interleaved(variants.split(","), rounds, run_one, "tok_s").values())
    base = {r["group"]: r for res in results if res["variant"] == BASELINE for r in res.get("rows", [])}
    rows = []
    for res in results:
        for r in res.get("rows") or [{"note": res.get("note", ""), "error": res.get("error", "")[-300:]}]:
            ref = base.get(r.get("group"), {})
            rows.append(
                {
                    "variant": res["variant"],
                    **r,
                    "tok_s_vs_transformers": common.ratio(r.get("tok_s"), ref.get("tok_s")),
                    "peak_vs_transformers": common.ratio(r.get("peak_gib"), ref.get("peak_gib")),
                    "load_s": res.get("load_s", ""),
                    "loaded_gib": res.get("loaded_gib", ""),
                }
            )
    cols = [
        "variant",
        "group",
        "completions",
        "tokens",
        "tok_s",
        "tok_s_vs_transformers",
        "rounds",
        "full_length",
        "loaded_gib",
        "peak_gib",
        "peak_vs_transformers",
        "load_s",
        "note",
        "error",
    ]
    console.print(common.results_table("Rollouts (temperature 1.0): generated tokens/s", rows, cols))
    common.write_json(json_path, {"bench": "rollout_throughput", "settings": settings, "results": results})


if __name__ == "__main__":
    main()
