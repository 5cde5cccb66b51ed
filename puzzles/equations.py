"""Equation puzzles: ``AB?CD = result`` lines with a hidden operation per operator glyph.

Two families share one layout (a 5-character left side, operator in the middle):

- numeric: operands are 2-digit numbers (``96$54 = 5184``); each operator glyph hides an operation.
- symbolic: every character is a glyph; operand glyphs stand for digits (an injective mapping), the middle
  glyph is the operator; the answer is written back in glyphs.

An operation here is an ``Op`` applied in a "world": the plain world reads numbers as written, the reversed
world reads both operands right-to-left and writes the result right-to-left (so ``57*67 = 0075`` is
75*76 = 5700 written backwards). A negative result is marked by a sign (``-`` or the operator glyph
itself) before or after the digits.

The category's entry points live here: ``parse`` / ``render`` (the real layout), ``generate``, ``solve``
and ``trace`` (each family's own module below does the work), and ``audit``:

- ``puzzles.equations_rules``: the rule space (operations, worlds, sign styles) and the priors;
- ``puzzles.equations_numeric``: numeric analysis, solving and the op-by-op trace;
- ``puzzles.equations_symbolic``: the exhaustive search over decodings, the CHECKER of symbolic traces;
- ``puzzles.cryptarithm``: the catalog recall-and-verify walk, the only symbolic trace (where it reaches the
  search's deduced answer; elsewhere ``trace`` raises ``NotTeachable``: the search is never a trace);
- ``puzzles.equations_audit``: ``audit(puzzle, reasoning)`` re-derives the traces' arithmetic, op-by-op
  claims, signatures and recalls.
"""

from __future__ import annotations

import dataclasses
import random
import re
import string

from puzzles import cryptarithm
from puzzles.base import NotTeachable, Puzzle, PuzzleFormatError, Solution
from puzzles.equations_audit import audit
from puzzles.equations_numeric import solve_numeric, trace_numeric
from puzzles.equations_rules import OP_PRIOR, Rule
from puzzles.equations_symbolic import solve_symbolic

# The category's API (``puzzles.categories``); ``audit`` is the equations auditor, re-exported for it.
__all__ = [
    "CATEGORY", "GLYPHS", "HEADER", "GenConfig", "audit", "generate", "parse", "render", "solve", "trace",
]  # fmt: skip

CATEGORY = "equations"
HEADER = (
    "In Alice's Wonderland, a secret set of transformation rules is applied to equations. "
    "Below are a few examples:\n"
)
_LINE = re.compile(r"^(.{5}) = (.*)$")
_QUERY = "Now, determine the result for: "


def parse(prompt: str) -> Puzzle:
    if "transformation rules is applied to equations" not in prompt[:200]:
        raise PuzzleFormatError(f"not an equations prompt: {prompt[:80]!r}")
    body = prompt.split("Below are a few examples:\n", 1)
    if len(body) != 2 or _QUERY not in body[1]:
        raise PuzzleFormatError(f"equations prompt without examples or query: {prompt[-80:]!r}")
    head, query = body[1].rsplit(_QUERY, 1)
    examples = []
    for line in head.split("\n"):
        if not line:
            continue
        m = _LINE.match(line)
        if m is None:
            raise PuzzleFormatError(f"equation line not of the form 'AB?CD = R': {line!r}")
        examples.append((m.group(1), m.group(2)))
    query = query.rstrip("\n")
    if len(query) != 5 or not examples:
        raise PuzzleFormatError(f"equations query not 5 characters: {query!r}")
    family = "numeric" if _is_numeric(query) and all(_is_numeric(x) for x, _ in examples) else "symbolic"
    return Puzzle(
        id="", category=CATEGORY, prompt=prompt, examples=examples, query=query, features={"family": family}
    )


def _is_numeric(lhs: str) -> bool:
    return lhs[:2].isdigit() and lhs[3:].isdigit()


def render(examples: list[tuple[str, str]], query: str) -> str:
    """The exact real layout: header, one example a line, the query line (no blank line between)."""
    lines = "".join(f"{x} = {y}\n" for x, y in examples)
    return f"{HEADER}{lines}{_QUERY}{query}"


def solve(puzzle: Puzzle, time_cap: float = 2.0, deduce_only: bool = False) -> Solution | None:
    """The answer, deduced (one answer fits every decoding of the examples) or guessed (a prior-weighted
    vote); None when nothing fits. ``time_cap`` bounds the symbolic search (seconds); with ``deduce_only``
    a guess is returned as None, and the symbolic search stops as soon as the answer is open (fast: the
    mix builder keeps only deduced rows of generated puzzles)."""
    if puzzle.features.get("family", "numeric") == "numeric" and _is_numeric(puzzle.query):
        sol = solve_numeric(puzzle)
        return None if deduce_only and sol is not None and sol.status != "deduced" else sol
    return solve_symbolic(puzzle, time_cap, deduce_only)


def trace(puzzle: Puzzle, solution: Solution) -> str:
    """Numeric: the visible rule deduction. Symbolic: the catalog recall-and-verify trace
    (``puzzles.cryptarithm``) where it reaches the search solver's answer (the solver checks it); else
    ``NotTeachable`` (the search's own decoding is never written as a trace)."""
    if solution.steps.get("family") == "numeric":
        return trace_numeric(puzzle, solution)
    recalled = cryptarithm.recall_trace(puzzle)
    if recalled.answer is None or recalled.answer != solution.answer:
        raise NotTeachable(f"the recall trace reaches {recalled.answer!r}, the search {solution.answer!r}")
    return recalled.reasoning


# ---------------------------------------------------------------- generation

GLYPHS = "!\"#$%&'()*+-/:<>?@[\\]^`{|}"  # the 26 symbols real puzzles draw operators and digit glyphs from


@dataclasses.dataclass
class GenConfig:
    """Difficulty knobs for ``generate`` (pass as a dict; unknown keys are an error).

    family: "numeric" or "symbolic" (None: 47 / 53 as in the real data).
    n_examples: example lines (None: 3 to 5). n_ops: distinct operator glyphs (None: 1 to 3).
    ops: operation names to draw from (None: all of OPS, weighted by how often real puzzles use them).
    rev: reversed world (None: 70 % reversed, as in the real data).
    query_seen: probability that the query's operator appears in the examples (real data: about 0.8).
    operator_glyphs: pool for operator glyphs (None: + - * weighted up, then any of GLYPHS).
    """

    family: str | None = None
    n_examples: int | None = None
    n_ops: int | None = None
    ops: tuple[str, ...] | None = None
    rev: bool | None = None
    query_seen: float = 0.8
    operator_glyphs: str | None = None


def _draw_rules(rng: random.Random, cfg: GenConfig, n: int) -> tuple[bool, str, list[str]]:
    rev = cfg.rev if cfg.rev is not None else rng.random() < 0.7
    sign = "gpre" if not rev or rng.random() < 0.6 else "gpost"
    names = list(cfg.ops or OP_PRIOR)
    weights = [OP_PRIOR.get(o, 1) for o in names]
    chosen: list[str] = []
    while len(chosen) < min(n, len(names)):
        o = rng.choices(names, weights)[0]
        if o not in chosen:
            chosen.append(o)
    return rev, sign, chosen


def _draw_operators(rng: random.Random, cfg: GenConfig, n: int, family: str) -> list[str]:
    pool = cfg.operator_glyphs or ("+-*" * (12 if family == "symbolic" else 2) + GLYPHS)
    out: list[str] = []
    while len(out) < n:
        g = rng.choice(pool)
        if g not in out:
            out.append(g)
    return out


def generate(rng: random.Random, difficulty: dict | None = None) -> Puzzle:
    cfg = GenConfig(**(difficulty or {}))
    family = cfg.family or ("numeric" if rng.random() < 0.47 else "symbolic")
    n_ex = cfg.n_examples or rng.randint(3, 5)
    n_ops = cfg.n_ops or rng.choice((1, 2, 2, 3, 3))
    rev, sign, ops = _draw_rules(rng, cfg, n_ops)
    glyphs = _draw_operators(rng, cfg, len(ops), family)
    rules = {g: Rule(rev, op, sign) for g, op in zip(glyphs, ops)}
    # Real symbolic puzzles never use + - * as digit glyphs (so "-" in a result is always a sign).
    digit_glyphs = rng.sample([c for c in GLYPHS if c not in glyphs and c not in "+-*"], 10)
    encode = str.maketrans(string.digits, "".join(digit_glyphs))

    def line(g: str) -> tuple[str, str]:
        while True:
            lhs = f"{rng.randint(0, 99):02d}{g}{rng.randint(0, 99):02d}"
            out = rules[g].apply(lhs)
            if out is not None:
                break
        if family == "symbolic":
            # Digits become glyphs; a sign marker ("-" or the operator) is not a digit and stays as it is.
            return lhs.translate(encode), out.translate(encode)
        return lhs, out

    order = [glyphs[i % len(glyphs)] for i in range(n_ex)]
    rng.shuffle(order)
    examples = [line(g) for g in order]
    seen = rng.random() < cfg.query_seen or len(glyphs) == 1
    if seen:
        qg = rng.choice(glyphs)
    else:
        qg = glyphs[-1]
        examples = [line(g) for g in order if g != qg] or [line(glyphs[0])]
        if qg in {x[2] for x, _ in examples}:
            seen = True
    query, answer = line(qg)
    features = {"family": family, "rev": rev, "ops": dict(zip(glyphs, ops)), "query_seen": seen}
    prompt = render(examples, query)
    return Puzzle(
        id="",
        category=CATEGORY,
        prompt=prompt,
        examples=examples,
        query=query,
        answer=answer,
        features=features,
    )


