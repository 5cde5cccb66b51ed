"""CSV loading with row-level errors, the SFT row contract (JSONL files: tests/fastnemo/test_files.py)."""

from __future__ import annotations

import csv
import json

import pytest

from puzzles.dataset import (
    DatasetError,
    check_sft_row,
    load_csv,
    read_csv,
    write_csv,
)

NUMERAL = ("In Alice's Wonderland, numbers are secretly converted into a different numeral system. Some examples "
           "are given below:\n11 -> XI\n15 -> XV\n94 -> XCIV\nNow, write the number 38 in the Wonderland numeral "
           "system.")
GRAVITY = ("In Alice's Wonderland, the gravitational constant has been secretly changed. Here are some example "
           "observations:\nFor t = 1.37s, distance = 14.92 m\nFor t = 4.27s, distance = 144.96 m\n"
           "For t = 3.28s, distance = 85.54 m\nNow, determine the falling distance for t = 4.41s given "
           "d = 0.5*g*t^2.")


def _write(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_good_csv_parses_every_row(tmp_path):
    p = _write(tmp_path / "ok.csv", ["id", "prompt", "answer"], [["a", NUMERAL, "XXXVIII"], ["b", GRAVITY, "154.62"]])
    puzzles = load_csv(p, require_answer=True)
    assert [(x.id, x.category, x.answer) for x in puzzles] == [
        ("a", "numeral_system", "XXXVIII"), ("b", "gravity", "154.62")]
    assert puzzles[0].prompt == NUMERAL and len(puzzles[0].examples) == 3
    # answer column optional unless required
    p2 = _write(tmp_path / "test.csv", ["id", "prompt"], [["a", NUMERAL]])
    assert load_csv(p2)[0].answer is None
    with pytest.raises(DatasetError, match=r"test\.csv: header .* lacks column\(s\) \['answer'\]"):
        load_csv(p2, require_answer=True)


@pytest.mark.parametrize("row, reason", [
    (["x", "", "1"], "row 2 \\(id 'x'\\), line 7: empty prompt"),
    (["x", "In Alice's Wonderland, something unheard of happens.", "1"], "row 2 .*unparseable prompt"),
    (["x"], "row 2 .*missing column: no value for 'prompt'"),
    (["a", GRAVITY, "1"], "row 2 \\(id 'a'\\).*duplicate id"),
    (["", GRAVITY, "1"], "row 2.*empty id"),
    (["x", GRAVITY, "1", "surplus"], "row 2.*extra column"),
])
def test_malformed_row_names_file_row_and_reason(tmp_path, row, reason):
    p = _write(tmp_path / "bad.csv", ["id", "prompt", "answer"], [["a", NUMERAL, "XXXVIII"], row])
    with pytest.raises(DatasetError, match=f"bad\\.csv: {reason}"):
        load_csv(p)


def test_skip_bad_counts_instead_of_failing(tmp_path, capsys):
    rows = [["a", NUMERAL, "XXXVIII"], ["b", "", "1"], ["c", "not a puzzle", "2"], ["d", GRAVITY, ""]]
    p = _write(tmp_path / "mixed.csv", ["id", "prompt", "answer"], rows)
    load = read_csv(p, require_answer=True, skip_bad=True)
    assert [x.id for x in load.puzzles] == ["a"]
    assert [(e.row, e.id) for e in load.skipped] == [(2, "b"), (3, "c"), (4, "d")]
    assert load.skipped_by_reason() == {"empty prompt": 1, "unparseable prompt": 1, "empty answer": 1}
    assert len(load_csv(p, skip_bad=True)) == 2  # answer not required: d is fine
    assert "skipped 2 bad row(s)" in capsys.readouterr().err


def test_multiline_prompt_line_numbers(tmp_path):
    p = _write(tmp_path / "ml.csv", ["id", "prompt"], [["a", NUMERAL], ["b", "junk"]])
    with pytest.raises(DatasetError, match="row 2 \\(id 'b'\\), line 7: unparseable"):
        load_csv(p)


def test_missing_file_and_bad_header(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load_csv(tmp_path / "nope.csv")
    p = _write(tmp_path / "h.csv", ["ident", "text"], [["a", NUMERAL]])
    with pytest.raises(DatasetError, match=r"lacks column\(s\) \['id', 'prompt'\]"):
        load_csv(p)


def test_write_csv(tmp_path):
    write_csv(tmp_path / "p.csv", ["id", "prediction"], [("a", "XI"), ("b", "")])
    with open(tmp_path / "p.csv", newline="") as f:
        assert list(csv.reader(f)) == [["id", "prediction"], ["a", "XI"], ["b", ""]]


def test_check_sft_row():
    row = {"id": "a", "category": "gravity", "prompt": "p", "answer": "1.50", "completion": "x\n</think>\n\\boxed{1.50}",
           "source": "solver", "status": "deduced", "features": {}}
    assert check_sft_row(row) is None
    assert "source" in check_sft_row({**row, "source": "human"})
    assert "boxed" in check_sft_row({**row, "completion": "x"})
    assert "missing" in check_sft_row({k: v for k, v in row.items() if k != "features"})
    assert json.loads(json.dumps(row)) == row
