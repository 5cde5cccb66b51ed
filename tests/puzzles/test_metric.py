import pytest

from puzzles.metric import boxed_contents, extract_answer, is_correct, score
from puzzles.traces import completion


def test_boxed_nested_braces_kept_whole():
    assert boxed_contents(r"x \boxed{\frac{1}{2}} y") == [r"\frac{1}{2}"]
    assert extract_answer(r"so \boxed{{a}{b}}") == "{a}{b}"


def test_last_box_wins():
    text = r"first \boxed{12} then \boxed{XLII} finally \boxed{ 7.5 }"
    assert boxed_contents(text) == ["12", "XLII", " 7.5 "]
    assert extract_answer(text) == "7.5"


def test_unclosed_box_dropped_earlier_box_kept():
    assert extract_answer(r"\boxed{42} and then \boxed{oops") == "42"
    assert boxed_contents(r"\boxed{never closed") == []


def test_unclosed_only_box_falls_back_to_last_number():
    assert extract_answer(r"the distance is 12.5 m \boxed{13") == "13"


def test_empty_and_none_outputs():
    assert extract_answer(None) is None
    assert extract_answer("") is None
    assert extract_answer("no digits and no box here") is None
    assert not score(None, "1")
    assert not score("", "1")
    assert extract_answer(r"\boxed{}") == ""
    assert not is_correct("", "0")


def test_whitespace_is_trimmed():
    assert extract_answer("\\boxed{  wizard creates secret \n}") == "wizard creates secret"
    assert is_correct("  XLII ", "XLII")
    assert is_correct("16.65", " 16.65\n")


def test_fallback_patterns_in_order():
    assert extract_answer("Thinking... The final answer is 42.") == "42"
    assert extract_answer("answer: XIV") == "XIV"
    assert extract_answer("numbers 3 then 4.25 and -7") == "-7"
    # "final answer" wins over a later plain "answer is"
    assert extract_answer("Final answer: 10. The answer is 11") == "10"


@pytest.mark.parametrize(
    ("pred", "gold", "ok"),
    [
        ("16.65", "16.65", True),
        ("16.66", "16.65", True),  # 6e-4 relative
        ("154.60", "154.6", True),
        ("100.9", "100", True),  # 0.9 % off
        ("101.5", "100", False),  # 1.5 % off
        ("-5.0", "-5", True),
        ("5", "-5", False),
        ("1,000", "1000", True),
        ("XLII", "XLII", True),
        ("XLI", "XLII", False),
        ("wizard creates secret", "wizard creates secret", True),
        ("wizard creates", "wizard creates secret", False),
        ("nan", "nan", True),  # exact string match comes first
        ("inf", "1e308", False),
        (None, "1", False),
    ],
)
def test_is_correct(pred, gold, ok):
    assert is_correct(pred, gold) is ok


def test_strict_mode_keeps_tolerance_only_for_decimals():
    assert is_correct("10110010", "10110011")  # the lenient metric: 1e-2 relative on any number
    assert not is_correct("10110010", "10110011", strict=True)
    assert not is_correct("1010101", "01010101", strict=True)
    assert is_correct("01010101", "01010101", strict=True)
    assert is_correct("16.66", "16.65", strict=True)
    assert not is_correct("99", "100", strict=True)


def test_score_on_a_full_completion():
    text = completion("Some reasoning with 3 and 4.\nThe answer is 12.", "12")
    assert text.endswith("</think>\n\\boxed{12}")
    assert score(text, "12") and not score(text, "13")
    assert score(completion("Rounded: 16.649", "16.65"), "16.65", strict=True)
