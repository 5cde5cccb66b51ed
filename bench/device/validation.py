"""600-puzzle validation at full size, side by side (bench ``validation``): the competition's harness (vLLM with
``fastnemo.score``'s LLM arguments, prompt and sampling; the adapter as the scorer serves it) against the hf
engine (transformers ``generate`` on the training model) at the recipe's batch.

    python3 bench/device/validation.py set --mix MIX.jsonl          # CPU, once: bench/device/validation_set.json
    python3 bench/device/validation.py harness --seqs 64 --results R.jsonl --outputs O64.jsonl
    python3 bench/device/validation.py harness --seqs 256 --results R.jsonl --outputs O256.jsonl --compare O64.jsonl
    python3 bench/device/validation.py hf --batch 16 --results R.jsonl

The model: the released 52-layer shapes with random weights (vLLM ``load_format="dummy"``; the hf engine's
model built on the GPU from the same config) and the tiny tokenizer. The adapter: a random LoRA r32 of the
winners' full set in vLLM's per-expert format (q/k/v/o, in/out_proj, shared + all 128 routed experts'
up/down_proj, lm_head: 888 M parameters), as ``fastnemo pack`` writes it.

Random weights never emit EOS, so every completion is forced (``min_tokens = max_tokens``) to the estimated
real token length (``puzzles.traces.estimate_real_tokens``) of a solver trace of the same puzzle, from a mix
built ``--like train_dev.csv``, 100 puzzles per category (``validation_set.json``). A trained model writes
about its trace's length, so these lengths stand in for what validating a trained checkpoint generates.

The hf engine at batch 16 would take hours for 600 puzzles (static batching: every batch decodes as long as
its longest completion), so it is measured, not run through: the prefill and the decode step time of real
batches, then the 600 puzzles' time projected as prefill + sum over batches of longest completion x step
time (``projected: true`` in its record, with the measured parts beside it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench import results

SET_PATH = Path(__file__).resolve().parent / "validation_set.json"
CAP_GIB = 79.2  # an 80 GB card's usable memory (torch reports 79.2 GiB for an H100 80GB HBM3)
GIB = 1 << 30
PER_CATEGORY = 100


# ------------------------------------------------------------------------------------------- the set


def make_set(mix_path: Path, out: Path = SET_PATH) -> list[dict]:
    """100 rows a category of a built mix: id, category, prompt, answer, est_tokens of the completion (the
    reasoning, ``</think>`` and the boxed answer, as the model writes them)."""
    from puzzles import CATEGORIES
    from puzzles.files import read_jsonl, write_json
    from puzzles.traces import estimate_real_tokens

    rows = read_jsonl(mix_path, strict=True)
    picked = []
    for cat in CATEGORIES:
        mine = [r for r in rows if r.get("category") == cat and "prompt" in r and "completion" in r][:PER_CATEGORY]
        if len(mine) < PER_CATEGORY:
            raise SystemExit(f"{mix_path}: only {len(mine)} {cat} rows (need {PER_CATEGORY})")
        picked += mine
    # interleave the categories as the eval stage's stratified order does (round robin)
    order = sorted(range(len(picked)), key=lambda i: (i % PER_CATEGORY, i // PER_CATEGORY))
    out_rows = [{"id": picked[i]["id"], "category": picked[i]["category"], "prompt": picked[i]["prompt"],
                 "answer": picked[i]["answer"], "est_tokens": estimate_real_tokens(picked[i]["completion"]) + 1}
                for i in order]
    write_json(out, out_rows)
    lengths = [r["est_tokens"] for r in out_rows]
    print(f"wrote {out}: {len(out_rows)} rows, est. tokens mean {statistics.mean(lengths):.0f}, "
          f"max {max(lengths)}, total {sum(lengths):,}")
    return out_rows


def load_set(limit: int = 0) -> list[dict]:
    rows = json.loads(SET_PATH.read_text())
    return rows[:limit] if limit else rows


# ----------------------------------------------------------------------------------------- the model


def total_gib() -> float:
    import torch

    return torch.cuda.get_device_properties(0).total_memory / GIB


def full_adapter(model_path: Path, out: Path, rank: int = 32) -> Path:
    """A random LoRA of every module vLLM adapts in the model (``fastnemo.pack.expected_shapes``: the
    winners' full set, per-expert keys), written as ``fastnemo pack`` writes an adapter."""
    import torch
    from safetensors.torch import save_file

    from fastnemo.pack import PREFIX, expected_shapes

    shapes = expected_shapes(model_path, rank)
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for module, (a_shape, b_shape) in sorted(shapes.items()):
        if module == "backbone.embeddings":
            continue
        tensors[f"{PREFIX}{module}.lora_A.weight"] = (torch.randn(a_shape, generator=g) * 0.01).to(torch.bfloat16)
        tensors[f"{PREFIX}{module}.lora_B.weight"] = (torch.randn(b_shape, generator=g) * 0.01).to(torch.bfloat16)
    suffixes = sorted({"lm_head" if m == "lm_head" else m.rsplit(".", 1)[-1] for m in shapes
                       if m != "backbone.embeddings"})
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": rank, "target_modules": suffixes, "bias": "none",
              "lora_dropout": 0.0, "use_dora": False, "use_rslora": False, "modules_to_save": None,
              "task_type": "CAUSAL_LM", "base_model_name_or_path": "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16"}
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    params = sum(t.numel() for t in tensors.values())
    print(f"random adapter: {len(tensors)} tensors, {params / 1e6:.0f} M parameters, targets {suffixes}", flush=True)
    return out


class VLLMLog(logging.Handler):
    """Keeps vLLM's own report of its KV cache and concurrency (what it prints at start)."""

    def __init__(self):
        super().__init__()
        self.found: dict = {}

    def emit(self, record):
        msg = record.getMessage()
        m = re.search(r"KV cache size: ([\d,]+) tokens", msg)
        if m:
            self.found["kv_cache_tokens"] = int(m.group(1).replace(",", ""))
        m = re.search(r"Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x", msg)
        if m:
            self.found["max_concurrency"] = float(m.group(2))
        m = re.search(r"Available KV cache memory: ([\d.]+) GiB", msg)
        if m:
            self.found["kv_cache_gib"] = float(m.group(1))
        m = re.search(r"Model loading took ([\d.]+) GiB", msg)
        if m:
            self.found["weights_gib"] = float(m.group(1))


# --------------------------------------------------------------------------------------------- harness


def run_harness(args) -> None:
    """The harness at ``--seqs`` sequences: engine start + 600 forced-length greedy completions."""
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    from bench.device.fullsize import model_dir
    from fastnemo import score

    rows = load_set(args.limit)
    root = Path(args.work or tempfile.mkdtemp(prefix="validation-"))
    path = model_dir(52, root)
    adapter = root / "adapter"
    if not (adapter / "adapter_config.json").exists():
        full_adapter(path, adapter)
    log = VLLMLog()
    logging.getLogger("vllm").addHandler(log)
    from fastnemo.harness import memory_share

    util, _ = memory_share(args.util, total_gib())  # the eval stage's share (FASTNEMO_GPU_CAP_GIB: the lane's cap)
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    t0 = time.perf_counter()
    llm = LLM(model=str(path), **{**score.LLM_ARGS, "max_num_seqs": args.seqs, "gpu_memory_utilization": util,
                                  "load_format": "dummy"})
    start_s = time.perf_counter() - t0
    print(f"engine started in {start_s:.1f} s at gpu_memory_utilization {util}: {log.found}", flush=True)
    tok = llm.get_tokenizer()
    prompts = [score.render(tok, r["prompt"]) for r in rows]
    params = [SamplingParams(**{**score.SAMPLING, "max_tokens": r["est_tokens"]}, min_tokens=r["est_tokens"],
                             ignore_eos=True, detokenize=False) for r in rows]
    lora = LoRARequest("adapter", 1, str(adapter))
    t = time.perf_counter()
    outs = llm.generate(prompts, params, lora_request=lora, use_tqdm=False)
    gen_s = time.perf_counter() - t
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    token_ids = {r["id"]: list(o.outputs[0].token_ids) for r, o in zip(rows, outs)}
    if args.outputs:
        Path(args.outputs).write_text(json.dumps(token_ids))
    extra = {}
    if args.compare and not Path(args.compare).exists():  # the 64 run did not happen on this machine
        print(f"no {args.compare} to compare with: the record goes without the agreement", flush=True)
    elif args.compare:
        extra = agreement(json.loads(Path(args.compare).read_text()), token_ids)
        print(f"agreement with {args.compare}: {extra}", flush=True)
    plen = sum(len(o.prompt_token_ids) for o in outs) / len(outs)
    rec = results.record(
        "validation", variant="harness-vllm", engine="vllm", backend="vllm 0.26.0", layers=52,
        gpu=gpu_name(), memory_cap_gib=None if util == args.util else CAP_GIB, batch=args.seqs,
        prompt_len=round(plen), new_tokens=round(tokens / len(rows)), tok_s=tokens / gen_s,
        peak_gib=round(util * total_gib(), 1), date=None, id=f"{args.tag}-validation-harness-seqs{args.seqs}",
        source="bench/device/validation.py", puzzles=len(rows), seconds=start_s + gen_s, engine_start_s=start_s,
        generate_s=gen_s, tokens=tokens, gpu_memory_utilization=util, max_num_seqs=args.seqs,
        lengths="est. real tokens of a built mix's traces, 100 per category",
        lora="random r32, winners' full set, per-expert keys (888 M)", **log.found, **extra,
        note=f"score.py's LLM_ARGS with max_num_seqs {args.seqs}, gpu_memory_utilization {util}, dummy weights; "
             "forced lengths; seconds = engine start + generation")
    results.append(args.results, rec)
    print(json.dumps(rec), flush=True)


def agreement(a: dict, b: dict) -> dict:
    """How many greedy completions of the same adapter differ between two runs (vllm#57267: batch
    composition can change greedy outputs), and where the differing ones first diverge."""
    common = [k for k in a if k in b]
    first = []
    for k in common:
        x, y = a[k], b[k]
        d = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), None)
        if d is None and len(x) != len(y):
            d = min(len(x), len(y))
        if d is not None:
            first.append(d)
    return {"compared": len(common), "outputs_differing": len(first),
            "first_divergence_median": statistics.median(first) if first else None}


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name()


def gpu_tag() -> str:
    """The record ids' prefix: which card measured it (an H200 plays an 80 GB card under the cap)."""
    return "h200" if "H200" in gpu_name() else "h100"


# ------------------------------------------------------------------------------------------- hf engine


def run_hf(args) -> None:
    """The hf engine at ``--batch``: prefill and decode-step time of real batches, the 600 projected."""
    import torch

    from bench.device.fullsize import build_model, model_dir
    from fastnemo.config import SamplingConfig
    from fastnemo.targets import FULL_TARGETS

    if total_gib() > CAP_GIB + 1:
        torch.cuda.set_per_process_memory_fraction(CAP_GIB / total_gib())
    os.environ.setdefault("TRITON_CACHE_AUTOTUNING", "1")
    rows = load_set(args.limit)
    root = Path(args.work or tempfile.mkdtemp(prefix="validation-"))
    path = model_dir(52, root)
    session = build_model(path, list(FULL_TARGETS), train_experts=True, levers=True)
    session.model.eval()
    batches = [rows[i:i + args.batch] for i in range(0, len(rows), args.batch)]
    texts = [[r["prompt"] for r in b] for b in batches]

    def timed(batch, new):
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = session.generate(batch, SamplingConfig(max_tokens=new))
        torch.cuda.synchronize()
        return time.perf_counter() - t, sum(c.n_tokens for r in out for c in r)

    timed(texts[0][:2], 4)  # the Mamba kernels' first-call tuning, outside the timing
    torch.cuda.reset_peak_memory_stats()
    prefill_s = statistics.median(timed(texts[i], 1)[0] for i in range(3))
    long_s, long_tokens = timed(texts[1], args.steps)
    step_s = (long_s - prefill_s) / (args.steps - 1)
    longest = [max(r["est_tokens"] for r in b) for b in batches]
    tokens = sum(r["est_tokens"] for r in rows)
    slots = sum(m * len(b) for m, b in zip(longest, batches))
    seconds = len(batches) * prefill_s + sum(m - 1 for m in longest) * step_s
    rec = results.record(
        "validation", variant="hf-engine", engine="hf", backend="hf", layers=52, gpu=gpu_name(),
        memory_cap_gib=CAP_GIB if total_gib() > CAP_GIB + 1 else None, batch=args.batch,
        prompt_len=None, new_tokens=round(tokens / len(rows)), tok_s=tokens / seconds,
        peak_gib=torch.cuda.max_memory_allocated() / GIB, date=None,
        id=f"{args.tag}-validation-hf-engine-batch{args.batch}", source="bench/device/validation.py",
        puzzles=len(rows), seconds=seconds, tokens=tokens, projected=True, prefill_s=prefill_s,
        decode_step_s=step_s, measured_steps=args.steps, measured_tokens=long_tokens,
        slots_per_token=slots / tokens, lengths="est. real tokens of a built mix's traces, 100 per category",
        lora="winners' full set on the training model (LoRA B zero: same compute)",
        note=f"projected: {len(batches)} batches x (prefill {prefill_s:.2f} s + longest completion x "
             f"{step_s:.3f} s a decode step), both measured on real batches of {args.batch}")
    results.append(args.results, rec)
    print(json.dumps(rec), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["set", "harness", "hf"])
    ap.add_argument("--mix", help="set: a built mix (fastnemo data build --like train_dev.csv)")
    ap.add_argument("--results", help="append the record here")
    ap.add_argument("--seqs", type=int, default=64, help="harness: vLLM's max_num_seqs (the scorer's 64)")
    ap.add_argument("--util", type=float, default=0.92, help="harness: gpu_memory_utilization of an 80 GB card")
    ap.add_argument("--outputs", help="harness: write every completion's token ids here")
    ap.add_argument("--compare", help="harness: count completions differing from this --outputs file")
    ap.add_argument("--batch", type=int, default=16, help="hf: the recipe's generation.batch_size")
    ap.add_argument("--steps", type=int, default=256, help="hf: decode steps timed on one batch")
    ap.add_argument("--limit", type=int, default=0, help="first N puzzles of the set (0 = all 600)")
    ap.add_argument("--work", help="folder for the model config and the adapter (default: a temp folder)")
    ap.add_argument("--tag", default="", help="record id prefix (default: h100 or h200, from the GPU's name)")
    args = ap.parse_args()
    if args.what != "set" and not args.tag:
        args.tag = gpu_tag()
    if args.what == "set":
        make_set(Path(args.mix))
    else:
        {"harness": run_harness, "hf": run_hf}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
