"""The competition metric, exactly as its scoring code runs it (field notes, "How a submission is scored").

Extraction, from the WHOLE generated text (reasoning included), first rule that yields wins:

1. every match of ``\\\\boxed\\{([^}]*)(?:\\}|$)``: a box body stops at the first ``}``, and an unclosed box
   at the very end of the text counts; the last non-empty body wins (all empty: the last one);
2. the last match of "The final answer is:", "Final answer is:", "Final answer:" (colon ASCII or full-width),
   each followed by the rest of its line, patterns tried in that order, case-insensitive;
3. the last number ``-?\\d+(?:\\.\\d+)?``;
4. the last non-empty line.

Comparison, after strip: a gold made only of 0/1 must equal the prediction as a case-insensitive string
(leading zeros count); else both go through ``float()`` and match by ``math.isclose(rel_tol=1e-2,
abs_tol=1e-5)``; if either does not parse, a case-insensitive string comparison.

``strict=True`` (rewards, teacher and distillation filters) accepts a SUBSET of what the official metric
accepts: a gold without a decimal point must also match as a case-insensitive string, so a near-miss integer
never earns a reward. It never accepts what the leaderboard would reject.
"""

from __future__ import annotations

import math
import re

REL_TOL = 1e-2
ABS_TOL = 1e-5

_BOX = re.compile(r"\\boxed\{([^}]*)(?:\}|$)")
_FALLBACKS = [
    re.compile(r"The final answer is:\s*([^\n]+)", re.IGNORECASE),
    re.compile(r"Final answer is:\s*([^\n]+)", re.IGNORECASE),
    re.compile(r"Final answer\s*[:：]\s*([^\n]+)", re.IGNORECASE),
    re.compile(r"final answer\s*[:：]\s*([^\n]+)", re.IGNORECASE),
]
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_BITS = re.compile(r"[01]+")


def boxed_contents(text: str) -> list[str]:
    """Every box body the metric's regex matches, in order (a body stops at the first ``}``)."""
    return _BOX.findall(text or "")


def extract_answer(text: str | None) -> str | None:
    """The answer the competition reads from a completion, or None for an empty output."""
    if not text:
        return None
    boxes = boxed_contents(text)
    if boxes:
        non_empty = [b.strip() for b in boxes if b.strip()]
        return non_empty[-1] if non_empty else boxes[-1].strip()
    for pattern in _FALLBACKS:
        hits = pattern.findall(text)
        if hits:
            return hits[-1].strip()
    numbers = _NUMBER.findall(text)
    if numbers:
        return numbers[-1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else None


def official_correct(prediction: str, gold: str) -> bool:
    """The competition's comparison of an extracted answer with the gold answer."""
    p, g = prediction.strip(), gold.strip()
    if _BITS.fullmatch(g):
        return p.lower() == g.lower()
    try:
        return math.isclose(float(g), float(p), rel_tol=REL_TOL, abs_tol=ABS_TOL)
    except (ValueError, OverflowError):
        return p.lower() == g.lower()


def is_correct(prediction: str | None, gold: str, strict: bool = False) -> bool:
    """Whether ``prediction`` (an extracted answer) scores against ``gold``; see the module doc for strict."""
    if prediction is None:
        return False
    if not official_correct(prediction, gold):
        return False
    if strict and "." not in gold:
        return prediction.strip().lower() == gold.strip().lower()
    return True


def score(completion: str | None, gold: str, strict: bool = False) -> bool:
    """Extract then compare: the metric on one raw model output."""
    return is_correct(extract_answer(completion), gold, strict=strict)
