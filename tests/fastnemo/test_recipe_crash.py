"""Crash safety: a recipe killed at any moment (SIGKILL mid-training, power loss mid-write) and run again
finishes with the same artifacts as a run that was never interrupted, or stops with one line naming the file.

The fault suite shares one uninterrupted run (module fixture) and prints its counts ("fault suite: faults
tried N, resumed identically K, stopped with a one-line error M"; run pytest with -s, or read the captured
output): a chain of kills at each FASTNEMO_CRASH_AT point (puzzles.files), then damage to the files a rerun
reads (torn checkpoint files, torn metrics, unreadable manifests)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_safetensors

REPO = Path(__file__).resolve().parents[2]

def crash_recipe(tiny_recipe, folder: Path) -> Path:
    """The 4 tiny rows -> 4 SFT steps, a checkpoint every 2 -> eval of 4 generated puzzles, 2 a batch -> pack."""
    return tiny_recipe(folder, ["data", "sft", "eval", "pack"], name="crash", seed=0, generation={"batch_size": 2},
                       sft={"max_steps": 4, "batch_size": 2, "max_length": 256, "save_steps": 2},
                       eval={"n_generated": 4, "sampling": {"max_tokens": 8}})


def start(workdir: Path, *args, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fastnemo", "recipe", str(workdir / "recipe.toml"), *args],
        cwd=REPO, env={**os.environ, "COLUMNS": "400", **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def finish(workdir: Path, *args, **env) -> subprocess.CompletedProcess:
    p = start(workdir, *args, **env)
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


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, tiny_recipe) -> Path:
    """The uninterrupted run every fault is compared with (run once)."""
    clean = tmp_path_factory.mktemp("clean")
    crash_recipe(tiny_recipe, clean)
    done = finish(clean)
    assert done.returncode == 0, done.stdout
    return clean / "run"


def outcome(run: Path, baseline: Path, *, exact: bool = True) -> None:
    """Assert ``run`` ended like ``baseline``: the same stages, step count, data, metrics (each step logged
    once) and adapter; eval results byte for byte when ``exact``."""
    a, b = (json.loads((r / "manifest.json").read_text())["stages"] for r in (baseline, run))
    assert list(a) == list(b)
    assert a["r1-data"]["artifacts"]["sft"]["sha256"] == b["r1-data"]["artifacts"]["sft"]["sha256"]
    assert a["r1-sft"]["summary"]["steps"] == b["r1-sft"]["summary"]["steps"] == 4
    assert b["r1-sft"]["summary"]["train_loss"] == pytest.approx(a["r1-sft"]["summary"]["train_loss"], rel=1e-3)
    assert a["r1-sft"]["fingerprint"] == b["r1-sft"]["fingerprint"]

    def logged(r):
        records = [json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines() if x.strip()]
        return sorted((m["stage"], m["step"]) for m in records if "loss" in m)

    assert logged(run) == logged(baseline)  # each training step logged once
    ta, tb = adapter_tensors(baseline), adapter_tensors(run)
    assert ta.keys() == tb.keys()
    for k in ta:
        if exact:  # the very weights of the last checkpoint, loaded, not trained again
            assert torch.equal(ta[k], tb[k]), k
        else:  # steps trained again after a fallback: the same math, float sums in another order
            torch.testing.assert_close(ta[k], tb[k], rtol=1e-4, atol=1e-6)
    if exact:
        assert (baseline / "r1-eval-sft" / "results.jsonl").read_bytes() == (
            run / "r1-eval-sft" / "results.jsonl").read_bytes()
    leftovers = [p for p in run.rglob(".*") if p.name != ".lock"]
    assert leftovers == []


def one_line_error(done: subprocess.CompletedProcess, names: str) -> None:
    """A refused rerun: exit 1, one line (click's "Error: ..."), naming the file, no traceback."""
    assert done.returncode == 1, done.stdout
    errors = [line for line in done.stdout.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and names in errors[0], done.stdout
    assert "Traceback" not in done.stdout


# kills in order, each rerun resuming what the one before left; the last rerun runs clean
KILL_CHAIN = [
    "checkpoint-4",  # the trainer's last checkpoint written, not yet fsynced, train() not returned
    "adapter",  # the final adapter's temp folder written, not renamed
    "manifest.json",  # the SFT stage's manifest entry written to its temp file, not renamed
    "results.partial.jsonl@2",  # eval: the second batch's records half appended (a torn last line)
    "manifest.json@2",  # the eval stage's entry (the rerun's first write is SFT's, from the last kill)
    "submission.zip",  # pack's zip, not renamed
]

# damage to the files a rerun reads, each on a copy of the run killed at the SFT's last checkpoint:
# (what, file, how, outcome, named) with outcome "resumed" (ends like the baseline) or "error" (one line), and
# the file the fallback message or the error names
CKPT = "r1-sft/checkpoints/checkpoint-4/"
DAMAGE = [
    ("truncated optimizer.pt", CKPT + "optimizer.pt", "half", "resumed", CKPT + "optimizer.pt"),
    ("truncated scheduler.pt", CKPT + "scheduler.pt", "half", "resumed", CKPT + "scheduler.pt"),
    ("truncated checkpoint adapter", CKPT + "adapter_model.safetensors", "half", "resumed",
     CKPT + "adapter_model.safetensors"),
    ("save killed after the optimizer", CKPT + "rng_state.pth", "mid-save", "resumed", CKPT + "trainer_state.json"),
    ("torn metrics.jsonl", "metrics.jsonl", "torn", "resumed", None),
    ("torn manifest.json", "manifest.json", "half", "error", "manifest.json"),
    ("emptied manifest.json", "manifest.json", "empty", "error", "manifest.json"),
    ("manifest.json of []", "manifest.json", "[]", "error", "manifest.json"),
]


def damage(run: Path, rel: str, how: str) -> None:
    f = run / rel
    if how == "half":
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif how == "mid-save":  # files after the optimizer's not written yet
        f.unlink()
        (f.parent / "trainer_state.json").unlink()
    elif how == "torn":
        with open(f, "a") as fh:
            fh.write('{"stage": "r1-sft", "step": 9, "lo')
    elif how == "empty":
        f.write_bytes(b"")
    else:
        f.write_text(how)


def test_fault_suite_resumes_identically_or_stops_with_one_line(tmp_path, tiny_recipe, baseline, fault_counts):
    tried = identical = stopped = 0
    killed = tmp_path / "killed"
    crash_recipe(tiny_recipe, killed)
    snapshot = None
    for point in KILL_CHAIN:
        crashed = finish(killed, FASTNEMO_CRASH_AT=point)
        assert crashed.returncode == -signal.SIGKILL, (point, crashed.stdout)
        tried += 1
        if snapshot is None:  # the state every damage case starts from: SFT's last checkpoint on disk
            snapshot = tmp_path / "snapshot"
            shutil.copytree(killed, snapshot)
    done = finish(killed)
    assert done.returncode == 0, done.stdout
    outcome(killed / "run", baseline)
    identical += len(KILL_CHAIN)  # every kill's rerun resumed where it stopped (the chain ended identical)
    assert "checkpoint-5" not in {p.name for p in (killed / "run" / "r1-sft" / "checkpoints").iterdir()}

    for what, rel, how, expect, named in DAMAGE:
        work = tmp_path / what.replace(" ", "-")
        shutil.copytree(snapshot, work)
        damage(work / "run", rel, how)
        done = finish(work)
        tried += 1
        if expect == "resumed":
            assert done.returncode == 0, (what, done.stdout)
            if named:  # the fallback is said, naming the file
                assert f"checkpoint-4 is incomplete ({work / 'run' / named}" in done.stdout.replace("\n", ""), what
            outcome(work / "run", baseline, exact=named is None)
            identical += 1
        else:
            one_line_error(done, named)
            stopped += 1
    summary = f"faults tried {tried}, resumed identically {identical}, stopped with a one-line error {stopped}"
    print(f"\nfault suite: {summary}")
    counts = fault_counts["kill points and damaged files"]  # in pytest's closing summary, with the fuzz counts
    counts.update({"faults tried": tried, "resumed identically": identical, "one-line errors": stopped})
    assert tried == identical + stopped


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
