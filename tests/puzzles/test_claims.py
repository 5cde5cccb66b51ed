"""The line checks the categories and the audit share (puzzles/claims.py): arithmetic claims re-computed,
the fitted-constant steps of units and gravity."""

import pytest

from puzzles import categories
from puzzles.claims import arithmetic_claims, fit_steps


@pytest.mark.parametrize(("line", "ok"), [
    ("10.08 * 0.6636 = 10 * 0.6636 + 0.08 * 0.6636 = 6.636 + 0.053088 = 6.689088 -> 6.69", True),
    ("10.08 * 0.6636 = 6.8", False),
    ("6.69 / 10.08 = 0.6637", True),  # the right side's precision
    ("6.69 / 10.08 = 0.6645", False),
    ("6.689088 -> 6.68", False),
    ("a = 3 + 4 = 7", True),
])
def test_arithmetic_claims_are_recomputed(line, ok):
    assert all(arithmetic_claims(line)) is ok


def test_no_claim_is_none():
    assert arithmetic_claims("Step 1: build the table.") is None


def test_a_tie_is_a_leap_even_when_half_up_rounding_agrees():
    prompt = "In Alice's Wonderland, a secret unit conversion is applied to measurements. For example:\n" \
             "3.0 m becomes 4.42\n10.0 m becomes 14.72\nNow, convert the following measurement: 10.0 m"
    # f = 1.4725: 3 * f = 4.4175 (fine), 10 * f = 14.725 -> 14.73 under half-up, not the given 14.72; and
    # f = 1.4715: 10 * f = 14.715 -> 14.72 under half-up, yet a tie that another convention rounds to 14.71
    steps = fit_steps(["f = 1.4715 fits every example after rounding. Check:",
                       "10.0 * 1.4715 = 14.715 -> 14.72, given 14.72, matches."],
                      categories.parse(prompt).examples, lambda f, x: x * f)
    assert [(s.kind, s.derived) for s in steps] == [("choice", False), ("verify", False)]


def test_a_tower_of_exponents_is_no_claim_and_does_not_hang():
    """'9^9^9' is a 369-million-digit integer in Python's ints: the audit hung on model outputs holding it (in C,
    where no signal interrupts it: hence a child process with a timeout)."""
    import subprocess
    import sys

    code = ("from puzzles.claims import arithmetic_claims as a; "
            "print(a('9^9^9 = 1'), a('x: 99^99^99^99 = 2, 2^10 = 1024'), a('(' * 10000 + '1' + ')' * 10000 + ' = 1'))")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    except subprocess.TimeoutExpired:
        pytest.fail("arithmetic_claims hung on an exponent tower")
    assert out.stdout.split() == ["None", "[True]", "None"]
