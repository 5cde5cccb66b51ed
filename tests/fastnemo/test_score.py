"""``fastnemo score --compare``: how two scorings of the same rows differ (the same adapter at two
``--max-num-seqs``, say), and the one-line refusals of a file that is not a ``--json`` output. The scoring
itself runs on real vLLM in the vLLM lane (tests/fastnemo/test_harness_vllm.py)."""

from __future__ import annotations

import json

import click
import pytest

from fastnemo.score import compare, compare_line, read_scored


def row(i, correct, tokens):
    return {"id": str(i), "category": "cipher", "correct": correct, "token_ids": tokens, "text": ""}


def test_compare_counts_outputs_and_verdicts_by_id():
    ours = [row(1, True, [1, 2]), row(2, False, [3]), row(3, True, [4, 5]), row(4, False, [6]), row(9, True, [])]
    theirs = [row(4, True, [7]), row(3, True, [4, 6]), row(2, False, [3]), row(1, True, [1, 2])]  # other order
    c = compare(ours, theirs)
    assert c == {"rows": 4, "outputs_differing": 2, "verdicts_differing": 1, "right_here_only": 0,
                 "right_there_only": 1, "correct_here": 2, "correct_there": 3}
    line = compare_line(c, "s64.json")
    assert line.startswith("compared with s64.json on 4 rows: outputs differ in 2, verdicts in 1 (0 right only "
                           "here, 1 only there)")
    assert compare_line(compare(ours, [row(7, True, [])]), "x.json") == "compared with x.json: no row id in common"
    no_ids = [{**r, "id": None} for r in ours[:2]]  # a CSV without an id column: rows match by position
    assert compare(no_ids, [{**r, "id": None} for r in (ours[0], row(2, True, [8]))])["verdicts_differing"] == 1


@pytest.mark.parametrize("text, says", [
    ("{", "line 1: not JSON"),
    ('{"id": 1}', "not a `fastnemo score --json` file"),
    ('[{"id": 1, "correct": true}]', "not a `fastnemo score --json` file"),
])
def test_a_file_that_is_not_a_score_json_is_refused_in_one_line(tmp_path, text, says):
    path = tmp_path / "other.json"
    path.write_text(text)
    with pytest.raises(click.UsageError) as e:
        read_scored(path)
    assert str(e.value).startswith(f"--compare {path}") and says in str(e.value) and "\n" not in str(e.value)
    path.write_text(json.dumps([row(1, True, [1])]))
    assert read_scored(path)[0]["token_ids"] == [1]
