"""The official metric, rule by rule; ``old`` is what the previous port answered where it differed."""

import pytest

from puzzles.metric import boxed_contents, extract_answer, is_correct, score
from puzzles.traces import completion

NONE = "<old port: no answer>"

# (text, official extraction, the old port's extraction when it differed, else None)
EXTRACTION = [
    # 1. the box regex: a body stops at the first "}"
    (r"x \boxed{\frac{1}{2}} y", r"\frac{1", r"\frac{1}{2}"),
    (r"so \boxed{{a}{b}}", "{a", "{a}{b}"),
    (r"first \boxed{12} then \boxed{XLII} finally \boxed{ 7.5 }", "7.5", None),
    # an unclosed box at the very end counts (and is the last non-empty one)
    (r"\boxed{42} and then \boxed{oops", "oops", "42"),
    (r"the distance is 12.5 m \boxed{13", "13", None),
    ("\\boxed{never closed\nacross lines", "never closed\nacross lines", NONE),
    # the last NON-empty box wins; all empty: the last one
    (r"\boxed{42} then \boxed{}", "42", ""),
    (r"\boxed{ } \boxed{}", "", None),
    ("\\boxed{  wizard creates secret \n}", "wizard creates secret", None),
    # a box anywhere (reasoning included) beats every fallback phrase
    (r"I guess \boxed{7}. Final answer: 9", "7", None),
    # 2. fallback phrases: rest of the line, patterns in order, case-insensitive, full-width colon
    ("Final answer: 10. The answer is 11", "10. The answer is 11", "10"),
    ("so final answer:  x+y}z \nbye 3", "x+y}z", None),
    ("The final answer is: A\nFinal answer: B", "A", "B"),
    ("Final answer is: A\nfinal answer: B", "A", "B"),
    ("FINAL ANSWER：abc def", "abc def", NONE),
    # no colon: not a fallback phrase; the last number decides
    ("Thinking... The final answer is 42.", "42", None),
    # 3. the last number
    ("numbers 3 then 4.25 and -7", "-7", None),
    ("v1.2.3", "3", None),
    # 4. the last non-empty line
    ("answer: XIV", "answer: XIV", "XIV"),
    ("no digits here\nlast words  \n\n", "last words", NONE),
    # nothing at all
    ("", None, None),
    (None, None, None),
]


@pytest.mark.parametrize(("text", "official", "old"), EXTRACTION)
def test_extraction_rules(text, official, old):
    assert extract_answer(text) == official


def test_the_table_covers_cases_where_the_old_port_differed():
    assert sum(old is not None and old != off for _, off, old in EXTRACTION) >= 8


def test_boxed_contents_is_the_regex():
    assert boxed_contents(r"\boxed{a}\boxed{b}c}\boxed{") == ["a", "b", ""]


# (prediction, gold, official verdict, the old port's verdict when it differed)
COMPARISON = [
    ("16.65", "16.65", True, None),
    ("16.66", "16.65", True, None),
    ("154.60", "154.6", True, None),
    ("201.9", "200", True, None),  # 0.95 % off
    ("203.5", "200", False, None),  # 1.75 % off
    ("-5.0", "-5", True, None),
    ("5", "-5", False, None),
    ("  XLII ", "XLII", True, None),
    ("XLI", "XLII", False, None),
    # 0/1 golds: string comparison, leading zeros count, no tolerance
    ("10110010", "10110011", False, True),
    ("1010101", "01010101", False, True),
    ("01010101", "01010101", True, None),
    ("100.0", "100", False, True),
    ("100.9", "100", False, True),
    ("1", "1", True, None),
    # strings compare case-insensitively
    ("xlii", "XLII", True, False),
    ("Wizard Creates Secret", "wizard creates secret", True, False),
    ("wizard creates", "wizard creates secret", False, None),
    # float() decides what is a number: no comma stripping, underscores and exponents parse
    ("1,000", "2000", False, None),
    ("1,000", "1000", False, True),  # "1000" is a 0/1 string
    ("2,000", "2000", False, True),
    ("2_000", "2000", True, None),
    ("2e3", "2000", True, None),
    # abs_tol is 1e-5
    ("0.000015", "0.00001", True, False),
    ("0.00003", "0.00001", False, None),
    # nan never equals nan under isclose; inf only itself
    ("nan", "nan", False, True),
    ("inf", "1e308", False, None),
    ("inf", "inf", True, None),
    (None, "1", False, None),
    ("", "0", False, None),
]


@pytest.mark.parametrize(("pred", "gold", "ok", "old"), COMPARISON)
def test_comparison_rules(pred, gold, ok, old):
    assert is_correct(pred, gold) is ok


def test_comparison_table_covers_old_differences():
    assert sum(old is not None for *_, old in COMPARISON) >= 8


def test_strict_accepts_a_subset_of_the_official_verdicts():
    assert is_correct("16.66", "16.65", strict=True)
    assert not is_correct("99", "98", strict=True) and is_correct("99", "98.5")
    assert not is_correct("-5.0", "-5", strict=True)
    assert is_correct("xlii", "XLII", strict=True)
    for pred, gold, ok, _ in COMPARISON:
        if is_correct(pred, gold, strict=True):
            assert ok, (pred, gold)


def test_score_on_a_full_completion():
    text = completion("Some reasoning with 3 and 4.\nThe answer is 12.", "12")
    assert text.endswith("</think>\n\\boxed{12}")
    assert score(text, "12") and not score(text, "13")
    assert score(completion("Rounded: 16.649", "16.65"), "16.65", strict=True)
