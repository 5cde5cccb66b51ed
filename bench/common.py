"""Shared bench code: the model a bench runs on, the hardware/versions header, timing and peak memory.

Every bench runs on two scales with the same code: the tiny nemotron_h model on CPU (a smoke run; its numbers
mean nothing) and, on a GPU, a *real-width slice* of Nemotron-3-Nano-30B-A3B: the real hidden size, expert
count and widths, Mamba and attention shapes and vocabulary, but only a few layers, with random weights. A
slice's per-layer time and memory are the real model's per-layer numbers (see fastnemo.plan for how they scale
to 52 layers).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from fastnemo import files
from fastnemo.plan import NANO_CONFIG

# Nemotron-3-Nano-30B-A3B's widths (fastnemo.plan keeps them; the layer pattern comes from --slice) plus
# what a random-weight slice needs to build.
REAL_WIDTHS = {
    **{k: v for k, v in NANO_CONFIG.items() if k != "layers_block_type"},
    "conv_kernel": 4,
    "chunk_size": 128,
    "intermediate_size": 1856,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": False,
    "use_mamba_kernels": True,
}

# Mamba, MoE and attention (the real model has 23 M, 23 E, 6 *): one of each kind plus a second MoE, so a
# slice loads in seconds. Per-layer costs scale to 52 layers in fastnemo.plan.
SLICE_LAYERS = ["linear_attention", "moe", "full_attention", "moe"]


def on_gpu() -> bool:
    return torch.cuda.is_available()


def slice_config(layers: list[str] | None = None, **overrides):
    from transformers import NemotronHConfig

    kwargs = dict(REAL_WIDTHS, layers_block_type=list(layers or SLICE_LAYERS))
    kwargs["use_mamba_kernels"] = on_gpu()  # the mamba_ssm kernels are CUDA-only
    kwargs.update(overrides)
    return NemotronHConfig(**kwargs)


def build_slice_model(out_dir: str | Path, layers: list[str] | None = None, seed: int = 0) -> Path:
    """Save a real-width random slice + the tiny tokenizer at ``out_dir`` (built on the GPU: seconds)."""
    from transformers import AutoModelForCausalLM

    from fastnemo.tiny import _corpus, train_tokenizer

    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        return out_dir
    tokenizer = train_tokenizer(_corpus(n=200, seed=seed), vocab_size=1024)
    ids = tokenizer.convert_tokens_to_ids
    config = slice_config(
        layers, pad_token_id=ids("<pad>"), bos_token_id=ids("<s>"), eos_token_id=ids("<|im_end|>")
    )
    torch.manual_seed(seed)
    with torch.device("cuda" if on_gpu() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    del model
    if on_gpu():
        torch.cuda.empty_cache()
    return out_dir


LAYER_KINDS = {"M": "linear_attention", "E": "moe", "A": "full_attention", "*": "full_attention", "-": "mlp"}


def slice_layers(spec: str) -> list[str]:
    """``--slice`` -> layer kinds: N = the first N layers of the released 52-layer pattern, or a pattern of
    M (Mamba), E (MoE), A or * (attention) letters, e.g. "MEAE" (the default slice)."""
    from fastnemo.plan import NANO_PATTERN

    spec = spec.strip().upper()
    if spec.isdigit():
        if not 1 <= int(spec) <= len(NANO_PATTERN):
            raise ValueError(f"--slice {spec}: expected 1..{len(NANO_PATTERN)} layers")
        spec = NANO_PATTERN[: int(spec)]
    bad = sorted(set(spec) - set(LAYER_KINDS))
    if not spec or bad:
        raise ValueError(f"--slice {spec!r}: expected a layer count or a pattern of M/E/A/* letters")
    return [LAYER_KINDS[c] for c in spec]


def bench_model(
    out_root: str | Path, layers: list[str] | None = None, slice_spec: str = "auto"
) -> tuple[Path, str]:
    """(model folder, scale name). ``slice_spec``: "auto" (a real-width slice on a GPU, the tiny model on
    CPU), "tiny", or a ``--slice`` spec (see slice_layers). ``layers`` (a list of layer kinds) wins."""
    # bench models are local folders: never let PEFT or a loader look up the hub (the H100 has no network)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out_root = Path(out_root)
    if layers is None and slice_spec not in ("auto", "tiny"):
        layers = slice_layers(slice_spec)
    if layers is not None or (slice_spec == "auto" and on_gpu()):
        layers = layers or SLICE_LAYERS
        name = "slice-" + "".join(
            {"linear_attention": "M", "moe": "E", "full_attention": "A", "mlp": "-"}[t] for t in layers
        )
        return build_slice_model(
            out_root / name, layers
        ), f"real-width slice {name[6:]} ({len(layers)} layers)"
    from fastnemo.tiny import build_tiny_model

    path = out_root / "tiny"
    if not (path / "config.json").exists():
        build_tiny_model(path)
    return path, "tiny nemotron_h (CPU smoke run)"


def model_options(f):
    """The model options every bench shares: where the bench model lives and which scale it is."""
    import click

    f = click.option(
        "--slice",
        "slice_spec",
        default="auto",
        show_default=True,
        help="Model: 'auto' (real-width slice MEAE on a GPU, tiny on CPU), 'tiny', N (a random-weight "
        "real-width slice: hidden 2688, 128 experts top-6, vocab 131072..., with the first N layers of "
        "Nemotron-3-Nano's pattern) or a layer pattern of M/E/A letters such as MEAE.",
    )(f)
    return click.option(
        "--model-dir", default="/tmp/fastnemo-bench", show_default=True, help="Where bench models are built."
    )(f)


def runner_options(f):
    """The options every bench's runner shares: outputs, per-variant limits, process isolation."""
    import click

    for decorator in reversed([
        click.option("--json", "json_path", default=None, help="Write all results here."),
        click.option("--log-dir", default=None, help="Write each variant's full log here."),
        click.option("--timeout", default=600.0, show_default=True, help="Seconds per variant (and shape)."),
        click.option("--in-process", is_flag=True,
                     help="Run the variants in this process (smoke tests: no isolation)."),
        click.option("--one", "one_variant", default=None, hidden=True),
    ]):
        f = decorator(f)
    return f


def versions() -> dict:
    """Installed versions, read from package metadata: importing unsloth here would patch transformers in
    the process that runs the baselines."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in (
        "transformers",
        "peft",
        "trl",
        "unsloth",
        "unsloth_zoo",
        "bitsandbytes",
        "mamba_ssm",
        "causal_conv1d",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "-"
    return out


def hardware() -> dict:
    if on_gpu():
        p = torch.cuda.get_device_properties(0)
        return {
            "device": p.name,
            "memory_gib": round(p.total_memory / 2**30, 1),
            "sms": p.multi_processor_count,
        }
    return {
        "device": f"CPU ({platform.processor() or platform.machine()})",
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def load_average() -> str:
    """The 1/5/15-minute load average: on a shared CPU machine it says how much the numbers mean."""
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "-"


def sync() -> None:
    if on_gpu():
        torch.cuda.synchronize()


# Memory: on a GPU, torch's allocator (max_memory_allocated); on CPU, the process's resident set (RSS). Linux
# keeps the RSS high-water mark in /proc/self/status (VmHWM) and resets it on "5" > /proc/self/clear_refs,
# so a CPU peak can be taken per phase too, like torch.cuda.reset_peak_memory_stats.


def _proc_status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def reset_peak() -> None:
    if on_gpu():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not Linux, or not permitted: the peak then covers the whole process
        pass


def _memory_gib(cuda_bytes, status_key: str) -> float:
    if on_gpu():
        return cuda_bytes() / 2**30
    try:
        return _proc_status_kib(status_key) / 2**20
    except OSError:
        return 0.0


def peak_gib() -> float:
    """Peak memory since the last reset_peak: GPU allocated bytes, or CPU peak RSS."""
    return _memory_gib(torch.cuda.max_memory_allocated, "VmHWM")


def allocated_gib() -> float:
    """Memory in use now: GPU allocated bytes, or CPU RSS."""
    return _memory_gib(torch.cuda.memory_allocated, "VmRSS")


def planned_train_gib(path: Path, batch: int, seq: int, rank: int, targets: list[str], four_bit=False) -> float:
    """fastnemo.plan's training estimate for this model folder and shape, without its headroom term (the
    CUDA context and fragmentation that max_memory_allocated does not count): what a peak should match."""
    from fastnemo import plan

    p = plan.plan(json.loads((Path(path) / "config.json").read_text()), load_in_4bit=four_bit, rank=rank,
                  targets=targets, batch=batch, seq_len=seq)
    return p.weights_gib + p.lora_optimizer_gib + p.activations_gib


def memory_kind() -> str:
    return "torch.cuda.max_memory_allocated" if on_gpu() else "process RSS (VmRSS / VmHWM)"


@contextlib.contextmanager
def timer(out: dict, key: str):
    sync()
    t0 = time.perf_counter()
    yield
    sync()
    out[key] = time.perf_counter() - t0


def free_cuda() -> None:
    import gc

    gc.collect()
    if on_gpu():
        torch.cuda.empty_cache()


def header_table(title: str, settings: dict):
    from rich.table import Table

    t = Table(title=title, show_header=False)
    info = {**hardware(), "load_average": load_average(), "memory": memory_kind(), **versions(), **settings}
    for k, v in info.items():
        t.add_row(str(k), str(v))
    return t


def results_table(title: str, rows: list[dict], columns: list[str]):
    from rich.table import Table

    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*[_fmt(r.get(c, "")) for c in columns])
    return t


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def child_args(**options) -> list[str]:
    """A variant process's command-line options: child_args(max_tokens=64) -> ["--max-tokens", "64"]."""
    return [a for k, v in options.items() for a in ("--" + k.replace("_", "-"), str(v))]


def run_child(cmd: list[str], log_path: Path | None, timeout: float) -> tuple[int, str]:
    """Run one variant in its own process (Unsloth patches transformers process-wide on import), streaming
    its output to ``log_path`` so a timeout still leaves the log. Returns (rc, output)."""
    import subprocess

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log_path = Path(log_path or f"/tmp/fastnemo-bench-{os.getpid()}.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = -9
    return rc, log_path.read_text(errors="replace")


def child_result(output: str) -> dict | None:
    line = next((ln for ln in output.splitlines() if ln.startswith("RESULT ")), None)
    return json.loads(line[len("RESULT ") :]) if line else None


def stamp(msg: str) -> None:
    """A progress line with the time since the process started (logs show where the seconds go)."""
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", flush=True)


_T0 = time.perf_counter()


def write_json(path: str | Path | None, payload: dict) -> None:
    if not path:
        return
    payload = {
        "hardware": hardware(),
        "load_average": load_average(),
        "versions": versions(),
        "argv": sys.argv,
        **payload,
    }
    files.write_atomic(path, json.dumps(payload, indent=2, default=str) + "\n")


# ------------------------------------------------------------------------------------------ data and runs


def puzzle_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` generated puzzle texts, round-robin over the six categories (what the model is asked)."""
    import random

    from puzzles import categories

    rng = random.Random(seed)
    return [
        categories.generate(categories.CATEGORIES[i % len(categories.CATEGORIES)], rng).prompt
        for i in range(n)
    ]


def render_prompt(tokenizer, puzzle_text: str) -> str:
    """What ``ModelSession.chat_prompt`` renders, written out as a plain transformers user would."""
    from puzzles import PROMPT_SUFFIX

    messages = [{"role": "user", "content": puzzle_text + PROMPT_SUFFIX}]
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=True
    )


def sft_rows(tokenizer, n: int, seq: int, seed: int = 0) -> list[dict]:
    """``n`` rows {prompt: puzzle text, completion: solver trace} whose rendered prompt leaves at least 32 of
    ``seq`` tokens to the completion and whose prompt + completion exceeds ``seq``: truncated to max_length=seq, every row is then
    exactly ``seq`` tokens and every variant trains on batch x seq tokens a step, with no padding."""
    import random

    from puzzles import categories

    rng = random.Random(seed)
    rows: list[dict] = []
    for i in range(50 * n):
        if len(rows) == n:
            return rows
        puzzle = categories.generate(categories.CATEGORIES[i % len(categories.CATEGORIES)], rng)
        solution = categories.solve(puzzle)
        if solution is None:
            continue
        n_prompt = len(
            tokenizer(render_prompt(tokenizer, puzzle.prompt), add_special_tokens=False)["input_ids"]
        )
        if n_prompt > seq - 32:
            continue
        try:
            completion = categories.trace(puzzle, solution)
        except ValueError:  # puzzles.base.NotTeachable: a cryptarithm with no recall trace
            continue
        while n_prompt + len(tokenizer(completion, add_special_tokens=False)["input_ids"]) < seq + 8:
            completion += "\n" + categories.trace(puzzle, solution)
        rows.append({"prompt": puzzle.prompt, "completion": completion})
    raise ValueError(
        f"found only {len(rows)} puzzles whose prompt fits in {seq} - 32 tokens: raise the sequence length"
    )


def ratio(value, base) -> float | str:
    return value / base if isinstance(value, (int, float)) and isinstance(base, (int, float)) and base else ""


def run_variant(
    script: str, variant: str, args: list[str], log_dir: str | None, timeout: float, in_process=None
) -> dict:
    """One variant's result dict. By default in a child process (``script --one VARIANT *args``): Unsloth
    patches transformers on import, and a fresh process gives each variant its own memory peak. With
    ``in_process`` (a zero-argument function) it runs here: the tests' smoke mode, no isolation."""
    stamp(f"variant {variant}")
    if in_process is not None:
        try:
            return in_process()
        except Exception as e:  # noqa: BLE001 (a failing variant is a row of the table, not the end of the bench)
            return {"variant": variant, "error": f"{type(e).__name__}: {e}"[:600]}
    log = Path(log_dir) / f"{Path(script).stem}_{variant}.log" if log_dir else None
    rc, output = run_child([sys.executable, script, "--one", variant, *args], log, timeout)
    return child_result(output) or {"variant": variant, "error": child_error(rc, output)}


def child_error(rc: int, output: str) -> str:
    """The line that says why a child failed (its last exception line), for the table; the log has the rest."""
    if rc == -9:
        return "timeout"
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln or "Exception" in ln]
    return f"rc {rc}: " + (errors[-1] if errors else " | ".join(lines[-3:]))[-300:]


def vllm_python() -> str | None:
    """A python that can import vllm: this one, else the vLLM lane's venv (tests/vllm_lane.sh), else None."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    venv = Path(os.environ.get("VLLM_VENV", "/tmp/fastnemo-vllm-venv")) / "bin" / "python"
    return str(venv) if venv.exists() else None


def interleaved(variants: list[str], rounds: int, run_one, key: str) -> dict[str, dict]:
    """``run_one(variant)`` for every variant, ``rounds`` times, alternating (A B A B ...): on a shared
    machine a burst of someone else's load then hits every variant alike. Returns, per variant, its median
    round by ``key`` (a whole round, so a row's numbers stay consistent; failed rounds are dropped)."""
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for _ in range(rounds):
        for v in variants:
            runs[v].append(run_one(v))
    return {v: median_round(rs, key) for v, rs in runs.items()}


def median_round(results: list[dict], key: str) -> dict:
    """The round whose ``key`` is the (lower) median; nested per-setting ``rows`` are picked the same way."""
    ok = [r for r in results if "error" not in r and "note" not in r] or results[-1:]
    if all(key in r for r in ok):
        out = dict(sorted(ok, key=lambda r: r[key])[(len(ok) - 1) // 2])
    else:
        out = dict(ok[-1])
        if all(len(r.get("rows", [])) == len(out.get("rows", [])) > 0 for r in ok):
            out["rows"] = [median_round(list(rows), key) for rows in zip(*(r["rows"] for r in ok))]
    out["rounds"] = f"{len([r for r in results if 'error' not in r])}/{len(results)}"
    return out
