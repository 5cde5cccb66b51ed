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


def _csv_text(rows) -> str:
    import io

    buf = io.StringIO()
    csv.writer(buf).writerows([["id", "prompt", "answer"], *rows])
    return buf.getvalue()


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-be", "utf-32"])
def test_a_csv_with_a_byte_order_mark_is_read(tmp_path, encoding):
    """Spreadsheets save UTF-8 with a BOM or UTF-16: the mark says which, so the rows are read as written."""
    path = tmp_path / "t.csv"
    data = _csv_text([["a", NUMERAL, "XXXVIII"]]).encode(encoding)
    path.write_bytes(data if encoding != "utf-16-be" else b"\xfe\xff" + data)
    (p,) = load_csv(path, require_answer=True)
    assert p.id == "a" and p.prompt == NUMERAL and p.answer == "XXXVIII"


@pytest.mark.parametrize(("content", "needle"), [
    (_csv_text([["a", NUMERAL.replace("Alice's", "Alicé's"), "XXXVIII"]]).encode("latin-1"), "line 2: not UTF-8"),
    (b"id,prompt,answer\n\x00\x01\x02\xff\xfe,b,c\n", "line 2: not UTF-8"),
    (b"id,prompt,answer\na,\x00\x01,c\n", "line 2: a NUL byte"),
])
def test_a_csv_in_another_encoding_or_binary_is_one_line_naming_the_file(tmp_path, content, needle):
    path = tmp_path / "t.csv"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=needle) as e:
        read_csv(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("content", [
    _csv_text([["a", NUMERAL.replace("Alice's", "Alicé's"), "XXXVIII"]]).encode("latin-1"),
    "id,prompt,answer\na,b,c\n".encode("utf-16-le"),  # no mark: NUL bytes between the letters
    bytes(range(256)) * 4,
])
def test_data_solve_on_a_latin1_utf16_or_binary_csv_is_one_line(tmp_path, content):
    from click.testing import CliRunner

    from puzzles.cli import data

    path = tmp_path / "t.csv"
    path.write_bytes(content)
    r = CliRunner().invoke(data, ["solve", str(path), "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), repr(r.exception)
    assert str(path) in r.output and "Traceback" not in r.output
