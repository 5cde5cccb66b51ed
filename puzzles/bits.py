"""Bit manipulation puzzles: 8-bit strings, a hidden byte rule, 7-10 examples.

Bit positions are string positions: bit 0 is the leftmost character. A rule is a few *bases* (shifted or
rotated copies of the input, see ``puzzles.bits_search``) and one truth table applied at every position;
the search and its Bayesian scoring live in ``puzzles.bits_search``.
"""

from __future__ import annotations

import random
import re

from puzzles import bits_search
from puzzles.base import Puzzle, PuzzleFormatError, Solution

CATEGORY = "bit_manipulation"
HEADER = (
    "In Alice's Wonderland, a secret bit manipulation rule transforms 8-bit binary numbers. The transformation "
    "involves operations like bit shifts, rotations, XOR, AND, OR, NOT, and possibly majority or choice "
    "functions.\n\nHere are some examples of input -> output:\n"
)
_EXAMPLE = re.compile(r"^([01]{8}) -> ([01]{8})$", re.MULTILINE)
_QUERY = re.compile(r"Now, determine the output for: ([01]{8})\s*$")
LETTERS = "ABC"


def parse(prompt: str) -> Puzzle:
    if "bit manipulation rule" not in prompt[:200]:
        raise PuzzleFormatError(f"not a bit manipulation prompt: {prompt[:80]!r}")
    examples = _EXAMPLE.findall(prompt)
    query = _QUERY.search(prompt)
    if not examples or query is None:
        raise PuzzleFormatError(f"bit manipulation prompt without examples or query: {prompt[-80:]!r}")
    return Puzzle(id="", category=CATEGORY, prompt=prompt, examples=list(examples), query=query.group(1))


def render(examples: list[tuple[str, str]], query: str) -> str:
    """The exact real layout: header, one example a line, a blank line, the query line."""
    lines = "".join(f"{x} -> {y}\n" for x, y in examples)
    return f"{HEADER}{lines}\nNow, determine the output for: {query}"


# ---------------------------------------------------------------- rules: bases + truth table


def base_bits(base: tuple[str, int], x: str) -> str:
    """The 8 bits of a base (shifted/rotated copy) of x."""
    return "".join("0" if (p := bits_search.base_source(base, i)) is None else x[p] for i in range(8))


def apply_rule(bases: list[tuple[str, int]], table: dict[str, str], x: str) -> str:
    copies = [base_bits(b, x) for b in bases]
    return "".join(table["".join(c[i] for c in copies)] for i in range(8))


# Named gates the prompt mentions, as functions of (a, b) or (a, b, c); inputs and output may be negated.
_GATES2 = {"AND": lambda a, b: a & b, "OR": lambda a, b: a | b, "XOR": lambda a, b: a ^ b}
_GATES3 = {
    "MAJ": lambda a, b, c: (a & b) | (a & c) | (b & c),
    "CHOICE": lambda a, b, c: b if a else c,
    "XOR3": lambda a, b, c: a ^ b ^ c,
    "AND-XOR": lambda a, b, c: (a & b) ^ c,
    "OR-XOR": lambda a, b, c: (a | b) ^ c,
    "XOR-AND": lambda a, b, c: (a ^ b) & c,
    "XOR-OR": lambda a, b, c: (a ^ b) | c,
    "AND-OR": lambda a, b, c: (a & b) | c,
    "OR-AND": lambda a, b, c: (a | b) & c,
}


def _random_table(rng: random.Random, k: int) -> tuple[dict[str, str], str]:
    """A truth table over k inputs built from a named gate with random input/output negations."""
    if k == 1:
        gate, f = "COPY", (lambda a: a)
    else:
        gate, f = rng.choice(list((_GATES2 if k == 2 else _GATES3).items()))
    neg = [rng.random() < 0.25 for _ in range(k + 1)]
    table = {}
    for key in range(1 << k):
        bits = [((key >> (k - 1 - j)) & 1) ^ neg[j] for j in range(k)]
        table[format(key, f"0{k}b")] = str(f(*bits) ^ neg[k])
    return table, gate


def _depends_on_all(table: dict[str, str], k: int) -> bool:
    return all(
        any(table[key] != table[key[:j] + str(1 - int(key[j])) + key[j + 1 :]] for key in table)
        for j in range(k)
    )


def generate(rng: random.Random, difficulty: dict | None = None) -> Puzzle:
    """Difficulty knobs: ``k`` (number of shifted/rotated copies the rule combines, 1-3; default drawn
    10/55/35 %, roughly the real rows' mix of simplest fitting rules), ``n_examples`` (7-10, default random).
    The gate is AND/OR/XOR (k = 2) or majority/choice/XOR3/two chained gates (k = 3), inputs and output
    negated at random; a table that ignores one of its copies is redrawn."""
    difficulty = difficulty or {}
    k = int(difficulty.get("k", rng.choices([1, 2, 3], weights=[10, 55, 35])[0]))
    n = int(difficulty.get("n_examples", rng.randint(7, 10)))
    while True:
        bases = [bits_search.BASES[i] for i in sorted(rng.sample(range(len(bits_search.BASES)), k))]
        table, gate = _random_table(rng, k)
        if _depends_on_all(table, k):
            break
    xs = [format(v, "08b") for v in rng.sample(range(256), n + 1)]
    examples = [(x, apply_rule(bases, table, x)) for x in xs[:n]]
    query = xs[n]
    return Puzzle(
        id=f"bits-{rng.getrandbits(40):010x}",
        category=CATEGORY,
        prompt=render(examples, query),
        examples=examples,
        query=query,
        answer=apply_rule(bases, table, query),
        features={"k": k, "n_examples": n, "gate": gate, "bases": bases},
    )


# ---------------------------------------------------------------- solving


def solve(puzzle: Puzzle, time_cap: float = 1.0) -> Solution | None:
    """Deduced when the posterior of the answer is >= bits_search.DEDUCE, guessed when >= GUESS, else None."""
    inf = bits_search.infer(puzzle.examples, puzzle.query, time_cap=time_cap)
    if inf.answer is None:
        return None
    rule = " and ".join(bits_search.base_name(b) for b in inf.bases)
    return Solution(
        answer=inf.answer,
        status=inf.status,
        rule=rule,
        steps={"bases": inf.bases, "table": inf.table, "posterior": inf.posterior},
    )


# ---------------------------------------------------------------- trace


def _sp(s: str) -> str:
    return " ".join(s)


def _base_line(letter: str, base: tuple[str, int]) -> str:
    kind, k = base
    if kind == "rot":
        how = "bit i = x bit i" if k == 0 else f"bit i = x bit (i+{k}) mod 8"
    elif kind == "shl":
        how = f"bit i = x bit i+{k}, and 0 for i > {7 - k}"
    else:
        how = f"bit i = x bit i-{k}, and 0 for i < {k}"
    return f"{letter} = {bits_search.base_name(base)} ({how})"


def _bit_lines(letters: str, copies: list[str], i: int) -> str:
    return " ".join(f"{L}={c[i]}" for L, c in zip(letters, copies))


def trace(puzzle: Puzzle, solution: Solution) -> str:
    """Bases, then every example bit by bit (the table entries it pins), the table, the query bit by bit."""
    bases, table = solution.steps["bases"], solution.steps["table"]
    letters = LETTERS[: len(bases)]
    out = [
        (
            "Bits are numbered 0 to 7 from the left. Each output bit i is one fixed function of bit i of a "
            "few shifted or rotated copies of the input x."
        ),
        "Copies that explain every example:",
    ]
    out += [_base_line(L, b) for L, b in zip(letters, bases)]
    for n, (x, y) in enumerate(puzzle.examples, start=1):
        copies = [base_bits(b, x) for b in bases]
        out.append(f"Example {n}: x = {_sp(x)} , y = {_sp(y)}")
        out += [f"{L} = {_sp(c)}" for L, c in zip(letters, copies)]
        out += [f"bit {i}: {_bit_lines(letters, copies, i)} -> {y[i]}" for i in range(8)]
    out.append("Collected table (no pattern gave two outputs):")
    out += [
        f"{' '.join(f'{L}={v}' for L, v in zip(letters, key))} -> {val}" for key, val in sorted(table.items())
    ]
    q = puzzle.query
    copies = [base_bits(b, q) for b in bases]
    out.append(f"Query: x = {_sp(q)}")
    out += [f"{L} = {_sp(c)}" for L, c in zip(letters, copies)]
    ans = []
    for i in range(8):
        key = "".join(c[i] for c in copies)
        ans.append(table[key])
        out.append(f"bit {i}: {_bit_lines(letters, copies, i)} -> {table[key]}")
    answer = "".join(ans)
    out.append(f"Output: {_sp(answer)}")
    out.append(f"The answer is {answer}")
    return "\n".join(out)
