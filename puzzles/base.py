"""The shared record types of every category module.

Each category module (``puzzles.bits``, ``puzzles.cipher``, ``puzzles.numeral``, ``puzzles.units``,
``puzzles.gravity``, ``puzzles.equations``) exposes the same four functions:

- ``parse(prompt: str) -> Puzzle``: real prompt text -> structured examples and query; raises
  ``PuzzleFormatError`` when the text is not of that category's layout.
- ``generate(rng: random.Random, difficulty: dict | None = None) -> Puzzle``: a new puzzle in exactly the
  real wording, with its answer in exactly the real format.
- ``solve(puzzle: Puzzle) -> Solution | None``: infers the rule from ``puzzle.examples`` alone (never reads
  ``puzzle.answer``); returns None when it cannot decide. It never guesses silently: a guess is returned
  with ``status="guessed"``.
- ``trace(puzzle: Puzzle, solution: Solution) -> str``: the reasoning text a model is trained on; it ends
  with the final answer (the ``\\boxed{}`` is added by ``puzzles.traces.completion``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

CATEGORIES = ("bit_manipulation", "cipher", "numeral_system", "unit_conversion", "gravity", "equations")

# Appended to every puzzle by the competition's harness before the chat template is applied.
PROMPT_SUFFIX = "\nPlease put your final answer inside `\\boxed{}`. For example: `\\boxed{your answer}`"

_MARKERS = {
    "bit_manipulation": "bit manipulation rule",
    "cipher": "encryption rules",
    "numeral_system": "numeral system",
    "unit_conversion": "unit conversion",
    "gravity": "gravitational constant",
    "equations": "transformation rules is applied to equations",
}


class PuzzleFormatError(ValueError):
    """A prompt that does not have the layout its category parser expects."""


class NotTeachable(ValueError):
    """A deduced puzzle whose trace cannot be written as visible reasoning within its budget (a cryptarithm
    the catalog recall does not reach, a cipher phrase with too many readings): it gets NO trace; builders
    skip and count it."""


@dataclasses.dataclass
class Puzzle:
    """One puzzle. ``examples`` are (input, output) pairs as they appear in the prompt, ``query`` the
    input whose output is asked for, ``answer`` the expected output string (None when unknown)."""

    id: str
    category: str
    prompt: str
    examples: list[tuple[Any, Any]]
    query: Any
    answer: str | None = None
    features: dict[str, Any] = dataclasses.field(default_factory=dict)  # difficulty features for mixes


@dataclasses.dataclass
class Solution:
    """A solver's answer. ``status`` is "deduced" (the examples determine it) or "guessed" (a stated
    preference chose among rules that fit); ``steps`` is solver-specific data the trace writer uses."""

    answer: str
    status: str = "deduced"
    rule: str = ""
    steps: dict[str, Any] = dataclasses.field(default_factory=dict)


def detect_category(prompt: str) -> str:
    """The category of a real prompt, from its fixed opening sentence."""
    head = prompt[:200]
    for category, marker in _MARKERS.items():
        if marker in head:
            return category
    raise PuzzleFormatError(f"cannot place prompt in any of {CATEGORIES}: {prompt[:80]!r}")


@dataclasses.dataclass
class AuditStep:
    """One line of a trace as the static auditor (``puzzles.audit``) judged it. ``kind`` names the step
    (e.g. "arithmetic", "bit_op", "table_lookup", "substitution", "recall", "verify"); ``derived`` is True
    when the auditor re-computed the line's claim from the prompt and earlier lines, False for a leap.

    A category module may expose ``audit(puzzle: Puzzle, reasoning: str) -> list[AuditStep]`` for its own
    step kinds; ``puzzles.audit`` calls it and adds the generic checks (metric, referential integrity,
    length)."""

    line: int
    kind: str
    derived: bool
    text: str = ""
