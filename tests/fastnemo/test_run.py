"""The run directory: lock, manifest, artifact integrity, metrics, stage folders."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fastnemo.run import ManifestError, RunDir, RunLocked

REPO = Path(__file__).resolve().parents[2]

# A second process tries the lock and reports what happened (exit 3 = refused, 0 = took it).
_TRY_LOCK = textwrap.dedent(
    """
    import sys
    from fastnemo.run import RunDir, RunLocked
    try:
        RunDir(sys.argv[1]).lock()
    except RunLocked as e:
        print(e)
        sys.exit(3)
    print("took it")
    """
)


def try_lock_in_subprocess(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _TRY_LOCK, str(path)], capture_output=True, text=True,
                          cwd=REPO, timeout=60, check=False)


def test_lock_refuses_a_second_process_and_is_released(tmp_path):
    run = RunDir(tmp_path / "run").lock()
    try:
        p = try_lock_in_subprocess(run.path)
        assert p.returncode == 3, p.stderr
        assert "in use" in p.stdout and "pid" in p.stdout  # names the holder
    finally:
        run.unlock()
    p = try_lock_in_subprocess(run.path)
    assert p.returncode == 0, p.stdout + p.stderr


def test_lock_is_released_when_the_holder_dies(tmp_path):
    path = tmp_path / "run"
    # the holder exits without unlocking: the kernel drops a flock with the process
    code = f"from fastnemo.run import RunDir; RunDir({str(path)!r}).lock(); import os; os._exit(0)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)
    run = RunDir(path).lock()  # not refused by the stale .lock file
    run.unlock()


def test_lock_refuses_a_second_holder_in_the_same_process(tmp_path):
    run = RunDir(tmp_path).lock()
    try:
        with pytest.raises(RunLocked):
            RunDir(tmp_path).lock()
    finally:
        run.unlock()


def test_finish_then_done(tmp_path):
    run = RunDir(tmp_path)
    d = run.stage_dir("r1-data")
    (d / "sft.jsonl").write_text('{"a": 1}\n')
    adapter = d / "adapter"
    adapter.mkdir()
    (adapter / "w.bin").write_bytes(b"123")
    assert run.done("r1-data") is None
    entry = run.finish("r1-data", {"sft": d / "sft.jsonl", "adapter": adapter}, {"rows": 1})
    assert entry["artifacts"]["sft"]["path"] == "r1-data/sft.jsonl"
    again = RunDir(tmp_path).done("r1-data")  # read back from disk
    assert again == json.loads(json.dumps(entry))
    assert again["summary"] == {"rows": 1}
    assert RunDir(tmp_path).artifact("r1-data", "adapter") == tmp_path / "r1-data" / "adapter"
    with pytest.raises(RuntimeError, match="already finished"):
        run.stage_dir("r1-data")  # a finished stage's folder is never wiped


@pytest.mark.parametrize("change", ["edit", "delete", "edit_in_dir"])
def test_changed_artifact_is_detected(tmp_path, change):
    run = RunDir(tmp_path)
    d = run.stage_dir("r1-sft")
    f = d / "data.jsonl"
    f.write_text("one\n")
    adapter = d / "adapter"
    adapter.mkdir()
    (adapter / "w.bin").write_bytes(b"\x00" * 16)
    run.finish("r1-sft", {"data": f, "adapter": adapter})
    if change == "edit":
        f.write_text("two\n")
    elif change == "delete":
        f.unlink()
    else:
        (adapter / "w.bin").write_bytes(b"\x01" * 16)
    with pytest.raises(RuntimeError, match="missing or changed") as e:
        run.done("r1-sft")
    assert "r1-sft" in str(e.value)


def test_manifest_keeps_stages_in_the_order_they_finished(tmp_path):
    run = RunDir(tmp_path)
    order = ["r1-sft", "r1-grpo", "r2-sft", "r10-sft", "pack"]  # not alphabetical
    for key in order:
        f = run.stage_dir(key) / "x"
        f.write_text(key)
        run.finish(key, {"x": f})
    assert list(RunDir(tmp_path).manifest()["stages"]) == order
    assert not list(tmp_path.glob(".manifest.json.*"))  # no temp file left behind


def test_metrics_tolerate_a_torn_last_line(tmp_path):
    run = RunDir(tmp_path)
    run.log({"step": 1, "loss": 2.0})
    run.log({"step": 2, "loss": 1.5})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "lo')  # the process died mid-write
    recs = run.read_metrics()
    assert [r["step"] for r in recs] == [1, 2]
    assert all("time" in r for r in recs)
    run.log({"step": 4, "loss": 1.0})  # appending after the torn line still works
    assert [r["step"] for r in run.read_metrics()] == [1, 2, 4]


def test_metrics_accept_numpy_like_values(tmp_path):
    import torch

    run = RunDir(tmp_path)
    run.log({"loss": torch.tensor(0.5).item(), "grad_norm": torch.tensor(1.25)})  # a tensor falls to float()
    assert run.read_metrics()[0]["grad_norm"] == 1.25


def test_stage_dir_cleans_leftovers_of_an_interrupted_try(tmp_path):
    run = RunDir(tmp_path)
    d = run.stage_dir("r1-data")
    (d / "half.jsonl").write_text("partial")
    (d / "sub").mkdir()
    (d / "sub" / "x").write_text("y")
    d2 = run.stage_dir("r1-data")  # the retry (no manifest entry: the stage never finished)
    assert d2 == d and d2.is_dir() and not any(d2.iterdir())


def test_write_config_keeps_the_earlier_recipe(tmp_path):
    run = RunDir(tmp_path / "run")
    src = tmp_path / "r.toml"
    src.write_text('name = "a"\n')
    run.write_config(str(src), {"name": "a"})
    assert (run.path / "recipe.toml").read_text() == 'name = "a"\n'
    assert json.loads((run.path / "config.json").read_text()) == {"name": "a"}
    src.write_text('name = "b"\n')
    run.write_config(str(src), {"name": "b"})
    assert (run.path / "recipe.toml").read_text() == 'name = "b"\n'
    kept = list(run.path.glob("recipe.*.toml"))
    assert len(kept) == 1 and kept[0].read_text() == 'name = "a"\n'


@pytest.mark.parametrize("text", ['{"stages": {"r1-data": {"artifacts": {"sft": {"pa', "", "[]", "{}", "\xff\xfe",
                                  '{"stages": {"r1-data": 3}}'])
def test_an_unreadable_manifest_is_one_error_naming_it(tmp_path, text):
    run = RunDir(tmp_path)
    run.manifest_path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ManifestError) as e:
        run.manifest()
    assert str(e.value).startswith(f"{run.manifest_path}: ") and "\n" not in str(e.value)


def test_forget_metrics_drops_a_stage_past_a_step_and_keeps_them_aside(tmp_path):
    run = RunDir(tmp_path)
    for step in (1, 2, 3):
        run.log({"stage": "r1-sft", "step": step, "loss": 1.0})
    run.log({"stage": "r1-data", "rows": 4})
    run.forget_metrics("r1-sft", after_step=2)  # resumed from checkpoint-2: step 3 is logged again
    assert [(m["stage"], m.get("step")) for m in run.read_metrics()] == [("r1-sft", 1), ("r1-sft", 2), ("r1-data", None)]
    aside = tmp_path / "aside"
    run.forget_metrics("r1-sft", into=aside)
    assert [m["stage"] for m in run.read_metrics()] == ["r1-data"]
    assert [m["step"] for m in RunDir(aside).read_metrics()] == [1, 2]


def test_move_aside_takes_a_finished_stage_out_of_the_run(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / "r1-data").mkdir()
    (tmp_path / "r1-data" / "sft.jsonl").write_text("{}\n")
    run.finish("r1-data", {"sft": tmp_path / "r1-data" / "sft.jsonl"})
    run.log({"stage": "r1-data", "rows": 1})
    aside = run.move_aside(["r1-data", "r1-sft"])
    assert run.manifest()["stages"] == {} and not (tmp_path / "r1-data").exists()
    assert (aside / "r1-data" / "sft.jsonl").read_text() == "{}\n"
    assert list(json.loads((aside / "manifest.json").read_text())["stages"]) == ["r1-data"]
    assert run.read_metrics() == [] and run.move_aside(["r1-data"]) is None


def test_lock_never_opens_a_symlink_and_leaves_its_target_alone(tmp_path):
    """A .lock that is a symlink (planted, or a copied run dir) was opened through and its target truncated."""
    target = tmp_path / "precious.txt"
    target.write_text("do not truncate me")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(target)
    with pytest.raises(RunLocked, match="symlink"):
        RunDir(run).lock()
    assert target.read_text() == "do not truncate me"
