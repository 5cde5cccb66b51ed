"""gravity: ``For t = Ts, distance = D m`` with D = 0.5 * g * t^2 for a hidden g, rounded to 2 decimals.

Real layout (3 to 5 examples; t uniform in [1, 5], g in about [4.9, 19.6]; t, D and the answer printed as
Python floats rounded to 2 decimals, so a trailing zero is dropped: ``154.6``, ``76.0``)::

    In Alice's Wonderland, the gravitational constant has been secretly changed. Here are some example ...
    For t = 1.37s, distance = 14.92 m
    Now, determine the falling distance for t = 4.41s given d = 0.5*g*t^2.

Inference as in ``puzzles.units``: each example bounds g to 2 * (D +- 0.005) / t^2; the intersection is the
feasible interval. When every g in it rounds the query's distance the same way (about 61 % of real rows)
the answer is "deduced"; otherwise it is the middle's answer, marked "guessed" (right to the last digit in
about 78 % of those, and always within the metric's 1e-2 relative tolerance). The trace states the
shortest 0.5 * g that fits the examples and gives that answer.
"""

from __future__ import annotations

import random
import re
from decimal import Decimal

from puzzles.base import PROMPT_SUFFIX, AuditStep, Puzzle, PuzzleFormatError, Solution
from puzzles.claims import fit_steps
from puzzles.units import HALF_CENT, fmt, round2, shortest_decimal, span, times

CATEGORY = "gravity"
HEADER = (
    "In Alice's Wonderland, the gravitational constant has been secretly changed. "
    "Here are some example observations:"
)
_NUM = r"(\d+(?:\.\d+)?)"
_EXAMPLE = re.compile(rf"^For t = {_NUM}s, distance = {_NUM} m$")
_QUERY = re.compile(rf"^Now, determine the falling distance for t = {_NUM}s given d = 0\.5\*g\*t\^2\.$")
HALF = Decimal("0.5")

DEFAULT_DIFFICULTY = {
    "n_examples": (3, 5),  # inclusive; real rows: 3, 4, 5 about equally often
    "t_range": (1.0, 5.0),  # seconds, uniform, rounded to 2 decimals
    "g_range": (4.9, 19.6),  # hidden g, uniform
}


def answer_str(x: float | Decimal) -> str:
    """The real rows' number format: Python's ``str(round(x, 2))`` (``154.62``, ``154.6``, ``76.0``)."""
    return str(round(float(x), 2))


def parse(prompt: str) -> Puzzle:
    text = prompt.removesuffix(PROMPT_SUFFIX).strip()
    lines = text.split("\n")
    if len(lines) < 3 or lines[0] != HEADER:
        raise PuzzleFormatError(f"not a gravity prompt (header or line count): {text[:80]!r}")
    examples = []
    for line in lines[1:-1]:
        m = _EXAMPLE.match(line)
        if not m:
            raise PuzzleFormatError(f"gravity example line not 'For t = Ts, distance = D m': {line!r}")
        examples.append((m.group(1), m.group(2)))
    q = _QUERY.match(lines[-1])
    if not q:
        raise PuzzleFormatError(f"gravity query line not recognised: {lines[-1]!r}")
    ts = [float(t) for t, _ in examples] + [float(q.group(1))]
    gs = [2 * float(d) / float(t) ** 2 for t, d in examples if float(t)]
    features = {
        "n_examples": len(examples),
        "min_t": min(ts),
        "max_t": max(ts),
        "g": sum(gs) / len(gs) if gs else None,
    }
    return Puzzle(
        id="", category=CATEGORY, prompt=text, examples=examples, query=q.group(1), features=features
    )


def generate(rng: random.Random, difficulty: dict | None = None) -> Puzzle:
    """Knobs (``DEFAULT_DIFFICULTY``): ``n_examples`` (lo, hi), ``t_range`` and ``g_range``."""
    d = {**DEFAULT_DIFFICULTY, **(difficulty or {})}
    g = rng.uniform(*span(d["g_range"]))
    ts = [round(rng.uniform(*span(d["t_range"])), 2) for _ in range(rng.randint(*span(d["n_examples"])) + 1)]
    lines = [
        HEADER,
        *(f"For t = {t}s, distance = {round(0.5 * g * t * t, 2)} m" for t in ts[:-1]),
        f"Now, determine the falling distance for t = {ts[-1]}s given d = 0.5*g*t^2.",
    ]
    puzzle = parse("\n".join(lines))
    puzzle.id = f"gen-gravity-{rng.getrandbits(32):08x}"
    puzzle.answer = answer_str(0.5 * g * ts[-1] ** 2)
    puzzle.features["hidden_g"] = g
    return puzzle


def solve(puzzle: Puzzle) -> Solution | None:
    pairs = [(Decimal(t), Decimal(d)) for t, d in puzzle.examples]
    if not pairs or any(t <= 0 for t, _ in pairs):
        return None
    lo = max(2 * (d - HALF_CENT) / (t * t) for t, d in pairs)
    hi = min(2 * (d + HALF_CENT) / (t * t) for t, d in pairs)
    if lo > hi:
        return None  # no single g fits every example
    t = Decimal(puzzle.query)
    if t <= 0:
        return None
    half_t2 = HALF * t * t
    value = round2(half_t2 * (lo + hi) / 2)
    # the shortest 0.5 * g that fits the examples and gives that answer: the trace multiplies by it
    half_g = shortest_decimal(
        max(lo / 2, (value - HALF_CENT) / (t * t)), min(hi / 2, (value + HALF_CENT) / (t * t)),
        lambda c: all(abs(s * s * c - d) < HALF_CENT for s, d in pairs + [(t, value)]),
    )
    g = 2 * half_g
    exact = round2(half_t2 * lo) == round2(half_t2 * hi)
    return Solution(
        answer=answer_str(value),
        status="deduced" if exact else "guessed",
        rule="free_fall",
        steps={"g": g, "lo": lo, "hi": hi, "exact": exact},
    )


def trace(puzzle: Puzzle, solution: Solution) -> str:
    g = solution.steps["g"]
    out = [
        "Falling distance is d = 0.5 * g * t^2, so each example gives g = 2 * d / t^2.",
        "Step 1: compute g from each example.",
    ]
    for t, d in puzzle.examples:
        t2 = Decimal(t) * Decimal(t)
        est = (2 * Decimal(d) / t2).quantize(Decimal("0.001"))
        out.append(
            f"t = {t}: t^2 = {times(Decimal(t), Decimal(t))}; g = 2 * {d} / {fmt(t2)} = "
            f"{fmt(2 * Decimal(d))} / {fmt(t2)} = {fmt(est)}"
        )
    out += [
        "",
        (
            f"Step 2: the estimates agree; g = {fmt(g)} fits every example after rounding, "
            f"so 0.5 * g = {fmt(HALF * g)}. Check:"
        ),
    ]
    for t, d in puzzle.examples:
        t2 = Decimal(t) * Decimal(t)
        out.append(
            f"t = {t}: {times(t2, HALF * g)} -> {answer_str(round2(t2 * HALF * g))}, given {d}, matches."
        )
    t = Decimal(puzzle.query)
    out += [
        "",
        f"Step 3: the query t = {puzzle.query}s.",
        f"t^2 = {times(t, t)}",
        f"d = 0.5 * g * t^2 = {times(t * t, HALF * g)}",
        f"Rounded to 2 decimals: {solution.answer}",
        "",
        f"The falling distance is {solution.answer} m.",
    ]
    return "\n".join(out)


def audit(puzzle: Puzzle, reasoning: str) -> list:
    """Re-derive g's choice (and 0.5 * g), each example check, the query and the rounding (``puzzles.claims``)."""
    lines = reasoning.split("\n")
    steps = fit_steps(lines, puzzle.examples, lambda g, t: HALF * g * t * t)
    for i, line in enumerate(lines):
        if m := re.match(r"^Step 3: the query t = (\S+)s\.$", line):
            steps.append(AuditStep(i, "restate", m.group(1) == str(puzzle.query), line))
        elif line.startswith("Falling distance is d = 0.5 * g * t^2"):
            steps.append(AuditStep(i, "rule", True, line))  # the formula every check below re-computes
    return steps
