"""Progress a person can read later: a recipe run with its output redirected to a file prints plain progress
lines during SFT and eval (with rate, ETA, loss or accuracy), tables are not cut to 80 columns, and the run
directory's run.log holds the same."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from fastnemo.progress import Ticker, progress_line

ROOT = Path(__file__).resolve().parents[2]


def test_progress_line_has_stage_step_rate_eta_and_info():
    line = progress_line("sft", 40, 300, 0.5, "step", "loss 1.23")
    assert re.fullmatch(r"\d\d:\d\d:\d\d sft: step 40/300 \(13 %\), 0.5 step/s, eta 8m40s, loss 1.23", line)
    assert "eta" not in progress_line("eval", 0, 10, 0.0, "puzzle", "")


def test_a_restarted_ticker_counts_its_rate_from_the_restart(capsys, monkeypatch):
    """The harness restarts its ticker once vLLM is up: 5 requests 10 s after a 600 s engine start read
    0.5 request/s with 10 s to go, not 5 / 610 s with 10 min to go (the lane showed "eta 2h59m")."""
    monkeypatch.setenv("FASTNEMO_PROGRESS_INTERVAL", "0")
    for restarted, want in ((False, r"0.0082 request/s, eta 10m10s"), (True, r"0.5 request/s, eta 0m10s")):
        t = Ticker("eval (harness)", 10, "request")
        t.t0 -= 600  # the engine's start
        if restarted:
            t.restart()
        t.t0 -= 10  # generating
        t.update(5)
        assert re.search(rf"request 5/10 \(50 %\), {want}", capsys.readouterr().err), want


def test_recipe_with_output_in_a_file_logs_progress_lines_and_full_tables(tiny_recipe, tmp_path):
    recipe = tiny_recipe(tmp_path, ["data", "sft", "eval"], name="log-test",
                         eval={"n_generated": 6, "sampling": {"max_tokens": 2}},
                         generation={"batch_size": 2})
    log = tmp_path / "log.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FASTNEMO_PROGRESS_INTERVAL": "0"}
    env.pop("COLUMNS", None)
    with open(log, "w") as f:
        done = subprocess.run([sys.executable, "-m", "fastnemo", "recipe", str(recipe)], stdout=f,
                              stderr=subprocess.STDOUT, env=env, timeout=600, check=False)
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    sft = re.findall(r"^\d\d:\d\d:\d\d sft: step (\d)/2 \(\d+ %\), [\d.e+-]+ step/s.*", text, re.MULTILINE)
    assert sft[-1] == "2" and len(sft) >= 2, text  # one line per step at interval 0, the last one at 2/2
    assert re.search(r"^.* sft: step 2/2 .*, loss [\d.]+", text, re.MULTILINE), text
    evals = re.findall(r"^\d\d:\d\d:\d\d eval: puzzle (\d)/6 .*puzzle/s.*acc [\d.]+%", text, re.MULTILINE)
    assert evals and evals[-1] == "6", text
    assert "…" not in text  # no table cell cut short
    run_log = (tmp_path / "run" / "run.log").read_text()
    assert "sft: step 2/2" in run_log and "eval: puzzle 6/6" in run_log and "r1-eval-sft" in run_log
    assert "\x1b[" not in run_log  # plain text
