import collections
import random
import re
from decimal import Decimal

import pytest

from puzzles import gravity
from puzzles.base import PROMPT_SUFFIX, PuzzleFormatError, detect_category
from puzzles.metric import is_correct

REAL = "gravity"
PRODUCT = re.compile(
    r"(\d+(?:\.\d+)?) \* (\d+(?:\.\d+)?) = (?:\d+(?:\.\d+)? \* \d+(?:\.\d+)? \+ \d+(?:\.\d+)? \* \d+(?:\.\d+)? = "
    r"(\d+(?:\.\d+)?) \+ (\d+(?:\.\d+)?) = )?(\d+(?:\.\d+)?)"
)


def _real(rows):
    return [r for r in rows if detect_category(r["prompt"]) == REAL]


def test_real_rows(train_dev_rows):
    rows = _real(train_dev_rows)
    assert len(rows) > 500
    status = collections.Counter()
    for r in rows:
        sol = gravity.solve(gravity.parse(r["prompt"]))
        assert sol is not None, r["id"]
        assert is_correct(sol.answer, r["answer"], strict=True), (r["id"], sol.answer, r["answer"])
        assert sol.answer == str(float(sol.answer))  # the real format: Python's str of a 2-decimal round
        exact = sol.answer == r["answer"]
        if sol.status == "deduced":
            assert exact, (r["id"], sol.answer, r["answer"])  # zero wrong among deduced
        status[sol.status, exact] += 1
    assert status["deduced", True] / len(rows) > 0.5
    assert (status["deduced", True] + status["guessed", True]) / len(rows) > 0.85


def test_roundtrip_generate_parse_solve():
    status = collections.Counter()
    for seed in range(2000):
        p = gravity.generate(random.Random(seed))
        sol = gravity.solve(gravity.parse(p.prompt + PROMPT_SUFFIX))
        assert sol is not None
        assert is_correct(sol.answer, p.answer, strict=True), p.prompt
        if sol.status == "deduced":
            assert sol.answer == p.answer, p.prompt
        status[sol.status, sol.answer == p.answer] += 1
    assert status["deduced", True] > 1000 and sum(v for (_, ok), v in status.items() if ok) > 1700


def test_answer_format_drops_trailing_zero_like_real_rows():
    assert gravity.answer_str(Decimal("154.60")) == "154.6"
    assert gravity.answer_str(Decimal("76.00")) == "76.0"
    assert gravity.answer_str(Decimal("11.78")) == "11.78"


def test_fidelity_with_real_rows(train_dev_rows):
    real = [gravity.parse(r["prompt"]) for r in _real(train_dev_rows)]
    gen = [gravity.generate(random.Random(s)) for s in range(2000)]
    for ps in (real, gen):
        counts = collections.Counter(p.features["n_examples"] for p in ps)
        assert set(counts) == {3, 4, 5} and all(0.25 < c / len(ps) < 0.42 for c in counts.values())
        assert 1.0 <= min(p.features["min_t"] for p in ps) < 1.05
        assert 4.95 < max(p.features["max_t"] for p in ps) <= 5.0
        gs = [p.features["g"] for p in ps]
        assert 4.85 < min(gs) < 5.3 and 19.2 < max(gs) < 19.7
        ts = [t for p in ps for t, _ in p.examples]
        ds = [d for p in ps for _, d in p.examples]
        assert all(re.fullmatch(r"\d+\.\d\d?", x) for x in ts + ds)
        one_decimal = sum(len(x.split(".")[1]) == 1 for x in ts) / len(ts)
        assert 0.05 < one_decimal < 0.15


def test_trace_arithmetic_is_exact_and_ends_with_answer():
    for seed in range(50):
        p = gravity.generate(random.Random(seed))
        sol = gravity.solve(p)
        text = gravity.trace(p, sol)
        n = 0
        for a, b, p1, p2, prod in PRODUCT.findall(text):
            assert Decimal(a) * Decimal(b) == Decimal(prod)
            if p1:
                assert Decimal(p1) + Decimal(p2) == Decimal(prod)
            n += 1
        assert n == 2 * len(p.examples) + 2
        assert text.rstrip().endswith(f"The falling distance is {sol.answer} m.")
        assert len(text) < 5000


def test_inconsistent_examples_abstain():
    prompt = (
        f"{gravity.HEADER}\nFor t = 1.0s, distance = 5.0 m\nFor t = 2.0s, distance = 40.0 m\n"
        "For t = 3.0s, distance = 45.0 m\nNow, determine the falling distance for t = 4.0s given d = 0.5*g*t^2."
    )
    assert gravity.solve(gravity.parse(prompt)) is None


def test_deduced_only_when_examples_fix_the_rounding():
    head = f"{gravity.HEADER}\nFor t = 5.0s, distance = 122.5 m\nFor t = 4.0s, distance = 78.4 m\n"
    ask = "Now, determine the falling distance for t = {}s given d = 0.5*g*t^2."
    sol = gravity.solve(gravity.parse(head + ask.format("1.0")))  # g = 9.8 +- 0.0004: 4.9 +- 0.0002
    assert sol.answer == "4.9" and sol.status == "deduced"
    head = f"{gravity.HEADER}\nFor t = 1.0s, distance = 4.9 m\nFor t = 2.0s, distance = 19.6 m\n"
    sol = gravity.solve(gravity.parse(head + ask.format("4.0")))  # g in [9.7975, 9.8025]: 78.38 .. 78.42
    assert sol.status == "guessed" and is_correct(sol.answer, "78.4", strict=True)


@pytest.mark.parametrize(
    "prompt",
    [
        "",
        f"{gravity.HEADER}\nFor t = 1.37s, distance = 14.92 m\nNow, determine the falling distance for t = 4.41s.",
        (
            f"{gravity.HEADER}\nt = 1.37s, d = 14.92 m\nNow, determine the falling distance for t = 4.41s given "
            "d = 0.5*g*t^2."
        ),
    ],
)
def test_bad_prompts_raise(prompt):
    with pytest.raises(PuzzleFormatError):
        gravity.parse(prompt)
