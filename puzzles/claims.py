"""What one line of a trace claims, and whether it holds: the line checks the category modules (units,
gravity) and the audit (``puzzles.audit``) share.

- ``arithmetic_claims``: the arithmetic chains (``a op b = c = ...``: each ``=``-separated segment that is
  pure arithmetic must agree with the next one to the precision the right side is written in) and roundings
  (``6.689088 -> 6.69``) of a line, re-computed;
- ``fit_steps``: the steps of a fitted-constant trace (units, gravity), each re-checked on the examples.

It sits below the categories, which the audit reaches through the registry: the categories import their
checks from here, never from the audit above them.
"""

from __future__ import annotations

import ast
import itertools
import math
import operator
import re
from decimal import Decimal

from puzzles.base import AuditStep

NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w])")  # a number as a trace writes it
_ARITH = re.compile(r"^[\d.\s+\-*/()^]+$")
_ROUND = re.compile(r"(-?\d+\.\d+)\s*->\s*(-?\d+(?:\.\d+)?)\b")

# ------------------------------------------------------------------------------------------ arithmetic

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow}
MAX_EXPR = 200  # characters: an arithmetic claim in a trace is short; model outputs can be anything


def _value(node: ast.AST) -> float:
    """An arithmetic tree in floats: ``9^9^9`` overflows at once (OverflowError) instead of building a
    369-million-digit integer, and nothing but numbers and + - * / ^ is evaluated."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        v = _value(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_value(node.left), _value(node.right))
    raise ValueError("not arithmetic")


def _eval(expr: str) -> float | None:
    """Value of a pure arithmetic segment (numbers, + - * / ^, parentheses), else None."""
    e = expr.strip()
    if not e or len(e) > MAX_EXPR or not _ARITH.match(e) or not re.search(r"\d", e):
        return None
    try:
        v = _value(ast.parse(e.replace("^", "**"), mode="eval").body)
    except Exception:  # noqa: BLE001 -- "2 3", "1/0", an overflow: not a claim the auditor can read
        return None
    return v if isinstance(v, float) and math.isfinite(v) else None


def _decimals(s: str) -> int:
    m = re.search(r"\.(\d+)\s*$", s.strip())
    return len(m.group(1)) if m else 0


def _agree(left: float, right_text: str, right: float) -> bool:
    """``left`` written to ``right_text``'s precision: within half a unit of its last digit (rounded or cut)."""
    unit = 10.0 ** -_decimals(right_text)
    return abs(left - right) <= unit + 1e-9 * max(1.0, abs(right))


def arithmetic_claims(line: str) -> list[bool] | None:
    """Verdicts of each arithmetic claim a line makes (equality chains and roundings); None: it makes none."""
    verdicts = []
    for chunk in re.split(r"[;,]|:\s", line):  # "11:92" is an equations operator, not a label
        segs = re.split(r"(?<![<>!])=(?!=)", chunk.split("->")[0])
        vals = [(s, _eval(s)) for s in segs]
        for (_, a), (bt, b) in itertools.pairwise(vals):
            if a is not None and b is not None:
                verdicts.append(_agree(a, bt, b) or _agree(b, bt, a))
    for x, y in _ROUND.findall(line):
        verdicts.append(abs(float(x) - float(y)) <= 0.5 * 10.0 ** -_decimals(y) + 1e-9)
    return verdicts or None


# ------------------------------------------------------------------------------------------ fitted constants

_CHOICE = re.compile(r"\b(f|g) = (-?\d+(?:\.\d+)?) fits every example after rounding(?:, so 0\.5 \* g = (\d+(?:\.\d+)?))?")
_GIVEN = re.compile(r"-> (-?\d+\.\d+), given (-?\d+(?:\.\d+)?), matches\.$")
_ROUNDED = re.compile(r"^Rounded to 2 decimals: (-?\d+(?:\.\d+)?)$")


def _rounds_to(exact: str, rounded: str) -> bool:
    """``exact`` rounds to ``rounded`` at 2 decimals under EVERY rounding convention: strictly within half a
    cent. A product exactly on a half cent is a tie that the convention decides (ours half-up, the
    generator's binary float ``round``), so a trace that claims a match there states what may be false."""
    return abs(Decimal(exact) - Decimal(rounded)) < Decimal("0.005")


def fit_steps(lines: list[str], examples: list[tuple[str, str]], product) -> list[AuditStep]:
    """Steps of a fitted-constant trace: the constant's choice (re-checked on every example: the exact
    ``product(constant, x)`` must round to its output, ties excluded), each "P -> R, given Y, matches" (R must
    be Y, Y that example's output in the prompt, and P must round to R: no tie) and the final rounding (of the
    previous line's last number, no tie)."""
    outputs = [str(y) for _, y in examples]
    steps = []
    for i, line in enumerate(lines):
        if m := _CHOICE.search(line):
            c = Decimal(m.group(2))
            ok = all(_rounds_to(str(product(c, Decimal(str(x)))), y) for x, y in examples)
            if m.group(3) is not None:
                ok = ok and Decimal(m.group(3)) == c / 2
            steps.append(AuditStep(i, "choice", ok, line))
        elif m := _GIVEN.search(line):
            claims = arithmetic_claims(line) or [True]
            stated = NUMBER.findall(line.split("->")[0])
            ok = (all(claims) and m.group(1) == m.group(2) and m.group(2) in outputs and bool(stated)
                  and _rounds_to(stated[-1], m.group(1)))
            steps.append(AuditStep(i, "verify", ok, line))
        elif (m := _ROUNDED.match(line)) and i > 0:
            prev = NUMBER.findall(lines[i - 1])
            ok = bool(prev) and _rounds_to(prev[-1], m.group(1))
            steps.append(AuditStep(i, "rounding", ok, line))
    return steps
