"""unit_conversion: ``X m becomes Y`` with a hidden factor f, Y = X * f rounded to 2 decimals.

Real layout (3 to 5 examples; inputs uniform in about [5, 50] printed as Python floats with up to 2 decimals
(``10.9``, ``13.0``); outputs and answers always with 2 decimals (``8.90``); f in about [0.5, 2])::

    In Alice's Wonderland, a secret unit conversion is applied to measurements. For example:
    10.08 m becomes 6.69
    Now, convert the following measurement: 25.09 m

Inference: each rounded example bounds f to [(Y - 0.005) / X, (Y + 0.005) / X]; the intersection over all
examples is the feasible interval. The answer is round(query * f, 2) for f at the interval's middle; the
trace states the shortest decimal f in the interval that gives that same answer. When the feasible interval straddles a rounding boundary of the query, the
examples do not fix the second decimal (about 39 % of real rows): the solver then answers with the middle
of the interval (right in about three quarters of those) and marks it "guessed". Any f in the interval is
within the metric's 1e-2 relative tolerance of the true answer (interval width ~1e-4 relative, answer
>= 2.5 so rounding adds <= 2e-3), so guessed answers still score; only their last digit may differ.

Difficulty knobs accept an int (exact) or an inclusive (lo, hi) pair, as ``puzzles.mix`` passes parser
features back as scalars.
"""

from __future__ import annotations

import random
import re
from decimal import ROUND_HALF_UP, Decimal

from puzzles.base import PROMPT_SUFFIX, Puzzle, PuzzleFormatError, Solution
from puzzles.claims import fit_steps

CATEGORY = "unit_conversion"
HEADER = "In Alice's Wonderland, a secret unit conversion is applied to measurements. For example:"
_EXAMPLE = re.compile(r"^(\d+(?:\.\d+)?) m becomes (\d+(?:\.\d+)?)$")
_QUERY = re.compile(r"^Now, convert the following measurement: (\d+(?:\.\d+)?) m$")
HALF_CENT = Decimal("0.005")
CENT = Decimal("0.01")

DEFAULT_DIFFICULTY = {
    "n_examples": (3, 5),  # inclusive; real rows: 3, 4, 5 about equally often
    "value_range": (5.0, 50.0),  # inputs and query, uniform, rounded to 2 decimals
    "factor_range": (0.5, 2.0),  # hidden factor, uniform
}


def fmt(x: Decimal) -> str:
    """A Decimal in plain notation without trailing zeros (``0.6637``, ``16.652233``, ``25``)."""
    s = f"{x:f}"
    return s.rstrip("0").rstrip(".") if "." in s else s


def round2(x: Decimal) -> Decimal:
    return x.quantize(CENT, rounding=ROUND_HALF_UP)


def shortest_decimal(lo: Decimal, hi: Decimal, fits=lambda c: True) -> Decimal:
    """The decimal with the fewest digits strictly inside (lo, hi), closest to the middle: the value a trace
    can state. Not on an end: there one product sits exactly on a half cent, a tie that the rounding
    convention decides (ours half-up, the generator's binary float), and the trace's "matches" may be false.
    ``fits(c)`` re-checks a candidate exactly: ``lo`` and ``hi`` come from 28-digit divisions, so an end can
    lie a last digit off (24.115 / 26.5 gives 0.91000...01, and 0.91 would pass as inside)."""
    mid = (lo + hi) / 2
    for places in range(12):
        step = Decimal(1).scaleb(-places)
        best = (mid / step).to_integral_value() * step
        for cand in (best, best - step, best + step):
            if lo < cand < hi and fits(cand):
                return cand
    return mid


def feasible(pairs: list[tuple[Decimal, Decimal]], scale) -> tuple[Decimal, Decimal]:
    """Intersection of the intervals [scale(x) * (y - 0.005), scale(x) * (y + 0.005)] over the examples,
    where y = param / scale(x) rounded to 2 decimals; returns (lo, hi), lo > hi when inconsistent."""
    lo = max(scale(x) * (y - HALF_CENT) for x, y in pairs)
    hi = min(scale(x) * (y + HALF_CENT) for x, y in pairs)
    return lo, hi


def span(v) -> tuple:
    """A knob value as an inclusive (lo, hi) range: scalars mean exactly that value."""
    return (v, v) if isinstance(v, (int, float)) else tuple(v)


def parse(prompt: str) -> Puzzle:
    text = prompt.removesuffix(PROMPT_SUFFIX).strip()
    lines = text.split("\n")
    if len(lines) < 3 or lines[0] != HEADER:
        raise PuzzleFormatError(f"not a unit_conversion prompt (header or line count): {text[:80]!r}")
    examples = []
    for line in lines[1:-1]:
        m = _EXAMPLE.match(line)
        if not m:
            raise PuzzleFormatError(f"unit_conversion example line not 'X m becomes Y': {line!r}")
        examples.append((m.group(1), m.group(2)))
    q = _QUERY.match(lines[-1])
    if not q:
        raise PuzzleFormatError(f"unit_conversion query line not recognised: {lines[-1]!r}")
    xs = [float(x) for x, _ in examples] + [float(q.group(1))]
    ratios = [float(y) / float(x) for x, y in examples if float(x)]
    features = {
        "n_examples": len(examples),
        "min_value": min(xs),
        "max_value": max(xs),
        "factor": sum(ratios) / len(ratios) if ratios else None,
    }
    return Puzzle(
        id="", category=CATEGORY, prompt=text, examples=examples, query=q.group(1), features=features
    )


def generate(rng: random.Random, difficulty: dict | None = None) -> Puzzle:
    """Knobs (``DEFAULT_DIFFICULTY``): ``n_examples`` (lo, hi), ``value_range`` and ``factor_range``."""
    d = {**DEFAULT_DIFFICULTY, **(difficulty or {})}
    factor = rng.uniform(*span(d["factor_range"]))
    xs = [
        round(rng.uniform(*span(d["value_range"])), 2) for _ in range(rng.randint(*span(d["n_examples"])) + 1)
    ]
    lines = [
        HEADER,
        *(f"{x} m becomes {round(x * factor, 2):.2f}" for x in xs[:-1]),
        f"Now, convert the following measurement: {xs[-1]} m",
    ]
    puzzle = parse("\n".join(lines))
    puzzle.id = f"gen-units-{rng.getrandbits(32):08x}"
    puzzle.answer = f"{round(xs[-1] * factor, 2):.2f}"
    puzzle.features["hidden_factor"] = factor
    return puzzle


def solve(puzzle: Puzzle) -> Solution | None:
    pairs = [(Decimal(x), Decimal(y)) for x, y in puzzle.examples]
    if not pairs or any(x <= 0 for x, _ in pairs):
        return None
    lo, hi = feasible(pairs, lambda x: 1 / x)
    if lo > hi:
        return None  # no single factor fits every example: not a linear conversion
    q = Decimal(puzzle.query)
    if q <= 0:
        return None
    value = round2(q * (lo + hi) / 2)  # the answer of the middle factor: right in ~91 % of ambiguous cases
    # the simplest factor that fits the examples AND gives that answer, so the trace's arithmetic agrees
    f = shortest_decimal(max(lo, (value - HALF_CENT) / q), min(hi, (value + HALF_CENT) / q),
                         lambda c: all(abs(x * c - y) < HALF_CENT for x, y in pairs + [(q, value)]))
    exact = round2(q * lo) == round2(q * hi)
    return Solution(
        answer=f"{value:.2f}",
        status="deduced" if exact else "guessed",
        rule="linear",
        steps={"factor": f, "lo": lo, "hi": hi, "exact": exact},
    )


def times(a: Decimal, b: Decimal) -> str:
    """``a * b`` split at ``a``'s decimal point (integer part plus fraction), so each partial product is
    short: the step a model must take in a trace (also used by puzzles.gravity)."""
    whole, frac = Decimal(int(a)), a - int(a)
    if whole == 0 or frac == 0:
        return f"{fmt(a)} * {fmt(b)} = {fmt(a * b)}"
    return (
        f"{fmt(a)} * {fmt(b)} = {fmt(whole)} * {fmt(b)} + {fmt(frac)} * {fmt(b)} = "
        f"{fmt(whole * b)} + {fmt(frac * b)} = {fmt(a * b)}"
    )


def trace(puzzle: Puzzle, solution: Solution) -> str:
    f = solution.steps["factor"]
    out = [
        "Each output should be the input times one hidden factor f, rounded to 2 decimals.",
        "Step 1: estimate f from each example as output / input.",
    ]
    for x, y in puzzle.examples:
        ratio = (Decimal(y) / Decimal(x)).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)
        out.append(f"{y} / {x} = {fmt(ratio)}")
    out += ["", f"Step 2: the ratios agree; f = {fmt(f)} fits every example after rounding. Check:"]
    for x, y in puzzle.examples:
        prod = Decimal(x) * f
        out.append(f"{times(Decimal(x), f)} -> {round2(prod):.2f}, given {y}, matches.")
    q = Decimal(puzzle.query)
    out += [
        "",
        f"Step 3: convert the query {puzzle.query} m.",
        times(q, f),
        f"Rounded to 2 decimals: {solution.answer}",
        "",
        f"The converted measurement is {solution.answer}.",
    ]
    return "\n".join(out)


def audit(puzzle: Puzzle, reasoning: str) -> list:
    """Re-derive the factor's choice, each example check and the final rounding (see ``puzzles.claims``)."""
    return fit_steps(reasoning.split("\n"), puzzle.examples, lambda f, x: x * f)
