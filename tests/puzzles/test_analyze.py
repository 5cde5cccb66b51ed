"""The analysis report: counts, features, quirks, solver outcomes, JSON and PNG written."""

from __future__ import annotations

import csv
import json
import random

from puzzles import categories
from puzzles.analyze import analyze, group_of, solve_one, solver_table
from puzzles.mix import MixConfig, build_mix

SYMBOLIC = ("In Alice's Wonderland, a secret set of transformation rules is applied to equations. Below are a "
            "few examples:\n#]+\\# = \"!\n#^-{] = ]#\n\\{*\\! = #\\^:\nNow, determine the result for: #!-\"^")


def _csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "prompt", "answer"])
        w.writerows(rows)
    return path


def test_report_counts_outcomes_and_writes_files(tmp_path):
    rng = random.Random(3)
    rows = []
    for cat in ("numeral_system", "gravity", "cipher"):
        for i in range(4):
            p = categories.generate(cat, rng, None)
            rows.append([f"{cat}-{i}", p.prompt, p.answer])
    rows[0][2] = "MMMM"  # a wrong gold: the numeral solver's deduced answer must count as deduced_wrong
    rows.append(["eq", SYMBOLIC, "\\:"])
    path = _csv(tmp_path / "t.csv", rows)

    report = analyze(path, tmp_path / "rep", workers=1, progress=False)
    assert report["rows"] == 13 and report["rows_per_group"]["numeral_system"] == 4
    assert report["rows_per_group"]["equations/symbolic"] == 1
    solv = report["solvers"]
    assert solv["numeral_system"]["deduced_wrong"] == 1 and solv["numeral_system"]["deduced_right"] == 3
    assert solv["all"]["n"] == 13
    assert sum(solv["all"][k] for k in ("deduced_right", "deduced_wrong", "guessed_right", "guessed_wrong",
                                        "abstained", "error")) == 13
    assert "brace or backslash (needs care inside \\boxed{})" in report["answers"]["equations/symbolic"]["quirks"]
    assert report["answers"]["gravity"]["quirks"]["decimal with 2 places"] == 4
    assert report["features"]["numeral_system"]["n_examples"]

    on_disk = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert on_disk["solvers"]["all"]["n"] == 13
    png = (tmp_path / "rep" / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_sft_jsonl_input_and_no_solve(tmp_path):
    build_mix(MixConfig(n=12, out=str(tmp_path / "m.jsonl"), categories=("numeral_system", "gravity"),
                        workers=1, progress=False))
    report = analyze(tmp_path / "m.jsonl", tmp_path / "r", solve=False, progress=False)
    assert report["format"] == "sft-jsonl" and report["source"] == {"solver": 12}
    assert report["rows_per_group"] == {"numeral_system": 6, "gravity": 6} and "solvers" not in report
    assert (tmp_path / "r" / "report.png").exists()


def test_solver_table_percentiles_and_groups():
    p = categories.parse(SYMBOLIC)
    assert group_of(p) == "equations/symbolic"
    recs = [{"group": "g", "outcome": "deduced_right", "seconds": s / 100} for s in range(1, 101)]
    recs.append({"group": "h", "outcome": "abstained", "seconds": 0.0})
    t = solver_table(recs)
    assert t["g"]["correct_share"] == 1.0 and t["g"]["p50_s"] == 0.51 and t["g"]["p95_s"] == 0.96
    assert t["h"]["abstain_share"] == 1.0 and t["all"]["n"] == 101
    rec = solve_one(categories.generate("numeral_system", random.Random(0), None))
    assert rec["outcome"] == "deduced_right" and rec["exact"]


def test_a_csv_with_zero_usable_rows_is_reported_not_a_matplotlib_traceback(tmp_path):
    """Every row unparseable: the report says so and the plot is written (matplotlib could not box-plot nothing)."""
    from click.testing import CliRunner

    from puzzles.cli import data

    path = tmp_path / "t.csv"
    path.write_text("id,prompt,answer\nx1,What is the capital of France?,Paris\n")
    r = CliRunner().invoke(data, ["analyze", str(path), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, repr(r.exception)
    assert (tmp_path / "rep" / "report.png").stat().st_size > 0
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["rows_per_group"] == {}
