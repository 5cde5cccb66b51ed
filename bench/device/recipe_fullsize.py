"""``fastnemo recipe recipes/winners.toml`` end to end on the full 52-layer model (bench ``recipe-fullsize``):
every stage of the winners' recipe, then ``fastnemo score`` on the packed zip, with each stage's wall time and
peak GPU memory.

    python3 bench/device/recipe_fullsize.py --results R.jsonl [--run-dir D] [KEY=VALUE ...]

The model: the released shapes with random weights, saved once to ``--weights-dir`` (default /dev/shm, a RAM
disk: the bf16 model is 59 GiB, the lane's disk 64 GiB) beside the tiny tokenizer. The validation CSV is
``validation_set.json`` (bench/device/validation.py: 600 generated puzzles, 100 a category). The recipe runs
as a user runs it (``fastnemo recipe``, its own process) with small overrides so that it fits the lane's
device time (the KEY=VALUE arguments; the defaults below). Peak memory: ``nvidia-smi``'s memory.used sampled
every second over the whole card, so it counts the trainer and the harness's vLLM child alike; a stage's
window runs from the previous manifest entry's ``finished_at`` to its own.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench import results

OVERRIDES = [  # what makes the recipe fit a lane call; every other key is winners.toml's. The recall stage is
    # kept, small: its model load and the first step's Triton tuning are paid by whichever stage trains first
    # (at 128 entries x 3 exposures it took 275 s on the lane, 2026-12-06: bench/results/recipe-fullsize.jsonl)
    "recall.limit=16", "recall.exposures=1", "recall.eval_samples=8",
    "data.n=240", "data.floor=0", "sft.max_steps=6", "sft.save_steps=3",
    "eval.limit=32", "eval.sampling.max_tokens=1024",
]


class MemorySampler(threading.Thread):
    """memory.used of GPU 0 (MiB) every ``period`` seconds, with its time."""

    def __init__(self, period: float = 1.0):
        super().__init__(daemon=True)
        self.period, self.samples, self.stop = period, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                      "-i", "0"], check=False, capture_output=True, text=True, timeout=10).stdout
                self.samples.append((time.time(), float(out.split()[0])))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                pass
            self.stop.wait(self.period)

    def peak_gib(self, t0: float, t1: float) -> float | None:
        window = [m for t, m in self.samples if t0 <= t <= t1 + self.period]
        return round(max(window) / 1024, 1) if window else None


def write_csv(out: Path) -> Path:
    from bench.device.validation import load_set

    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "prompt", "answer"])
        w.writeheader()
        w.writerows({k: r[k] for k in ("id", "prompt", "answer")} for r in load_set())
    return out


def timed_run(cmd: list[str], log: Path, sampler: MemorySampler) -> tuple[int, float, float]:
    t0 = time.time()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, check=False, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "160"}).returncode
    return rc, t0, time.time()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", required=True)
    ap.add_argument("--weights-dir", default="/dev/shm/fullsize")
    ap.add_argument("--run-dir", default="/tmp/lane/winners-run")
    ap.add_argument("--recipe", default=str(REPO / "recipes" / "winners.toml"))
    ap.add_argument("--score-limit", type=int, default=16)
    ap.add_argument("--score-tokens", type=int, default=1024)
    ap.add_argument("overrides", nargs="*", help="KEY=VALUE recipe overrides, after the defaults")
    args = ap.parse_args()

    sampler = MemorySampler()
    sampler.start()
    from bench.device.fullsize import saved_model

    model, save_s = saved_model(52, Path(args.weights_dir))
    print(f"model at {model} (saved in {save_s:.0f} s)", flush=True)
    run_dir = Path(args.run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    data = write_csv(run_dir.parent / "validation.csv")
    overrides = [f"model.path={json.dumps(str(model))}", f"run_dir={json.dumps(str(run_dir))}",
                 f"data.like={json.dumps(str(data))}", f"eval.data={json.dumps(str(data))}",
                 *OVERRIDES, *args.overrides]
    cmd = [sys.executable, "-m", "fastnemo", "recipe", args.recipe, *overrides]
    print("$", " ".join(cmd), flush=True)
    rc, t0, t1 = timed_run(cmd, run_dir.parent / "recipe.log", sampler)
    print((run_dir.parent / "recipe.log").read_text()[-6000:], flush=True)
    manifest = json.loads((run_dir / "manifest.json").read_text()) if (run_dir / "manifest.json").exists() else {}
    cap = os.environ.get("FASTNEMO_GPU_CAP_GIB")
    base = {"engine": None, "backend": "hf", "layers": 52, "gpu": gpu_name(),
            "memory_cap_gib": float(cap) if cap else None,
            "batch": None, "prompt_len": None, "new_tokens": None, "tok_s": None, "date": None,
            "source": "bench/device/recipe_fullsize.py", "recipe": "recipes/winners.toml",
            "overrides": overrides[4:], "exit_code": rc}
    start = t0
    for key, entry in (manifest.get("stages") or {}).items():
        end = datetime.datetime.strptime(entry["finished_at"], "%Y-%m-%dT%H:%M:%S").timestamp()
        summary = {k: v for k, v in (entry.get("summary") or {}).items()
                   if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        harness_log = run_dir / key / "harness.log"  # an eval stage through the harness: what its vLLM saw
        seen = vllm_memory(harness_log.read_text()) if harness_log.exists() else {}
        rec = results.record("recipe-fullsize", variant=key, peak_gib=sampler.peak_gib(start, end),
                             seconds=end - start, id=f"{gpu_tag()}-recipe-fullsize-{key}", summary=summary,
                             **seen, **base)
        results.append(args.results, rec)
        print(json.dumps(rec), flush=True)
        start = end
    if rc != 0:
        for log in run_dir.glob("*/harness.log"):
            key = log.parent.name  # a stage that failed in the harness: what its vLLM saw of the card
            if key in (manifest.get("stages") or {}):
                continue
            rec = results.record("recipe-fullsize", variant=key, peak_gib=sampler.peak_gib(start, t1),
                                 seconds=t1 - start, id=f"{gpu_tag()}-recipe-fullsize-{key}-failed",
                                 **vllm_memory(log.read_text()), **base, note="this stage failed (recipe.log says why)")
            results.append(args.results, rec)
            print(json.dumps(rec), flush=True)
        print(f"fastnemo recipe exited {rc}", flush=True)
        return rc
    zip_path = run_dir / "pack" / "submission.zip"
    cmd = [sys.executable, "-m", "fastnemo", "score", str(zip_path), "--data", str(data), "--model", str(model),
           "--limit", str(args.score_limit), "--max-tokens", str(args.score_tokens)]
    import torch

    from fastnemo.harness import memory_share

    # the scorer's own 0.85, of the card FASTNEMO_GPU_CAP_GIB says this one plays (the user's 80 GB H100)
    share, _ = memory_share(0.85, torch.cuda.get_device_properties(0).total_memory / 2**30)
    if share != 0.85:
        cmd += ["--gpu-memory-utilization", str(share)]
    print("$", " ".join(cmd), flush=True)
    rc, s0, s1 = timed_run(cmd, run_dir.parent / "score.log", sampler)
    log = (run_dir.parent / "score.log").read_text()
    print(log[-4000:], flush=True)
    found = vllm_memory(log)  # the scorer's own memory share (0.85) on this card: what is left for the KV cache
    rec = results.record("recipe-fullsize", variant="score", peak_gib=sampler.peak_gib(s0, s1), seconds=s1 - s0,
                         id=f"{gpu_tag()}-recipe-fullsize-score", puzzles=args.score_limit, max_tokens=args.score_tokens,
                         gpu_memory_utilization=share, **found, **{**base, "exit_code": rc, "engine": "vllm"},
                         note="fastnemo score at the scorer's own gpu_memory_utilization 0.85 on this card")
    results.append(args.results, rec)
    print(json.dumps(rec), flush=True)
    sampler.stop.set()
    return rc


def vllm_memory(log: str) -> dict:
    """What vLLM's start logged of the card: free memory when it started (after the trainer's release, in an
    eval stage), the KV cache it got, in GiB and tokens, and the concurrency that gives at the longest request;
    in a harness log also the engine's start and when the adapter (zipped meanwhile) was ready, in seconds."""
    pats = (("free_at_start_gib", r"Free memory on device (?:\S+ )?\(([\d.]+)/[\d.]+ GiB\) on startup"),
            ("kv_cache_gib", r"Available KV cache memory: (-?[\d.]+) GiB"),
            ("kv_cache_tokens", r"KV cache size: ([\d,]+) tokens"),
            ("max_concurrency", r"Maximum concurrency for [\d,]+ tokens per request: ([\d.]+)x"),
            ("engine_start_s", r"harness: engine started in (\d+) s"),
            ("adapter_ready_s", r"harness: adapter ready after (\d+) s"))
    return {name: float(m.group(1).replace(",", "")) for name, pat in pats if (m := re.search(pat, log))}


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name()


def gpu_tag() -> str:
    return "h200" if "H200" in gpu_name() else "h100"


if __name__ == "__main__":
    sys.exit(main())
