"""How a solver's reasoning becomes a chat completion: reasoning, then the closing think tag, then the box."""

from __future__ import annotations


def completion(reasoning: str, answer: str) -> str:
    """The assistant turn after the opening ``<think>``: the template opens reasoning mode itself."""
    return f"{reasoning.strip()}\n</think>\n\\boxed{{{answer}}}"
