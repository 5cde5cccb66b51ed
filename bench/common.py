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

# Nemotron-3-Nano-30B-A3B's widths (config.json of nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16).
REAL_WIDTHS = dict(
    hidden_size=2688,
    n_routed_experts=128,
    num_experts_per_tok=6,
    moe_intermediate_size=1856,
    moe_shared_expert_intermediate_size=3712,
    mamba_num_heads=64,
    mamba_head_dim=64,
    ssm_state_size=128,
    n_groups=8,
    conv_kernel=4,
    chunk_size=128,
    num_attention_heads=32,
    num_key_value_heads=2,
    head_dim=128,
    vocab_size=131072,
    intermediate_size=1856,
    max_position_embeddings=8192,
    tie_word_embeddings=False,
    use_mamba_kernels=True,
)

# Mamba, MoE and attention (the real model has 23 M, 23 E, 6 *): one of each kind plus a second MoE, so a
# slice loads in seconds. Per-layer costs scale to 52 layers in fastnemo.plan.
SLICE_LAYERS = ["linear_attention", "moe", "full_attention", "moe"]


def on_gpu() -> bool:
    return torch.cuda.is_available()


def slice_config(layers: list[str] | None = None, **overrides):
    from transformers import NemotronHConfig

    kwargs = dict(REAL_WIDTHS, layers_block_type=list(layers or SLICE_LAYERS))
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


def bench_model(out_root: str | Path, layers: list[str] | None = None) -> tuple[Path, str]:
    """(model folder, scale name): a real-width slice on a GPU, the tiny model on CPU."""
    out_root = Path(out_root)
    if on_gpu():
        layers = layers or SLICE_LAYERS
        name = "slice-" + "".join({"linear_attention": "M", "moe": "E", "full_attention": "A", "mlp": "-"}[t] for t in layers)
        return build_slice_model(out_root / name, layers), f"real-width slice {name[6:]}"
    from fastnemo.tiny import build_tiny_model

    path = out_root / "tiny"
    if not (path / "config.json").exists():
        build_tiny_model(path)
    return path, "tiny nemotron_h (CPU smoke run)"


def versions() -> dict:
    """Installed versions, read from package metadata: importing unsloth here would patch transformers in
    the process that runs the baselines."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("transformers", "peft", "trl", "unsloth", "unsloth_zoo", "bitsandbytes", "mamba_ssm", "causal_conv1d"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "-"
    return out


def hardware() -> dict:
    if on_gpu():
        p = torch.cuda.get_device_properties(0)
        return {"device": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "sms": p.multi_processor_count}
    return {"device": f"CPU ({platform.processor() or platform.machine()})", "cores": os.cpu_count()}


def sync() -> None:
    if on_gpu():
        torch.cuda.synchronize()


def reset_peak() -> None:
    if on_gpu():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if on_gpu() else 0.0


def allocated_gib() -> float:
    return torch.cuda.memory_allocated() / 2**30 if on_gpu() else 0.0


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
    for k, v in {**hardware(), **versions(), **settings}.items():
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
    return json.loads(line[len("RESULT "):]) if line else None


def stamp(msg: str) -> None:
    """A progress line with the time since the process started (logs show where the seconds go)."""
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", flush=True)


_T0 = time.perf_counter()


def write_json(path: str | Path | None, payload: dict) -> None:
    if not path:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"hardware": hardware(), "versions": versions(), "argv": sys.argv, **payload}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
