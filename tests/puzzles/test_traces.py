import pytest

from puzzles.analyze import solve_traced
from puzzles.base import Puzzle
from puzzles.dataset import check_sft_row, sft_row
from puzzles.metric import extract_answer, score
from puzzles.traces import completion


def test_plain_answers_end_boxed():
    text = completion("  steps 1 and 2\n", "XLII")
    assert text == "steps 1 and 2\n</think>\n\\boxed{XLII}"
    assert score(text, "XLII")


@pytest.mark.parametrize("answer", ["}}^", "a}b", "{x}", "}"])
def test_brace_answers_end_with_a_final_line_and_no_box(answer):
    text = completion("symbols: }=1 and {=4\nAnswer: " + answer, answer)
    assert text.endswith(f"</think>\nFinal answer: {answer}")
    assert "\\boxed{" not in text
    assert extract_answer(text) == answer and score(text, answer)
    # the old box ending could not be read back
    assert not score(f"x\n</think>\n\\boxed{{{answer}}}", answer)


def test_brace_answer_refuses_reasoning_that_would_outrank_the_final_line():
    with pytest.raises(ValueError, match="boxed"):
        completion("maybe \\boxed{3} then", "a}b")
    with pytest.raises(ValueError, match="phrase"):
        completion("The final answer is: x", "a}b")


def _row(answer, text):
    p = Puzzle(id="r1", category="equations", prompt="p", examples=[], query="q", answer=answer)
    return sft_row(p, text, "solver", "deduced")


def test_check_sft_row_requires_the_official_metric_to_read_the_answer():
    assert check_sft_row(_row("a}b", completion("r", "a}b"))) is None
    assert "does not end with" in check_sft_row(_row("a}b", "r\n</think>\n\\boxed{a}b}"))
    # a non-empty box after the final one wins nothing: the last non-empty box is the final one
    assert check_sft_row(_row("12", "saw \\boxed{13}\n</think>\n\\boxed{12}")) is None
    # an unclosed box at the end of a brace answer's line would be read first
    bad = _row("a}b", "r \\boxed{ \n</think>\nFinal answer: a}b")
    assert "official metric" in check_sft_row(bad)


def test_solve_traced_gives_the_record_and_the_trace_of_a_real_style_puzzle(tmp_path):
    import random

    from puzzles import categories

    p = categories.module("numeral_system").generate(random.Random(3))
    rec, row = solve_traced(p)
    assert rec["outcome"] == "deduced_right" and rec["prediction"] == p.answer
    assert row["answer"] == p.answer and check_sft_row(row) is None
    assert row["features"]["solver_answer"] == p.answer


def test_solve_traced_makes_no_row_for_a_deduced_cryptarithm_the_recall_cannot_reach():
    import random

    from puzzles import cryptarithm, equations

    rng = random.Random(2)
    for _ in range(400):
        p = equations.parse(equations.generate(rng, {"family": "symbolic"}).prompt)
        sol = equations.solve(p)
        if sol is not None and sol.status == "deduced" and cryptarithm.recall_trace(p).answer != sol.answer:
            break
    else:
        pytest.skip("no generated cryptarithm the search deduces and the recall walk misses")
    p.id = "sym-1"
    rec, row = solve_traced(p)
    assert row is None and rec["not_teachable"] and rec["outcome"] == "deduced"
