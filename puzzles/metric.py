"""The competition metric, in one place: answer extraction and comparison.

Extraction follows the harness described in the field notes: the last ``\\boxed{...}`` wins (nested braces
allowed); without one, heuristic "final answer" patterns; finally the last number in the text.
Comparison: exact string match after trimming, else both parse as numbers within a relative tolerance of
1e-2. ``strict=True`` keeps the numeric tolerance only for answers with a decimal point, for rewards and
trace filtering, where a near-miss integer or bit string must not count as correct.
"""

from __future__ import annotations

import math
import re

REL_TOL = 1e-2
ABS_TOL = 1e-9

_FALLBACKS = [
    re.compile(r"final answer\s*(?:is|:)\s*\$?([^\s$]+)", re.IGNORECASE),
    re.compile(r"answer\s*(?:is|:)\s*\$?([^\s$]+)", re.IGNORECASE),
]
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def boxed_contents(text: str) -> list[str]:
    """Every ``\\boxed{...}`` body in order, with nested braces balanced. An unclosed box is dropped."""
    out = []
    start = 0
    while (i := text.find("\\boxed{", start)) != -1:
        depth, j = 1, i + len("\\boxed{")
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        if depth:
            break
        out.append(text[i + len("\\boxed{") : j - 1])
        start = j
    return out


def extract_answer(text: str | None) -> str | None:
    """The answer a completion gives, or None when it gives none."""
    if not text:
        return None
    boxes = boxed_contents(text)
    if boxes:
        return boxes[-1].strip()
    for pattern in _FALLBACKS:
        hits = pattern.findall(text)
        if hits:
            return hits[-1].strip().rstrip(".")
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _as_number(s: str) -> float | None:
    try:
        x = float(s.replace(",", ""))
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def is_correct(prediction: str | None, gold: str, strict: bool = False) -> bool:
    """Whether ``prediction`` (an extracted answer) scores against ``gold``."""
    if prediction is None:
        return False
    p, g = prediction.strip(), gold.strip()
    if p == g:
        return True
    if strict and "." not in g:
        return False
    pn, gn = _as_number(p), _as_number(g)
    if pn is None or gn is None:
        return False
    return math.isclose(pn, gn, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def score(completion: str | None, gold: str, strict: bool = False) -> bool:
    """Extract then compare: the metric on one raw model output."""
    return is_correct(extract_answer(completion), gold, strict=strict)
