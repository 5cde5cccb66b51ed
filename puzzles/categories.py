"""The category registry: one entry point for parse / solve / generate / trace over all six categories.

Modules are imported on first use, so a category module that is missing or broken only fails the calls
for that category (the others keep working while engineers write them).
"""

from __future__ import annotations

import importlib
import random
from types import ModuleType

from puzzles.base import CATEGORIES, Puzzle, PuzzleFormatError, Solution, detect_category

MODULES = {
    "bit_manipulation": "puzzles.bits",
    "cipher": "puzzles.cipher",
    "numeral_system": "puzzles.numeral",
    "unit_conversion": "puzzles.units",
    "gravity": "puzzles.gravity",
    "equations": "puzzles.equations",
}
assert set(MODULES) == set(CATEGORIES)

__all__ = ["CATEGORIES", "MODULES", "generate", "module", "parse", "solve", "trace"]


def module(category: str) -> ModuleType:
    """The module implementing ``category`` (ImportError when it is not written yet)."""
    if category not in MODULES:
        raise KeyError(f"unknown category {category!r}; expected one of {CATEGORIES}")
    return importlib.import_module(MODULES[category])


def parse(prompt: str) -> Puzzle:
    """A real prompt (with or without the harness's boxed-answer suffix) -> its category's Puzzle."""
    category = detect_category(prompt)
    puzzle = module(category).parse(prompt)
    if puzzle.category != category:
        raise PuzzleFormatError(f"{MODULES[category]}.parse returned category {puzzle.category!r}")
    return puzzle


def solve(puzzle: Puzzle) -> Solution | None:
    return module(puzzle.category).solve(puzzle)


def generate(category: str, rng: random.Random, difficulty: dict | None = None) -> Puzzle:
    return module(category).generate(rng, difficulty)


def trace(puzzle: Puzzle, solution: Solution) -> str:
    return module(puzzle.category).trace(puzzle, solution)
