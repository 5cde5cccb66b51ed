import collections
import random
import re
from decimal import Decimal

import pytest

from puzzles import units
from puzzles.base import PROMPT_SUFFIX, PuzzleFormatError, detect_category
from puzzles.metric import is_correct

REAL = "unit_conversion"
# "a * b = prod" or "a * b = w * b + f * b = p1 + p2 = prod" as the trace writes products
PRODUCT = re.compile(
    r"(\d+(?:\.\d+)?) \* (\d+(?:\.\d+)?) = (?:\d+(?:\.\d+)? \* \d+(?:\.\d+)? \+ \d+(?:\.\d+)? \* \d+(?:\.\d+)? = "
    r"(\d+(?:\.\d+)?) \+ (\d+(?:\.\d+)?) = )?(\d+(?:\.\d+)?)"
)


def check_products(text: str) -> int:
    """Every product the trace writes is exact; returns how many there are."""
    n = 0
    for a, b, p1, p2, prod in PRODUCT.findall(text):
        assert Decimal(a) * Decimal(b) == Decimal(prod), (a, b, prod)
        if p1:
            assert Decimal(p1) + Decimal(p2) == Decimal(prod)
        n += 1
    return n


def _real(rows):
    return [r for r in rows if detect_category(r["prompt"]) == REAL]


def test_real_rows(train_dev_rows):
    rows = _real(train_dev_rows)
    assert len(rows) > 500
    status = collections.Counter()
    for r in rows:
        sol = units.solve(units.parse(r["prompt"]))
        assert sol is not None, r["id"]
        assert is_correct(sol.answer, r["answer"], strict=True), (r["id"], sol.answer, r["answer"])
        assert re.fullmatch(r"\d+\.\d\d", sol.answer)  # the real answers' format
        exact = sol.answer == r["answer"]
        if sol.status == "deduced":
            assert exact, (r["id"], sol.answer, r["answer"])  # zero wrong among deduced
        status[sol.status, exact] += 1
    assert status["deduced", True] / len(rows) > 0.5
    assert (status["deduced", True] + status["guessed", True]) / len(rows) > 0.85


def test_roundtrip_generate_parse_solve():
    status = collections.Counter()
    for seed in range(2000):
        p = units.generate(random.Random(seed))
        sol = units.solve(units.parse(p.prompt + PROMPT_SUFFIX))
        assert sol is not None
        assert is_correct(sol.answer, p.answer, strict=True), p.prompt
        if sol.status == "deduced":
            assert sol.answer == p.answer, p.prompt
        status[sol.status, sol.answer == p.answer] += 1
    assert status["deduced", True] > 1000 and sum(v for (_, ok), v in status.items() if ok) > 1700


def test_fidelity_with_real_rows(train_dev_rows):
    real = [units.parse(r["prompt"]) for r in _real(train_dev_rows)]
    gen = [units.generate(random.Random(s)) for s in range(2000)]
    for ps in (real, gen):
        counts = collections.Counter(p.features["n_examples"] for p in ps)
        assert set(counts) == {3, 4, 5} and all(0.25 < c / len(ps) < 0.42 for c in counts.values())
        assert 5.0 <= min(p.features["min_value"] for p in ps) < 5.1
        assert 49.8 < max(p.features["max_value"] for p in ps) <= 50.0
        factors = [p.features["factor"] for p in ps]
        assert 0.49 < min(factors) < 0.55 and 1.95 < max(factors) < 2.01
        ins = [x for p in ps for x, _ in p.examples]
        outs = [y for p in ps for _, y in p.examples]
        assert all(re.fullmatch(r"\d+\.\d\d", y) for y in outs)
        assert all(re.fullmatch(r"\d+\.\d\d?", x) for x in ins)
        one_decimal = sum(len(x.split(".")[1]) == 1 for x in ins) / len(ins)
        assert 0.05 < one_decimal < 0.15  # trailing zero dropped as Python prints floats (~10 %)


def test_trace_arithmetic_is_exact_and_ends_with_answer():
    for seed in range(50):
        p = units.generate(random.Random(seed))
        sol = units.solve(p)
        text = units.trace(p, sol)
        assert check_products(text) == len(p.examples) + 1
        assert text.rstrip().endswith(f"The converted measurement is {sol.answer}.")
        assert len(text) < 4000


def test_inconsistent_examples_abstain():
    prompt = (
        f"{units.HEADER}\n10.00 m becomes 5.00\n20.00 m becomes 30.00\n12.0 m becomes 6.00\n"
        "Now, convert the following measurement: 7.5 m"
    )
    assert units.solve(units.parse(prompt)) is None


def test_difficulty_knobs_accept_scalars_and_ranges():
    p = units.generate(random.Random(3), {"n_examples": 8, "factor_range": (3.0, 4.0)})
    assert p.features["n_examples"] == 8 and 3.0 <= p.features["hidden_factor"] <= 4.0
    assert is_correct(units.solve(p).answer, p.answer)


@pytest.mark.parametrize(
    "prompt",
    [
        "",
        f"{units.HEADER}\n10.08 m becomes 6.69\nNow, convert the following measurement: 25.09 cm",
        f"{units.HEADER}\n10.08 m -> 6.69\nNow, convert the following measurement: 25.09 m",
        "In Alice's Wonderland, something else.\n10.08 m becomes 6.69\nNow, convert the following measurement: 2 m",
    ],
)
def test_bad_prompts_raise(prompt):
    with pytest.raises(PuzzleFormatError):
        units.parse(prompt)
