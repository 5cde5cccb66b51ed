"""How a solver's reasoning becomes a chat completion: reasoning, then the closing think tag, then the answer.

The competition reads a box body only up to its first ``}`` (``puzzles.metric``), so an answer containing
``}`` can never be read from ``\\boxed{}``. Such an answer is written as ``Final answer: <answer>`` on the
last line, and the completion must contain no ``\\boxed{`` at all (the box rule would win over the phrase)
and no earlier "The final answer is:" / "Final answer is:" (those phrases are tried before "Final answer:").
"""

from __future__ import annotations

import re

THINK_CLOSE = "</think>"
FINAL_PREFIX = "Final answer: "
_EARLIER_PHRASES = re.compile(r"(?:The final answer is|Final answer is)\s*:", re.IGNORECASE)


def needs_final_line(answer: str) -> bool:
    """Whether the answer must be given as a ``Final answer:`` line instead of a box."""
    return "}" in answer


def answer_tail(answer: str) -> str:
    """The text after ``</think>\\n`` that states ``answer`` so the metric reads it back."""
    return f"{FINAL_PREFIX}{answer}" if needs_final_line(answer) else f"\\boxed{{{answer}}}"


def completion(reasoning: str, answer: str) -> str:
    """The assistant turn after the opening ``<think>``: the template opens reasoning mode itself.

    Raises ValueError when a ``}``-answer's reasoning contains something that would outrank its final line."""
    if needs_final_line(answer):
        if "\\boxed{" in reasoning:
            raise ValueError(f"answer {answer!r} contains '}}' but the reasoning has a \\boxed{{ the metric "
                             f"would read instead of the final line")
        if _EARLIER_PHRASES.search(reasoning):
            raise ValueError(f"answer {answer!r} contains '}}' but the reasoning has a final-answer phrase "
                             f"the metric tries before 'Final answer:'")
    return f"{reasoning.strip()}\n{THINK_CLOSE}\n{answer_tail(answer)}"



def solve_traced(puzzle) -> tuple[dict, dict | None]:
    """Solve one real puzzle once: ``puzzles.analyze.solve_one``'s record and, when the solver deduces its
    answer, the SFT row it would train on (the trace of the solver's OWN answer; ``answer`` is the gold where
    there is one, so ``puzzles.audit`` scores the trace against what the leaderboard expects)."""
    import time

    from puzzles import analyze, categories
    from puzzles.dataset import sft_row
    from puzzles.metric import is_correct

    t0 = time.perf_counter()
    try:
        sol = categories.solve(puzzle)
    except Exception:  # noqa: BLE001 -- solve_one reports the crash the same way the plain command does
        return analyze.solve_one(puzzle), None
    rec = {"id": puzzle.id, "group": analyze.group_of(puzzle), "seconds": time.perf_counter() - t0,
           "prediction": sol.answer if sol else None, "status": sol.status if sol else None}
    if sol is None:
        rec["outcome"] = "abstained"
    elif puzzle.answer is None:
        rec["outcome"] = sol.status
    else:
        rec["exact"] = sol.answer.strip() == puzzle.answer.strip()
        right = "right" if is_correct(sol.answer, puzzle.answer) else "wrong"
        rec["outcome"] = f"{'deduced' if sol.status == 'deduced' else 'guessed'}_{right}"
    if sol is None or sol.status != "deduced":
        return rec, None
    from puzzles.equations import NotTeachable

    try:
        reasoning = categories.trace(puzzle, sol)
    except NotTeachable:  # deduced by the search, but no recall trace reaches it: no SFT row (counted)
        rec["not_teachable"] = True
        return rec, None
    text = completion(reasoning, sol.answer)
    row = sft_row(puzzle, text, "solver", sol.status, solver_answer=sol.answer, solver_rule=sol.rule)
    row["answer"] = puzzle.answer if puzzle.answer is not None else sol.answer
    return rec, row
