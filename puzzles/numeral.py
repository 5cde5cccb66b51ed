"""numeral_system: integers written in a hidden numeral system (in every real row: standard Roman numerals).

Real layout (3 to 5 examples, values 1..100 drawn with replacement, so repeats and a query equal to an
example both occur)::

    In Alice's Wonderland, numbers are secretly converted into a different numeral system. Some examples ...
    11 -> XI
    Now, write the number 38 in the Wonderland numeral system.

The solver checks that every example is standard Roman before answering; a contradicting example means
some other system, and it abstains.
"""

from __future__ import annotations

import random
import re

from puzzles.base import PROMPT_SUFFIX, Puzzle, PuzzleFormatError, Solution
from puzzles.units import span

CATEGORY = "numeral_system"
HEADER = (
    "In Alice's Wonderland, numbers are secretly converted into a different numeral system. "
    "Some examples are given below:"
)
_EXAMPLE = re.compile(r"^(\d+) -> ([IVXLCDM]+)$")
_QUERY = re.compile(r"^Now, write the number (\d+) in the Wonderland numeral system\.$")

# (value, symbol) in the greedy order; subtractive pairs included so each decimal digit is one lookup.
_ROMAN = [
    (1000, "M"),
    (900, "CM"),
    (500, "D"),
    (400, "CD"),
    (100, "C"),
    (90, "XC"),
    (50, "L"),
    (40, "XL"),
    (10, "X"),
    (9, "IX"),
    (5, "V"),
    (4, "IV"),
    (1, "I"),
]
# Roman spelling of each digit at each place: the trace decomposes by place, which is one table lookup each.
_PLACES = [
    ("thousands", 1000, "M", "", ""),
    ("hundreds", 100, "C", "D", "M"),
    ("tens", 10, "X", "L", "C"),
    ("units", 1, "I", "V", "X"),
]

DEFAULT_DIFFICULTY = {
    "n_examples": (3, 5),  # inclusive range; real rows: 3, 4 or 5 about equally often
    "value_range": (1, 100),  # inclusive; real rows: 1..100 uniform for examples and query
}


def _digit(d: int, one: str, five: str, ten: str) -> str:
    return [
        "",
        one,
        one * 2,
        one * 3,
        one + five,
        five,
        five + one,
        five + one * 2,
        five + one * 3,
        one + ten,
    ][d]


def to_roman(n: int) -> str:
    if not 1 <= n <= 3999:
        raise ValueError(f"Roman numerals cover 1..3999, got {n}")
    out = []
    for value, symbol in _ROMAN:
        while n >= value:
            out.append(symbol)
            n -= value
    return "".join(out)


def parse(prompt: str) -> Puzzle:
    text = prompt.removesuffix(PROMPT_SUFFIX).strip()
    lines = text.split("\n")
    if len(lines) < 3 or lines[0] != HEADER:
        raise PuzzleFormatError(f"not a numeral_system prompt (header or line count): {text[:80]!r}")
    examples = []
    for line in lines[1:-1]:
        m = _EXAMPLE.match(line)
        if not m:
            raise PuzzleFormatError(f"numeral_system example line not 'N -> ROMAN': {line!r}")
        examples.append((int(m.group(1)), m.group(2)))
    q = _QUERY.match(lines[-1])
    if not q:
        raise PuzzleFormatError(f"numeral_system query line not recognised: {lines[-1]!r}")
    values = [x for x, _ in examples] + [int(q.group(1))]
    features = {"n_examples": len(examples), "min_value": min(values), "max_value": max(values)}
    return Puzzle(
        id="", category=CATEGORY, prompt=text, examples=examples, query=int(q.group(1)), features=features
    )


def generate(rng: random.Random, difficulty: dict | None = None) -> Puzzle:
    """A Roman-numeral puzzle. Knobs (see ``DEFAULT_DIFFICULTY``): ``n_examples`` (lo, hi) and
    ``value_range`` (lo, hi), both inclusive, or an int for exactly that; values are drawn with replacement as in the real rows."""
    d = {**DEFAULT_DIFFICULTY, **(difficulty or {})}
    lo, hi = span(d["value_range"])
    n = rng.randint(*span(d["n_examples"]))
    examples = [(x, to_roman(x)) for x in (rng.randint(lo, hi) for _ in range(n))]
    query = rng.randint(lo, hi)
    lines = [
        HEADER,
        *(f"{x} -> {r}" for x, r in examples),
        f"Now, write the number {query} in the Wonderland numeral system.",
    ]
    puzzle = parse("\n".join(lines))
    puzzle.id = f"gen-numeral-{rng.getrandbits(32):08x}"
    puzzle.answer = to_roman(query)
    return puzzle


def solve(puzzle: Puzzle) -> Solution | None:
    for x, r in puzzle.examples:
        if not 1 <= x <= 3999 or to_roman(x) != r:
            return None  # not standard Roman: some other system we do not know
    if not 1 <= puzzle.query <= 3999:
        return None
    return Solution(answer=to_roman(puzzle.query), rule="roman")


def _places(n: int) -> list[tuple[str, int, int, str]]:
    """(place name, digit, place value, Roman spelling) for each nonzero decimal place of ``n``."""
    out = []
    for name, value, one, five, ten in _PLACES:
        d = n // value if value == 1000 else (n // value) % 10
        if d:
            out.append((name, d, d * value, one * d if value == 1000 else _digit(d, one, five, ten)))
    return out


def trace(puzzle: Puzzle, solution: Solution) -> str:
    out = [
        (
            "The examples look like Roman numerals (I=1, V=5, X=10, L=50, C=100, D=500, M=1000), written "
            "place by place: thousands, hundreds, tens, units; a 4 or 9 in a place is written by subtraction "
            "(IV, IX, XL, XC, CD, CM)."
        ),
        "",
        "Check each example:",
    ]
    for x, r in puzzle.examples:
        parts = " + ".join(roman for *_, roman in _places(x))
        out.append(
            f"{x} = " + " + ".join(str(v) for _, _, v, _ in _places(x)) + f" -> {parts} = {r}, matches."
        )
    q = puzzle.query
    out += [
        "",
        "Every example is a standard Roman numeral. Now convert the query.",
        f"{q} = " + " + ".join(str(v) for _, _, v, _ in _places(q)),
    ]
    out += [f"- {name}: {d} -> {v} = {roman}" for name, d, v, roman in _places(q)]
    out.append(f"Joined in order: {solution.answer}")
    out += ["", f"The number {q} in the Wonderland numeral system is {solution.answer}."]
    return "\n".join(out)


_PLACE_LINE = re.compile(r"^- (thousands|hundreds|tens|units): (\d) -> (\d+) = ([IVXLCDM]+)$")
_CHECK_LINE = re.compile(r"^(\d+) = [\d + ]+ -> ([IVXLCDM +]+) = ([IVXLCDM]+), matches\.$")


def audit(puzzle: Puzzle, reasoning: str) -> list:
    """Each place value looked up in the Roman table, each example's joining, the query's joining."""
    from puzzles.base import AuditStep

    scale = {"thousands": 1000, "hundreds": 100, "tens": 10, "units": 1}
    outputs = {str(r) for _, r in puzzle.examples}
    steps, places = [], []
    for i, line in enumerate(reasoning.split("\n")):
        if m := _PLACE_LINE.match(line):
            name, d, v, roman = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
            steps.append(AuditStep(i, "table_lookup", d * scale[name] == v and to_roman(v) == roman, line))
            places.append(roman)
        elif m := _CHECK_LINE.match(line):
            n, parts, whole = int(m.group(1)), m.group(2).split(" + "), m.group(3)
            ok = "".join(parts) == whole == to_roman(n) and whole in outputs
            steps.append(AuditStep(i, "substitution", ok, line))
        elif line.startswith("Joined in order: "):
            steps.append(AuditStep(i, "substitution", line.split(": ", 1)[1] == "".join(places), line))
        elif line.startswith("The examples look like Roman numerals"):
            steps.append(AuditStep(i, "rule", True, line))  # the table the lookups above are checked against
    return steps
