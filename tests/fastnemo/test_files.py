"""The faults every output must survive (fastnemo/files.py and its users): a full disk mid-save, a
checkpoint folder cut short by a kill, a second process on the same run directory. Each ends with a clear
error or a clean resume, and no lost or half-written artifact."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from fastnemo import files, sft
from fastnemo.cli import main
from fastnemo.config import GenerationConfig, LoraConfig, ModelConfig, SFTConfig
from fastnemo.session import ModelSession

REPO = Path(__file__).resolve().parents[2]
ROWS = [{"prompt": f"In Alice's Wonderland, {i} + {i}?", "completion": f"add\n</think>\n\\boxed{{{2 * i}}}"}
        for i in range(4)]


# ------------------------------------------------------------------------------------------ disk full


@pytest.fixture()
def small_disk(tmp_path):
    """A real 256 KiB filesystem (tmpfs), so writes fail with the kernel's own ENOSPC. Needs mount rights."""
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` up to ``leave`` free bytes."""
    filler = disk / "filler"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    filler.write_bytes(b"\0" * max(0, free - leave))
    return filler


def test_disk_full_during_an_adapter_save_leaves_no_adapter_and_frees_the_space(tiny_session, small_disk):
    size = sum(f.stat().st_size for f in tiny_session.save_adapter(small_disk / "probe").iterdir())
    for f in (small_disk / "probe").iterdir():
        f.unlink()
    (small_disk / "probe").rmdir()
    filler = fill(small_disk, size // 2)  # room for half the adapter
    with pytest.raises(OSError) as e:
        tiny_session.save_adapter(small_disk / "adapter")
    assert e.value.errno == errno.ENOSPC and str(e.value) == (
        f"[Errno 28] disk full at {small_disk / 'adapter'}: free some space and rerun")  # one line, the file
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]  # no adapter, no temp copy left
    filler.unlink()
    saved = tiny_session.save_adapter(small_disk / "adapter")  # the space came back: the save succeeds
    assert json.loads((saved / "adapter_config.json").read_text())["r"] == 4


def test_disk_full_during_an_atomic_write_keeps_the_old_file(small_disk):
    target = small_disk / "manifest.json"
    files.write_json(target, {"stages": {"r1-data": {}}})
    before = target.read_bytes()
    fill(small_disk, 4096)
    with pytest.raises(OSError) as e:
        files.write_atomic(target, b"x" * 65536)
    assert e.value.errno == errno.ENOSPC
    assert target.read_bytes() == before and sorted(p.name for p in small_disk.iterdir()) == ["filler",
                                                                                               "manifest.json"]


def test_disk_full_during_an_append_leaves_whole_records(small_disk):
    log = small_disk / "metrics.jsonl"
    files.append_jsonl(log, [{"step": 1}])
    fill(small_disk, 0)
    with pytest.raises(OSError):
        files.append_jsonl(log, [{"step": 2, "pad": "x" * 65536}])
    assert files.read_jsonl(log)[0] == {"step": 1}  # what was there is readable; a torn tail is skipped
    (small_disk / "filler").unlink()
    files.append_jsonl(log, [{"step": 3}])
    assert [r["step"] for r in files.read_jsonl(log)] == [1, 3]


# ------------------------------------------------------------------------------- JSONL files and logs


def test_jsonl_round_trip_atomic_and_errors(tmp_path):
    rows = [{"id": str(i), "features": {"t": (1, 2)}, "text": "ünï\ncode"} for i in range(5)]
    path = tmp_path / "sub" / "rows.jsonl"
    assert files.write_jsonl(path, rows) == 5
    back = files.read_jsonl(path, strict=True)
    assert back[0] == {"id": "0", "features": {"t": [1, 2]}, "text": "ünï\ncode"} and len(back) == 5
    assert [f for f in os.listdir(path.parent)] == ["rows.jsonl"]  # no temp file left behind

    def boom():  # a writer that fails midway leaves the old file intact and no temp file
        yield {"id": "new"}
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        files.write_jsonl(path, boom())
    assert len(files.read_jsonl(path, strict=True)) == 5 and os.listdir(path.parent) == ["rows.jsonl"]

    files.append_jsonl(path, [{"id": "5"}])
    with open(path, "a") as f:
        f.write('{"id": "torn')
    with pytest.raises(files.JsonlError, match=r"rows\.jsonl: line 7: not valid JSON"):
        files.read_jsonl(path, strict=True)  # a data file: a torn line is an error, named
    assert len(files.read_jsonl(path)) == 6  # a log: the torn last line is a record a kill cut short
    with pytest.raises(files.JsonlError, match="no such file"):
        files.read_jsonl(tmp_path / "nope.jsonl", strict=True)
    assert files.read_jsonl(tmp_path / "nope.jsonl") == []  # a log not started yet


def test_a_tear_inside_a_multibyte_character_of_the_last_line_does_not_block_a_resume(tmp_path):
    """results.partial.jsonl holds model outputs: a kill can cut its last line between the bytes of "é"."""
    log = tmp_path / "results.partial.jsonl"
    files.append_jsonl(log, [{"id": "a", "text": "café"}, {"id": "b", "text": "naïve"}])
    data = log.read_bytes()
    log.write_bytes(data[: data.rindex("ï".encode()) + 1])  # one byte of the two of "ï"
    assert [r["id"] for r in files.read_jsonl(log)] == ["a"]
    files.append_jsonl(log, [{"id": "b", "text": "naïve"}])  # the resume's append cuts the torn tail first
    assert [r["id"] for r in files.read_jsonl(log, strict=True)] == ["a", "b"]


@pytest.mark.parametrize(("content", "needle"), [
    (b'{"a": "\xff"}\n{"b": 1}\n', "line 1: not UTF-8"),
    (b'{"a": 1}\n{"n": ' + b"9" * 5000 + b"}\n{}\n", "line 2: not valid JSON"),
    (b"[" * 100_000 + b"\n{}\n", "line 1: not valid JSON"),
])
def test_every_jsonl_error_names_the_file_and_line(tmp_path, content, needle):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(content)
    for strict in (False, True):
        with pytest.raises(files.JsonlError, match=needle) as e:
            files.read_jsonl(path, strict=strict)
        assert str(path) in str(e.value)


def test_a_bad_line_before_the_last_is_an_error_even_in_a_log(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1}\n{"step": 2, "lo\n[3]\n{"step": 4}\n')
    with pytest.raises(files.JsonlError, match=r"metrics\.jsonl: line 2: not valid JSON"):
        files.read_jsonl(log)  # append_jsonl cuts a torn line before appending: this is no kill's doing
    log.write_text('{"step": 1}\n[3]\n')
    with pytest.raises(files.JsonlError, match="line 2: expected a JSON object, got list"):
        files.read_jsonl(log)


# ------------------------------------------------------------------------------------- teacher cache

GOLD = {f"p{i}": f"{10 + i}.50" for i in range(4)}


def teacher_puzzles():
    from puzzles.base import Puzzle

    return [Puzzle(id=pid, category="unit_conversion", prompt=f"In Alice's Wonderland, a secret unit conversion. "
                   f"Puzzle {pid}.", examples=[], query=None, answer=gold) for pid, gold in GOLD.items()]


class RightTeacher:
    """Answers each puzzle right, with a reasoning longer than a page (so an append needs new blocks: a full
    disk refuses it); ``asked`` lists the puzzles asked."""

    def __init__(self):
        self.asked = []

    def reply(self, body: dict) -> tuple[int, dict]:
        pid = body["messages"][-1]["content"].split("Puzzle ")[1].split(".")[0]
        self.asked.append(pid)
        return 200, {"choices": [{"message": {"role": "assistant",
                                              "content": f"<think>{'x' * 6000}</think>\\boxed{{{GOLD[pid]}}}"}}]}


def test_teacher_cache_survives_a_full_disk_and_a_torn_tail(small_disk, chat_server):
    from puzzles.teacher import TeacherConfig
    from puzzles.teacher import fill as teacher_fill

    chat_server["fake"] = teacher = RightTeacher()
    asked = teacher.asked
    cfg = TeacherConfig(base_url=chat_server["url"], model="t", rps=500, concurrency=1, max_retries=0)
    cache, puzzles = small_disk / "teacher.jsonl", teacher_puzzles()
    teacher_fill(puzzles[:1], cfg, cache, progress=False)
    filler = fill(small_disk, 0)
    with pytest.raises(OSError) as e:  # the next reply cannot be cached: the run stops, naming why
        teacher_fill(puzzles, cfg, cache, progress=False)
    assert e.value.errno == errno.ENOSPC
    assert [r["id"] for r in files.read_jsonl(cache)] == ["p0"]  # what was cached is whole
    filler.unlink()
    with open(cache, "a") as f:
        f.write('{"id": "p1", "sample": 0, "mod')  # and a kill cut the next append short
    asked.clear()
    rows, stats = teacher_fill(puzzles, cfg, cache, progress=False)  # resume
    assert sorted(asked) == ["p1", "p2", "p3"] and stats["cached"] == 1  # p0 costs no request again
    assert [r["id"] for r in rows] == list(GOLD) and all(r["completion"].startswith("x" * 100) for r in rows)
    assert sorted(r["id"] for r in files.read_jsonl(cache, strict=True)) == list(GOLD)  # the torn line is gone
    asked.clear()
    with open(cache, "a") as f:
        f.write('{"id": "p2", "sam')  # torn again, with every puzzle decided
    again, _ = teacher_fill(puzzles, cfg, cache, progress=False)
    assert asked == [] and again == rows and len(files.read_jsonl(cache, strict=True)) == len(GOLD)


# --------------------------------------------------------------------------- a checkpoint cut short


def fresh_session(tiny_model_dir) -> ModelSession:
    return ModelSession.load(tiny_model_dir, ModelConfig(path=str(tiny_model_dir), dtype="float32",
                                                         gradient_checkpointing=False),
                             LoraConfig(rank=4, alpha=8), GenerationConfig(engine="hf"))


def cfg(**kw) -> SFTConfig:
    return SFTConfig(**{"learning_rate": 1e-3, "batch_size": 2, "grad_accum": 1, "max_length": 128,
                        "logging_steps": 1, "warmup": 0.0, **kw})


@pytest.mark.parametrize("cut", ["torn_trainer_state", "killed_before_trainer_state"])
def test_resume_falls_back_to_the_previous_complete_checkpoint(tiny_session, tiny_model_dir, tmp_path, cut):
    out = tmp_path / "ckpt"
    assert sft.train(tiny_session, ROWS, cfg(max_steps=4, save_steps=2), out)["steps"] == 4
    last = out / "checkpoint-4"
    state = last / "trainer_state.json"
    if cut == "torn_trainer_state":  # killed while the Trainer wrote its state, the last file of a save
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    else:  # killed mid-save: the weights half written, no state yet
        state.unlink()
        weights = next(last.glob("*.safetensors"))
        weights.write_bytes(weights.read_bytes()[:100])
    assert sft.last_checkpoint(out) == str(out / "checkpoint-2")

    logs = []
    resumed = sft.train(fresh_session(tiny_model_dir), ROWS, cfg(max_steps=4, save_steps=2), out, log=logs.append)
    assert resumed["steps"] == 4
    assert [r["step"] for r in logs if "loss" in r] == [3, 4]  # from step 2, not from scratch, not failing
    assert sft.checkpoint_complete(out / "checkpoint-4")  # the cut folder was written again, whole


# --------------------------------------------------------------------- a second process on a run dir


def hold_lock(path: Path) -> subprocess.Popen:
    """Another process that takes ``path``'s run lock and keeps it until killed."""
    code = ("import sys, time\nfrom fastnemo.run import RunDir\nRunDir(sys.argv[1]).lock()\n"
            "print('locked', flush=True)\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_process_on_a_stage_commands_out_folder_is_refused(tiny_model_dir, tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp_path / "out"
    holder = hold_lock(out)
    try:
        r = CliRunner().invoke(main, ["sft", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out),
                                      "max_steps=1", "batch_size=2", "grad_accum=1", "max_length=128"])
        assert r.exit_code == 1 and "in use" in r.output and f"pid {holder.pid}" in r.output, r.output
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing trained, nothing written
    finally:
        holder.kill()
        holder.wait()
    r = CliRunner().invoke(main, ["sft", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out),
                                  "lora.rank=4", "max_steps=1", "batch_size=2", "grad_accum=1", "max_length=128"])
    assert r.exit_code == 0, r.output
    assert (out / "adapter" / "adapter_model.safetensors").exists()


def test_a_second_recipe_process_on_a_running_run_is_refused(tiny_model_dir, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'run_dir = "run"\nstages = ["data", "sft"]\n[model]\npath = "{tiny_model_dir}"\n'
                      'dtype = "float32"\ngradient_checkpointing = false\nmax_seq_length = 256\n[lora]\nrank = 4\n'
                      "[data]\nn = 12\nworkers = 1\n[sft]\nmax_steps = 2\nbatch_size = 2\ngrad_accum = 1\n"
                      "max_length = 256\nsave_steps = 1\n")
    first = subprocess.Popen([sys.executable, "-m", "fastnemo", "recipe", str(recipe)], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lock = tmp_path / "run" / ".lock"
    deadline = time.time() + 120
    while not (lock.exists() and lock.read_text().strip() == f"pid {first.pid}"):
        assert first.poll() is None and time.time() < deadline, first.stdout.read()
        time.sleep(0.05)
    second = CliRunner().invoke(main, ["recipe", str(recipe)])
    assert second.exit_code == 1 and f"in use by pid {first.pid}" in second.output, second.output
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out  # the first run never noticed
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert list(manifest["stages"]) == ["r1-data", "r1-sft"]
