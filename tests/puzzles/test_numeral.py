import collections
import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from puzzles import numeral
from puzzles.base import PROMPT_SUFFIX, PuzzleFormatError, detect_category
from puzzles.traces import completion

REAL = "numeral_system"


def _real(rows):
    return [r for r in rows if detect_category(r["prompt"]) == REAL]


def test_real_rows_all_solved_exactly(train_dev_rows):
    rows = _real(train_dev_rows)
    assert len(rows) > 500
    wrong = []
    for r in rows:
        sol = numeral.solve(numeral.parse(r["prompt"]))
        if sol is None or sol.answer != r["answer"] or sol.status != "deduced":
            wrong.append((r["id"], sol and sol.answer, r["answer"]))
    assert wrong == []


def test_roundtrip_generate_parse_solve():
    for seed in range(3000):
        p = numeral.generate(random.Random(seed))
        q = numeral.parse(p.prompt + PROMPT_SUFFIX)  # from the text alone, as the harness shows it
        sol = numeral.solve(q)
        assert sol is not None and sol.answer == p.answer, p.prompt


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 3999))
def test_to_roman_roundtrip(n):
    values = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}
    r = numeral.to_roman(n)
    total = (
        sum(-values[a] if values[a] < values[b] else values[a] for a, b in itertools.pairwise(r))
        + values[r[-1]]
    )
    assert total == n
    assert "IIII" not in r and "XXXX" not in r and "CCCC" not in r


def test_known_numerals():
    assert [numeral.to_roman(n) for n in (4, 9, 14, 40, 90, 94, 99, 100, 400, 1994, 3999)] == [
        "IV",
        "IX",
        "XIV",
        "XL",
        "XC",
        "XCIV",
        "XCIX",
        "C",
        "CD",
        "MCMXCIV",
        "MMMCMXCIX",
    ]


def test_fidelity_with_real_rows(train_dev_rows):
    real = [numeral.parse(r["prompt"]) for r in _real(train_dev_rows)]
    gen = [numeral.generate(random.Random(s)) for s in range(2000)]
    for ps in (real, gen):
        counts = collections.Counter(p.features["n_examples"] for p in ps)
        assert set(counts) == {3, 4, 5}
        assert all(0.25 < c / len(ps) < 0.42 for c in counts.values())
        assert min(p.features["min_value"] for p in ps) == 1
        assert max(p.features["max_value"] for p in ps) == 100
        one_digit = sum(x < 10 for p in ps for x, _ in p.examples) / sum(len(p.examples) for p in ps)
        assert 0.06 < one_digit < 0.12  # 9 % under uniform 1..100


def test_difficulty_knobs():
    p = numeral.generate(random.Random(0), {"n_examples": 7, "value_range": (500, 3999)})
    assert len(p.examples) == 7 and all(500 <= x <= 3999 for x, _ in p.examples)
    assert numeral.solve(p).answer == p.answer


def test_contradicting_examples_abstain():
    prompt = numeral.generate(random.Random(1)).prompt.replace(" -> ", " -> I", 1)
    assert numeral.solve(numeral.parse(prompt)) is None


def test_trace_checks_examples_and_ends_with_answer():
    p = numeral.parse(
        "In Alice's Wonderland, numbers are secretly converted into a different numeral system. "
        "Some examples are given below:\n11 -> XI\n94 -> XCIV\nNow, write the number 48 in the Wonderland "
        "numeral system."
    )
    sol = numeral.solve(p)
    text = numeral.trace(p, sol)
    assert sol.answer == "XLVIII"
    assert "94 = 90 + 4 -> XC + IV = XCIV" in text
    assert "- tens: 4 -> 40 = XL" in text and "- units: 8 -> 8 = VIII" in text
    assert text.rstrip().endswith("is XLVIII.")
    assert completion(text, sol.answer).endswith("\\boxed{XLVIII}")
    assert len(text) < 3000


@pytest.mark.parametrize(
    "prompt",
    [
        "",
        (
            "In Alice's Wonderland, numbers are secretly converted into a different numeral system. "
            "Some examples are given below:\n11 -> XI\nNow, write 38."
        ),
        (
            "In Alice's Wonderland, numbers are secretly converted into a different numeral system. "
            "Some examples are given below:\n11 = XI\nNow, write the number 38 in the Wonderland numeral system."
        ),
        "Some other header\n11 -> XI\nNow, write the number 38 in the Wonderland numeral system.",
    ],
)
def test_bad_prompts_raise(prompt):
    with pytest.raises(PuzzleFormatError):
        numeral.parse(prompt)
