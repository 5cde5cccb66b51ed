"""Wonderland puzzles: parse, generate, solve, trace and score. Pure Python; never imports torch."""

from puzzles.base import CATEGORIES, PROMPT_SUFFIX, Puzzle, Solution, detect_category
from puzzles.metric import extract_answer, is_correct

__all__ = [
    "CATEGORIES",
    "PROMPT_SUFFIX",
    "Puzzle",
    "Solution",
    "detect_category",
    "extract_answer",
    "is_correct",
]
