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
