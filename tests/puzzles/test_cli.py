"""The ``data`` Click group through CliRunner: happy paths, and bad input giving a clear non-zero exit."""

from __future__ import annotations

import csv
import json
import random

from click.testing import CliRunner

from puzzles import categories
from puzzles.cli import data
from puzzles.dataset import check_sft_row
from puzzles.files import read_jsonl


def _csv(path, rows, header=("id", "prompt", "answer")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _puzzles(n=3, cats=("numeral_system", "gravity")):
    rng = random.Random(1)
    return [(f"{c}-{i}", p.prompt, p.answer) for c in cats for i in range(n)
            for p in [categories.generate(c, rng, None)]]


def test_help_everywhere():
    runner = CliRunner()
    for args in ([], ["build"], ["solve"], ["analyze"], ["teacher"]):
        res = runner.invoke(data, [*args, "--help"])
        assert res.exit_code == 0 and "Usage:" in res.output
    assert "--floor" in runner.invoke(data, ["build", "--help"]).output


def test_build_writes_contract_rows(tmp_path):
    ref = _csv(tmp_path / "ref.csv", _puzzles())
    out = tmp_path / "sft.jsonl"
    res = CliRunner().invoke(data, ["build", "--n", "16", "--like", str(ref), "--floor", "2", "--out", str(out),
                                    "--workers", "1", "--category", "numeral_system", "--category", "gravity"])
    assert res.exit_code == 0, res.output
    rows = read_jsonl(out, strict=True)
    assert len(rows) == 16 and all(check_sft_row(r) is None for r in rows)
    assert json.loads((tmp_path / "sft.jsonl.stats.json").read_text())["rows"] == 16
    assert "rows/s" in res.output


def test_build_bad_arguments(tmp_path):
    runner = CliRunner()
    res = runner.invoke(data, ["build", "--n", "10", "--floor", "5", "--out", str(tmp_path / "o.jsonl")])
    assert res.exit_code != 0 and "exceeds --n 10" in res.output
    res = runner.invoke(data, ["build", "--n", "10", "--like", str(tmp_path / "nope.csv"), "--out", "x"])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_solve_writes_predictions_in_input_order(tmp_path):
    rows = _puzzles(2) + [("junk", "not a puzzle at all", "1")]
    src = _csv(tmp_path / "in.csv", rows)
    runner = CliRunner()
    res = runner.invoke(data, ["solve", str(src), "--out", str(tmp_path / "p.csv"), "--workers", "1"])
    assert res.exit_code == 1 and "row 5 (id 'junk')" in res.output and "unparseable" in res.output
    res = runner.invoke(data, ["solve", str(src), "--out", str(tmp_path / "p.csv"), "--workers", "1", "--skip-bad"])
    assert res.exit_code == 0, res.output
    with open(tmp_path / "p.csv", newline="") as f:
        got = list(csv.DictReader(f))
    assert [r["id"] for r in got] == [r[0] for r in rows]
    assert [r["prediction"] for r in got[:4]] == [r[2] for r in rows[:4]] and got[4]["prediction"] == ""
    assert "deduced" in res.output or "ded ok" in res.output


def test_analyze_and_its_errors(tmp_path):
    src = _csv(tmp_path / "a.csv", _puzzles(2))
    res = CliRunner().invoke(data, ["analyze", str(src), "--out", str(tmp_path / "rep"), "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "rep" / "report.png").exists() and "numeral_system" in res.output
    bad = _csv(tmp_path / "b.csv", [("x", "y")], header=("ident", "text"))
    res = CliRunner().invoke(data, ["analyze", str(bad)])
    assert res.exit_code == 1 and "lacks column" in res.output


def test_teacher_refuses_csv_without_answers(tmp_path):
    src = _csv(tmp_path / "t.csv", [(i, p) for i, p, _ in _puzzles(1)], header=("id", "prompt"))
    res = CliRunner().invoke(data, ["teacher", str(src), "--out", str(tmp_path / "t.jsonl"),
                                    "--base-url", "http://127.0.0.1:9/v1", "--model", "m"])
    assert res.exit_code == 1 and "lacks column(s) ['answer']" in res.output
