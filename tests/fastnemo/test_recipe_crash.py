"""Crash safety: a recipe killed at any moment (SIGKILL mid-training, power loss mid-write) and run again
finishes with the same artifacts as a run that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors

REPO = Path(__file__).resolve().parents[2]

def crash_recipe(tiny_recipe, folder: Path) -> Path:
    """data (24 generated rows) -> 6 SFT steps, a checkpoint every 2 -> eval -> pack."""
    return tiny_recipe(folder, ["data", "sft", "eval", "pack"], rows=None, name="crash", seed=0, data={"n": 24},
                       sft={"max_steps": 6, "batch_size": 2, "max_length": 384, "save_steps": 2},
                       eval={"n_generated": 6, "sampling": {"max_tokens": 8}})



def start(workdir: Path, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fastnemo", "recipe", str(workdir / "recipe.toml")],
        cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def finish(workdir: Path, **env) -> subprocess.CompletedProcess:
    p = start(workdir, **env)
    out, _ = p.communicate(timeout=900)
    return subprocess.CompletedProcess(p.args, p.returncode, out)


def kill_when(proc: subprocess.Popen, ready, what: str, timeout: float = 600) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds (it must still be running then)."""
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, f"process ended before {what}:\n{proc.stdout.read()}"
        assert time.time() < deadline, f"never saw {what}"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def adapter_tensors(run: Path) -> dict:
    with zipfile.ZipFile(run / "pack" / "submission.zip") as zf:
        return load_safetensors(zf.read("adapter_model.safetensors"))


def workdirs(tmp_path: Path, write_recipe, tiny_recipe) -> tuple[Path, Path]:
    """Two run folders with the same recipe: one runs uninterrupted, the other is killed and resumed."""
    dirs = tmp_path / "clean", tmp_path / "killed"
    for d in dirs:
        write_recipe(tiny_recipe, d)
    return dirs


def test_killed_during_sft_and_mid_pack_write_ends_like_an_uninterrupted_run(tmp_path, tiny_recipe):
    clean, killed = workdirs(tmp_path, crash_recipe, tiny_recipe)
    assert finish(clean).returncode == 0

    # 1. SIGKILL during SFT, right after its first checkpoint is complete
    ckpt = killed / "run" / "r1-sft" / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    kill_when(start(killed), ckpt.exists, f"{ckpt}")
    manifest = json.loads((killed / "run" / "manifest.json").read_text())
    assert list(manifest["stages"]) == ["r1-data"]

    # 2. power loss while publishing submission.zip: the temp copy is written, the rename never happens
    crashed = finish(killed, FASTNEMO_CRASH_AT="submission.zip")
    assert crashed.returncode == -signal.SIGKILL
    assert "r1-data: finished earlier" in crashed.stdout
    assert not (killed / "run" / "pack" / "submission.zip").exists()
    assert "pack" not in json.loads((killed / "run" / "manifest.json").read_text())["stages"]

    # 3. the plain re-run finishes
    done = finish(killed)
    assert done.returncode == 0, done.stdout
    assert "r1-sft: finished earlier" in done.stdout

    a, b = (json.loads((d / "run" / "manifest.json").read_text())["stages"] for d in (clean, killed))
    assert a.keys() == b.keys()
    # data generation is deterministic: the same rows byte for byte
    assert a["r1-data"]["artifacts"]["sft"]["sha256"] == b["r1-data"]["artifacts"]["sft"]["sha256"]
    # training resumed from checkpoint-2 reaches the same step count and (up to float reordering) weights
    assert a["r1-sft"]["summary"]["steps"] == b["r1-sft"]["summary"]["steps"] == 6
    ta, tb = adapter_tensors(clean / "run"), adapter_tensors(killed / "run")
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=1e-4, atol=1e-6)
    # no half-written file was left or reused
    leftovers = [p for p in (killed / "run").rglob(".*") if p.name != ".lock"]
    assert leftovers == []


def distill_recipe(tiny_recipe, folder: Path) -> Path:
    """A distill stage alone: 16 prompts, 2 candidates of up to 24 tokens each."""
    return tiny_recipe(folder, ["distill"], rows=None, name="crash-distill", seed=3, generation={"batch_size": 4},
                       distill={"prompts": 16, "k": 2, "max_tokens": 24, "temperature": 1.0})



def test_killed_during_distillation_resumes_to_the_same_samples(tmp_path, tiny_recipe):
    clean, killed = workdirs(tmp_path, distill_recipe, tiny_recipe)
    assert finish(clean).returncode == 0

    cache = killed / "run" / "r1-distill" / "generations.jsonl"
    kill_when(start(killed), lambda: cache.exists() and cache.read_text().count("\n") >= 2, f"2 lines in {cache}")
    done_before = cache.read_text().count("\n")
    assert done_before < 8, "the kill came after distillation finished: nothing was resumed"

    rerun = finish(killed)
    assert rerun.returncode == 0, rerun.stdout
    for name in ("passrates.jsonl", "traces.jsonl", "goldilocks.jsonl"):
        a = (clean / "run" / "r1-distill" / name).read_text()
        b = (killed / "run" / "r1-distill" / name).read_text()
        assert a == b, f"{name} differs after the resume"
    assert len((clean / "run" / "r1-distill" / "passrates.jsonl").read_text().splitlines()) == 16
