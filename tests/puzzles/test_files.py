"""JSONL files and logs (puzzles/files.py): an atomic round trip, a torn last line skipped in a log and cut
by the next append, and every error naming the file and line. Disk-full and kill faults, with the writers
that use these: tests/fastnemo/test_files.py."""

from __future__ import annotations

import os

import pytest

from puzzles import files


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
