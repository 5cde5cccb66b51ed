"""Equation puzzles: ``AB?CD = result`` lines with a hidden operation per operator glyph.

Two families share one layout (a 5-character left side, operator in the middle):

- numeric: operands are 2-digit numbers (``96$54 = 5184``); each operator glyph hides an operation.
- symbolic: every character is a glyph; operand glyphs stand for digits (an injective mapping), the middle
  glyph is the operator; the answer is written back in glyphs.

An operation here is an ``Op`` applied in a "world": the plain world reads numbers as written, the reversed
world reads both operands right-to-left and writes the result right-to-left (so ``57*67 = 0075`` is
75*76 = 5700 written backwards). A negative result is marked by a sign (``-`` or the operator glyph
itself) before or after the digits.

Symbolic solving is exhaustive over decodings (world, operation per operator glyph, injective glyph -> digit
map), so a single answer across all of them is a deduction. Each example is matched by looking its glyph
shape up in a per-operation table of all 10,000 operand pairs, the most constrained example first: real
puzzles take ~10 ms at the median, ~0.2 s at p95 (2 s cap). That search is the CHECKER of symbolic traces:
``trace`` writes the catalog recall-and-verify trace of ``puzzles.cryptarithm`` wherever it reaches the
search's deduced answer, and raises ``NotTeachable`` elsewhere (the search itself is never a trace).
Numeric guesses are ranked by the generator's three operation slots (``SLOTS``) and a prior fitted on real
puzzles (``NUMERIC_PRIOR``).
``audit(puzzle, reasoning)`` re-derives the traces' arithmetic, op-by-op claims, signatures and recalls.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import random
import re
import time

from puzzles.base import AuditStep, Puzzle, PuzzleFormatError, Solution

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


# ---------------------------------------------------------------- operations and rendering


@dataclasses.dataclass(frozen=True)
class Op:
    """A hidden operation on the two operands ``a`` and ``b`` (ints as read in the world); ``text`` is how
    a trace names it. Concatenations work on the operand strings, so leading zeros survive."""

    name: str
    text: str


OPS = [
    Op("add", "a + b"),
    Op("sub", "a - b"),
    Op("rsub", "b - a"),
    Op("absdiff", "|a - b|"),
    Op("negabs", "-|a - b|"),
    Op("mul", "a * b"),
    Op("cat", "a then b"),
    Op("rcat", "b then a"),
    Op("add1", "a + b + 1"),
    Op("addm1", "a + b - 1"),
    Op("mul1", "a * b + 1"),
    Op("mulm1", "a * b - 1"),
    Op("mod", "max(a, b) mod min(a, b)"),
]
OP_BY_NAME = {op.name: op for op in OPS}
_OP_NAMES = [op.name for op in OPS]
# How a negative result is marked: the operator glyph ("g") before ("pre") or after ("post") the digits.
# (Real puzzles never use a plain "-" for another glyph; "-pre"/"-post" stay renderable for completeness.)
SIGNS = ("gpre", "gpost")


def value(op: str, a: int, b: int) -> int | None:
    """The integer result of ``op`` (None where undefined: mod by a zero operand)."""
    if op == "add":
        return a + b
    if op == "sub":
        return a - b
    if op == "rsub":
        return b - a
    if op == "absdiff":
        return abs(a - b)
    if op == "negabs":
        return -abs(a - b)
    if op == "mul":
        return a * b
    if op == "add1":
        return a + b + 1
    if op == "addm1":
        return a + b - 1
    if op == "mul1":
        return a * b + 1
    if op == "mulm1":
        return a * b - 1
    if op == "mod":  # the larger operand modulo the smaller, as the real puzzles do
        hi, lo = max(a, b), min(a, b)
        return hi % lo if lo else None
    raise KeyError(op)


@dataclasses.dataclass(frozen=True)
class Rule:
    """One glyph's hidden rule: the world (reversed or not), the operation, the negative-sign style."""

    rev: bool
    op: str
    sign: str = "gpre"

    def apply(self, lhs: str) -> str | None:
        """The result string for a numeric left side ``AB?CD`` (None where the op is undefined)."""
        x, g, y = lhs[:2], lhs[2], lhs[3:]
        if self.rev:
            x, y = x[::-1], y[::-1]
        if self.op in ("cat", "rcat"):
            s = x + y if self.op == "cat" else y + x
            return s[::-1] if self.rev else s
        v = value(self.op, int(x), int(y))
        if v is None:
            return None
        s = str(abs(v))
        if self.rev:
            s = s[::-1]
        if v < 0:
            mark = "-" if self.sign[0] == "-" else g
            s = mark + s if self.sign.endswith("pre") else s + mark
        return s

    def can_be_negative(self) -> bool:
        return self.op in ("sub", "rsub", "negabs", "addm1", "mulm1")


def _rules_for(op: str) -> list[Rule]:
    signs = SIGNS if Rule(False, op).can_be_negative() else ("gpre",)
    return [Rule(rev, op, sign) for rev in (False, True) for sign in signs]


ALL_RULES = [rule for op in OPS for rule in _rules_for(op.name)]

# Preference among operations when the examples leave a choice (a guess, never a deduction): how often each
# operation hides behind a glyph in real puzzles, overall and for the three glyphs that look like operators.
OP_PRIOR = {
    "add": 169,
    "mul": 156,
    "cat": 120,
    "mul1": 70,
    "mulm1": 65,
    "add1": 64,
    "sub": 64,
    "addm1": 53,
    "mod": 36,
    "negabs": 27,
    "absdiff": 18,
    "rcat": 16,
    "rsub": 15,
}
GLYPH_PRIOR = {
    "+": {"add": 55, "cat": 35, "add1": 31, "addm1": 20, "mul": 5},
    "*": {"mul": 45, "cat": 36, "mul1": 33, "mulm1": 25, "add": 6, "add1": 4, "sub": 4},
    "-": {"sub": 28, "mod": 16, "negabs": 11, "absdiff": 9, "mul": 7, "mulm1": 5, "add": 4},
}


def _is_negative_text(s: str) -> bool:
    return not (s[:1].isdigit() and s[-1:].isdigit())


@dataclasses.dataclass
class NumericAnalysis:
    """Which rules fit each glyph's examples, and the puzzle-wide world and sign style they imply."""

    fits: dict[str, list[Rule]]  # glyph -> rules consistent with all its examples
    revs: set[bool]  # reading directions every explained glyph allows (the world is puzzle-wide)
    signs: set[str]  # sign styles every glyph with a negative example allows (also puzzle-wide)
    candidates: list[Rule]  # rules for the query glyph after the puzzle-wide constraints


def analyze_numeric(puzzle: Puzzle) -> NumericAnalysis:
    groups: dict[str, list[tuple[str, str]]] = {}
    for x, y in puzzle.examples:
        groups.setdefault(x[2], []).append((x, y))
    fits = {g: [r for r in ALL_RULES if all(r.apply(x) == y for x, y in exs)] for g, exs in groups.items()}
    revs = {False, True}
    signs = set(SIGNS)
    for g, rules in fits.items():
        if rules:  # a glyph no rule explains says nothing about the world
            revs &= {r.rev for r in rules}
        if any(_is_negative_text(y) for _, y in groups[g]) and rules:
            signs &= {r.sign for r in rules}
    if revs == {False}:  # every real plain-world puzzle puts the sign before the digits
        signs &= {"gpre"}
    q = puzzle.query[2]
    if q in fits:
        cands = [r for r in fits[q] if r.rev in revs and (r.sign in signs or not r.can_be_negative())]
    else:
        cands = [r for r in ALL_RULES if r.rev in revs and (r.sign in signs or not r.can_be_negative())]
    return NumericAnalysis(fits, revs, signs, cands)


# Operation families: within one prompt no two operator glyphs share a family (true of every real puzzle
# whose examples fix each glyph's operation), so a glyph's family rules out that family for the others.
FAMILY = {
    "add": "add", "add1": "add", "addm1": "add",
    "mul": "mul", "mul1": "mul", "mulm1": "mul",
    "sub": "sub", "rsub": "sub", "absdiff": "sub", "negabs": "sub",
    "cat": "cat", "rcat": "cat",
    "mod": "mod",
}  # fmt: skip

# The generator's prior over rules (operation, reversed world, sign style): how often each rule hides behind
# a glyph whose examples fix it in real puzzles. Joins (cat/rcat: one function across worlds, so rarely
# "fixed") are weighted low: an unseen glyph that hides a join is rare (weights 3-10 measured best, 90 worst).
# A rule absent here gets weight 0.5. Used only to rank guesses, never to deduce: the catalog's candidate order
# and the symbolic guesses (puzzles.cryptarithm); numeric guesses use NUMERIC_PRIOR (the generator's slots).
RULE_PRIOR = {
    ("add", True, "gpre"): 110, ("mul", True, "gpre"): 109, ("cat", True, "gpre"): 10,
    ("mul1", True, "gpre"): 44, ("mul", False, "gpre"): 37, ("add1", True, "gpre"): 35,
    ("mulm1", True, "gpre"): 35, ("cat", False, "gpre"): 3, ("add", False, "gpre"): 28,
    ("sub", True, "gpre"): 27, ("mulm1", False, "gpre"): 25, ("addm1", False, "gpre"): 25,
    ("addm1", True, "gpre"): 25, ("add1", False, "gpre"): 22, ("mul1", False, "gpre"): 21,
    ("mod", False, "gpre"): 16, ("sub", False, "gpre"): 13, ("mod", True, "gpre"): 12,
    ("rsub", True, "gpost"): 11, ("absdiff", True, "gpre"): 10, ("rcat", True, "gpre"): 8,
    ("rcat", False, "gpre"): 8, ("negabs", False, "gpre"): 8, ("negabs", True, "gpre"): 7,
    ("absdiff", False, "gpre"): 3, ("negabs", True, "gpost"): 2,
}  # fmt: skip


def rule_weight(glyph: str, rule: Rule) -> float:
    """A guess's weight: the rule's prior times how often the operator glyph hides that operation."""
    glyph_table = GLYPH_PRIOR.get(glyph, {})
    return RULE_PRIOR.get((rule.op, rule.rev, rule.sign), 0.5) * (glyph_table.get(rule.op, 0) + 1)


# The generator's operation slots (its structure, checked on every real numeric puzzle in train_dev with its
# answer: all 433 fit): each operator glyph fills one of three slots and no two glyphs fill the same one, so a
# puzzle has at most three operators. A join (cat / rcat) fills the additive or the multiplicative slot (two
# joins in one puzzle fill both); mod is subtractive (it never stands beside a subtraction). A slot's glyph is
# often its own symbol (+, *, -). Used only to rank guesses, never to deduce.
SLOTS = {
    "add": "A", "add1": "A", "addm1": "A",
    "mul": "M", "mul1": "M", "mulm1": "M",
    "sub": "S", "rsub": "S", "absdiff": "S", "negabs": "S", "mod": "S",
    "cat": "AM", "rcat": "AM",
}  # fmt: skip
SLOT_TEXT = {"A": "additive", "M": "multiplicative", "S": "subtractive"}


@dataclasses.dataclass(frozen=True)
class SlotPrior:
    """The generator's choices as probabilities: the world, which slots a puzzle with n operator glyphs
    fills, which glyph class a slot shows ("+", "-", "*" or "other"), and which variant (op, sign style) a
    slot hides in each world."""

    rev: float  # P(reversed world)
    slot_sets: dict[int, dict[str, float]]  # n glyphs -> sorted slot letters ("AS") -> probability
    glyph: dict[str, dict[str, float]]  # slot -> glyph class -> probability
    variant: dict[tuple[bool, str], dict[tuple[str, str], float]]  # (reversed?, slot) -> (op, sign) -> prob


# Fitted on train_dev (EM over the slot assignments consistent with each puzzle's examples and answer;
# ``python bench/fit_numeric_prior.py`` refits, prints this table and the 2-fold estimate).
NUMERIC_PRIOR = SlotPrior(
    rev=0.695,
    slot_sets={
        1: {"A": 0.1579, "M": 0.2632, "S": 0.5789},
        2: {"AM": 0.3041, "AS": 0.3949, "MS": 0.301},
        3: {"AMS": 1.0},
    },
    glyph={
        "A": {"+": 0.3907, "-": 0.0312, "*": 0.0521, "other": 0.5261},
        "M": {"+": 0.0309, "-": 0.0402, "*": 0.3792, "other": 0.5497},
        "S": {"+": 0.0411, "-": 0.4098, "*": 0.0491, "other": 0.5},
    },
    variant={
        (False, "A"): {
            ("add", "gpre"): 0.2998,
            ("cat", "gpre"): 0.2694,
            ("add1", "gpre"): 0.1985,
            ("addm1", "gpre"): 0.114,
            ("addm1", "gpost"): 0.114,
            ("rcat", "gpre"): 0.0043,
        },
        (False, "M"): {
            ("mul", "gpre"): 0.3599,
            ("cat", "gpre"): 0.2064,
            ("mul1", "gpre"): 0.1951,
            ("mulm1", "gpre"): 0.1171,
            ("mulm1", "gpost"): 0.1171,
            ("rcat", "gpre"): 0.0046,
        },
        (False, "S"): {
            ("sub", "gpre"): 0.3243,
            ("mod", "gpre"): 0.2288,
            ("absdiff", "gpre"): 0.2093,
            ("negabs", "gpre"): 0.2065,
            ("rsub", "gpre"): 0.0139,
            ("sub", "gpost"): 0.007,
            ("rsub", "gpost"): 0.0061,
            ("negabs", "gpost"): 0.0041,
        },
        (True, "A"): {
            ("add", "gpre"): 0.519,
            ("cat", "gpre"): 0.1718,
            ("add1", "gpre"): 0.1601,
            ("addm1", "gpre"): 0.054,
            ("addm1", "gpost"): 0.054,
            ("rcat", "gpre"): 0.041,
        },
        (True, "M"): {
            ("mul", "gpre"): 0.4693,
            ("mul1", "gpre"): 0.1971,
            ("cat", "gpre"): 0.1435,
            ("mulm1", "gpre"): 0.0813,
            ("mulm1", "gpost"): 0.0813,
            ("rcat", "gpre"): 0.0276,
        },
        (True, "S"): {
            ("sub", "gpre"): 0.4201,
            ("absdiff", "gpre"): 0.1781,
            ("rsub", "gpost"): 0.1272,
            ("negabs", "gpre"): 0.1157,
            ("mod", "gpre"): 0.1081,
            ("negabs", "gpost"): 0.0399,
            ("rsub", "gpre"): 0.0056,
            ("sub", "gpost"): 0.0054,
        },
    },
)


def glyph_class(g: str) -> str:
    return g if g in "+-*" else "other"


SlotConfig = tuple[float, bool, dict[str, tuple[Rule, str]]]


def slot_configs(rules: dict[bool, dict[str, list[Rule]]], prior: SlotPrior) -> list[SlotConfig]:
    """Every way to give each glyph a rule and a slot, distinct slots, in one world: (prior weight, world,
    glyph -> (rule, slot)). ``rules`` holds each glyph's candidate rules per world."""
    out: list[SlotConfig] = []
    for rev, sets in rules.items():
        glyphs = list(sets)
        options = [
            [
                (r, s, prior.glyph[s][glyph_class(g)] * prior.variant[(rev, s)].get((r.op, r.sign), 0.0))
                for r in sets[g]
                for s in SLOTS[r.op]
            ]
            for g in glyphs
        ]
        base = prior.rev if rev else 1 - prior.rev
        for combo in itertools.product(*options):
            slots = "".join(sorted(s for _, s, _ in combo))
            w = (
                base
                * prior.slot_sets.get(len(glyphs), {}).get(slots, 0.0)
                * math.prod(x for _, _, x in combo)
            )
            if w > 0 and len(set(slots)) == len(slots):
                out.append((w, rev, {g: (r, s) for g, (r, s, _) in zip(glyphs, combo)}))
    return out


def ranked_guesses(
    puzzle: Puzzle, an: NumericAnalysis, prior: SlotPrior | None = None
) -> list[tuple[str, float, Rule]]:
    """Answers the query's candidate rules give, best first: (answer, posterior share, the rule of its
    heaviest slot assignment). The posterior is the slot prior over every assignment of rules and slots to
    all glyphs that fits the examples (a glyph no rule explains is left out; if the slots cannot hold the
    glyphs, the query's candidates are weighed alone)."""
    prior = prior or NUMERIC_PRIOR
    q = puzzle.query[2]
    rules = {
        rev: {g: [r for r in fit if r.rev == rev] for g, fit in an.fits.items() if fit and g != q}
        | {q: [r for r in an.candidates if r.rev == rev]}
        for rev in an.revs
    }
    configs = slot_configs(rules, prior) or slot_configs(
        {rev: {q: sets[q]} for rev, sets in rules.items()},
        dataclasses.replace(prior, slot_sets={1: {"A": 1, "M": 1, "S": 1}}),
    )
    score: dict[str, float] = {}
    best: dict[str, tuple[float, Rule]] = {}
    for w, _, assign in configs:
        rule = assign[q][0]
        out = rule.apply(puzzle.query)
        if out is None:
            continue
        score[out] = score.get(out, 0.0) + w
        if out not in best or w > best[out][0]:
            best[out] = (w, rule)
    total = sum(score.values()) or 1.0
    return sorted(((a, w / total, best[a][1]) for a, w in score.items()), key=lambda t: -t[1])


def query_slot_text(puzzle: Puzzle, an: NumericAnalysis, rule: Rule, prior: SlotPrior | None = None) -> str:
    """The slots the other glyphs take in the heaviest assignment that gives the query ``rule``."""
    prior = prior or NUMERIC_PRIOR
    q = puzzle.query[2]
    rules = {
        rule.rev: {g: [r for r in fit if r.rev == rule.rev] for g, fit in an.fits.items() if fit and g != q}
        | {q: [rule]}
    }
    configs = slot_configs(rules, prior)
    if not configs:
        return ""
    _, _, assign = max(configs, key=lambda c: c[0])
    taken = ", ".join(f"'{g}' {SLOT_TEXT[s]}" for g, (_, s) in assign.items() if g != q)
    return f"{taken}; '{q}' {SLOT_TEXT[assign[q][1]]}" if taken else f"'{q}' {SLOT_TEXT[assign[q][1]]}"


def solve_numeric(puzzle: Puzzle, prior: SlotPrior | None = None) -> Solution | None:
    """Deduced where every candidate rule of the query glyph (world and sign style fixed puzzle-wide) gives
    one answer; else the slot posterior's best answer, guessed."""
    an = analyze_numeric(puzzle)
    q = puzzle.query[2]
    answers = {}
    for r in an.candidates:
        out = r.apply(puzzle.query)
        if out is not None:
            answers.setdefault(out, []).append(r)
    if not answers:
        return None
    seen = q in an.fits
    if seen and len(answers) == 1:
        ((answer, rules),) = answers.items()
        return Solution(
            answer, "deduced", rule=_rule_name(rules[0]), steps={"family": "numeric", "rule": rules[0]}
        )
    ranked = ranked_guesses(puzzle, an, prior)
    answer, _, best = ranked[0]
    return Solution(
        answer,
        "guessed",
        rule=_rule_name(best),
        steps={"family": "numeric", "rule": best, "ranked": [(a, round(w, 3)) for a, w, _ in ranked[:4]]},
    )


def _rule_name(r: Rule) -> str:
    return f"{'reversed' if r.rev else 'plain'} {OP_BY_NAME[r.op].text} sign={r.sign}"


def solve(puzzle: Puzzle, time_cap: float = 2.0, deduce_only: bool = False) -> Solution | None:
    """The answer, deduced (one answer fits every decoding of the examples) or guessed (a prior-weighted
    vote); None when nothing fits. ``time_cap`` bounds the symbolic search (seconds); with ``deduce_only``
    a guess is returned as None, and the symbolic search stops as soon as the answer is open (fast: the
    mix builder keeps only deduced rows of generated puzzles)."""
    if puzzle.features.get("family", "numeric") == "numeric" and _is_numeric(puzzle.query):
        sol = solve_numeric(puzzle)
        return None if deduce_only and sol is not None and sol.status != "deduced" else sol
    return solve_symbolic(puzzle, time_cap, deduce_only)


# ---------------------------------------------------------------- numeric traces


def _world_text(rev: bool) -> str:
    return "read right to left" if rev else "read as written"


def _operands(lhs: str, rev: bool) -> tuple[str, str]:
    x, y = lhs[:2], lhs[3:]
    return (x[::-1], y[::-1]) if rev else (x, y)


def _arith_text(op: str, a: int, b: int) -> str:
    """The computation written out in small steps (columns for + and -, partial products for *)."""
    if op in ("mul", "mul1", "mulm1"):
        t, u = divmod(b, 10)
        core = f"{a} * {b} = {a} * {t * 10} + {a} * {u} = {a * t * 10} + {a * u} = {a * b}"
        extra = {"mul": "", "mul1": f"; {a * b} + 1 = {a * b + 1}", "mulm1": f"; {a * b} - 1 = {a * b - 1}"}[
            op
        ]
        return core + extra
    if op in ("add", "add1", "addm1"):
        core = f"{a} + {b} = {a + b}"
        extra = {"add": "", "add1": f"; {a + b} + 1 = {a + b + 1}", "addm1": f"; {a + b} - 1 = {a + b - 1}"}[
            op
        ]
        return core + extra
    if op == "sub":
        return f"{a} - {b} = {a - b}"
    if op == "rsub":
        return f"{b} - {a} = {b - a}"
    if op in ("absdiff", "negabs"):
        hi, lo = max(a, b), min(a, b)
        return f"larger - smaller = {hi} - {lo} = {hi - lo}" + (
            "" if op == "absdiff" else f"; negate: {lo - hi}"
        )
    if op == "mod":
        hi, lo = max(a, b), min(a, b)
        # Callers write only defined results (every traced rule gave an answer), so lo > 0 here.
        return f"{hi} mod {lo}: {hi} = {lo} * {hi // lo} + {hi % lo}, remainder {hi % lo}"
    raise KeyError(op)


def _apply_text(rule: Rule, lhs: str) -> str:
    """One line: the operands in the rule's world, the computation, and the written result."""
    x, y = _operands(lhs, rule.rev)
    if rule.op in ("cat", "rcat"):
        s = x + y if rule.op == "cat" else y + x
        body = f"join {x} and {y}" if rule.op == "cat" else f"join {y} and {x}"
        body += f" -> {s}"
        if rule.rev:
            body += f"; write right to left -> {s[::-1]}"
        return body
    v = value(rule.op, int(x), int(y))  # defined: every traced rule gave the line its answer
    body = f"a={x}, b={y}: " + _arith_text(rule.op, int(x), int(y))
    digits = str(abs(v))
    if rule.rev:
        body += f"; digits {digits} written right to left -> {digits[::-1]}"
    out = rule.apply(lhs)
    if v < 0:
        where = "before" if rule.sign.endswith("pre") else "after"
        mark = "-" if rule.sign[0] == "-" else lhs[2]
        body += f"; negative, so '{mark}' goes {where} -> {out}"
    return body


_NUMERIC_INTRO = (
    "Each operator symbol hides one operation on the two 2-digit numbers around it. Numbers may be "
    "read as written or right to left (then the result is also written right to left); a negative "
    "result is marked with a sign. The same reading holds for the whole puzzle."
)


def trace_numeric(puzzle: Puzzle, solution: Solution) -> str:
    an = analyze_numeric(puzzle)
    q = puzzle.query[2]
    chosen: Rule = solution.steps["rule"]
    lines = [_NUMERIC_INTRO, ""]
    order = [q] + [g for g in an.fits if g != q] if q in an.fits else list(an.fits)
    for g in order:
        exs = [(x, y) for x, y in puzzle.examples if x[2] == g]
        lines.append(f"Operator '{g}': " + "; ".join(f"{x} = {y}" for x, y in exs))
        for rev in (True, False):
            alive = [op.name for op in OPS]
            for x, y in exs:
                ok = [o for o in alive if any(r.apply(x) == y for r in _rules_for(o) if r.rev == rev)]
                a, b = _operands(x, rev)
                shown = []
                for o in alive:
                    r = next((r for r in _rules_for(o) if r.rev == rev and r.apply(x) == y), None)
                    r = r or next(
                        r
                        for r in _rules_for(o)
                        if r.rev == rev and r.sign == "gpre" or r.rev == rev and not r.can_be_negative()
                    )
                    shown.append(f"{OP_BY_NAME[o].text} -> {r.apply(x)} {'ok' if o in ok else 'no'}")
                lines.append(f"  {_world_text(rev)}, {x} = {y} (a={a}, b={b}): " + ", ".join(shown))
                alive = ok
                if not alive:
                    break
            verdict = ", ".join(OP_BY_NAME[o].text for o in alive) if alive else "nothing fits"
            lines.append(f"  {_world_text(rev)}: {verdict}")
    world = "; ".join(_world_text(r) for r in sorted(an.revs, reverse=True))
    lines.append("")
    lines.append(f"Reading that fits every operator: {world}.")
    if solution.status == "guessed":
        slots = query_slot_text(puzzle, an, chosen)
        lines.append(
            "Each operator fills its own slot: additive (+, +1, -1), multiplicative (*, *+1, *-1) or "
            "subtractive (-, |-|, mod); a join is additive or multiplicative"
            + (f". Here: {slots}." if slots else ".")
        )
        lines.append(
            f"Operator '{q}' never appears in the examples, so its operation is a guess: the likeliest is "
            f"{OP_BY_NAME[chosen.op].text}."
            if q not in an.fits
            else f"Several operations fit '{q}' and give different answers; the likeliest is "
            f"{OP_BY_NAME[chosen.op].text}."
        )
    else:
        lines.append(f"Operator '{q}' is {OP_BY_NAME[chosen.op].text}, {_world_text(chosen.rev)}.")
    lines.append(f"Query {puzzle.query}: {_apply_text(chosen, puzzle.query)}")
    lines.append(f"Answer: {solution.answer}")
    return "\n".join(lines)


class NotTeachable(ValueError):
    """A symbolic puzzle whose recall-and-verify trace does not reach the solver's answer within its budget:
    it gets NO trace (the search that answers it cannot be taught as reasoning); builders skip and count it."""


def trace(puzzle: Puzzle, solution: Solution) -> str:
    """Numeric: the visible rule deduction. Symbolic: the catalog recall-and-verify trace
    (``puzzles.cryptarithm``) where it reaches the search solver's answer (the solver checks it); else
    ``NotTeachable`` (the search's own decoding is never written as a trace)."""
    if solution.steps.get("family") == "numeric":
        return trace_numeric(puzzle, solution)
    from puzzles import cryptarithm

    recalled = cryptarithm.recall_trace(puzzle)
    if recalled.answer is None or recalled.answer != solution.answer:
        raise NotTeachable(f"the recall trace reaches {recalled.answer!r}, the search {solution.answer!r}")
    return recalled.reasoning


# ---------------------------------------------------------------- symbolic: glyphs stand for digits

_DIGITS = "0123456789"


@dataclasses.dataclass
class SymbolicState:
    """A partial decoding: glyph -> digit (injective), operator glyph -> op name, the world and the sign
    style (None until a negative result fixes it; "pre"/"post" and the marker character)."""

    rev: bool
    digit: dict[str, str]
    glyph: dict[str, str]  # digit -> glyph, the inverse
    ops: dict[str, str]
    sign: tuple[str, str] | None = None  # (marker char, "pre" | "post")


def _raw(op: str, rev: bool, x: str, y: str) -> tuple[str, bool] | None:
    """(result digits as written, negative?) for operand digit strings x, y as written."""
    if rev:
        x, y = x[::-1], y[::-1]
    if op in ("cat", "rcat"):
        s = x + y if op == "cat" else y + x
        return (s[::-1] if rev else s), False
    v = value(op, int(x), int(y))
    if v is None:
        return None
    s = str(abs(v))
    return (s[::-1] if rev else s), v < 0


def _bind(st: SymbolicState, glyphs: str, digits: str, new: list[str]) -> bool:
    """Extend the mapping so that ``glyphs`` read as ``digits``; records new glyphs in ``new``."""
    for c, d in zip(glyphs, digits):
        have = st.digit.get(c)
        if have is None:
            if d in st.glyph:
                return False
            st.digit[c] = d
            st.glyph[d] = c
            new.append(c)
        elif have != d:
            return False
    return True


def _unbind(st: SymbolicState, new: list[str]) -> None:
    for c in new:
        del st.glyph[st.digit.pop(c)]


def _shape(s: str) -> tuple[int, ...]:
    """Which positions hold the same character: the equality pattern an injective glyph -> digit map keeps
    (glyph string and digit string must have the same shape)."""
    first: dict[str, int] = {}
    return tuple(first.setdefault(c, len(first)) for c in s)


@functools.lru_cache(maxsize=1 << 16)
def _layout(glyphs: str) -> tuple[tuple[int, ...], tuple[tuple[int, str], ...]]:
    """A glyph string's shape and the (position, glyph) of each glyph's first occurrence."""
    firsts = tuple((i, c) for i, c in enumerate(glyphs) if glyphs.index(c) == i)
    return _shape(glyphs), firsts


_TABLES: dict[tuple[str, bool], dict[tuple, list[str]]] = {}


def _table(op: str, rev: bool) -> dict[tuple, list[str]]:
    """Every operand pair under ``op`` in one world, indexed by (negative?, shape of operands + result
    digits): value the digit strings ``x + y + result``. Built once per process (10,000 pairs, ~50 ms), so
    matching an example is a lookup of the few digit strings of its glyph shape, not a 5,040-way loop."""
    table = _TABLES.get((op, rev))
    if table is None:
        table = {}
        for a in range(100):
            for b in range(100):
                dx, dy = f"{a:02d}", f"{b:02d}"
                out = _raw(op, rev, dx, dy)
                if out is not None:
                    s = dx + dy + out[0]
                    table.setdefault((out[1], _shape(s)), []).append(s)
        _TABLES[(op, rev)] = table
    return table


_SUB: dict[tuple, dict[str, list[str]]] = {}
_NONE: list[str] = []
_KEYED = 2  # decoded positions a sub-index is keyed on (_bind checks the rest; more cost memory, not time)


def _candidates(st: SymbolicState, op: str, neg: bool, glyphs: str) -> list[str]:
    """Digit strings for ``glyphs`` (operands + result) under ``op`` with the glyphs' shape and agreeing
    with the first decoded glyphs: the shape table, sub-indexed (lazily, cached) by the digits at up to
    ``_KEYED`` decoded positions. A superset: ``_bind`` rejects the strings that clash further on."""
    shape, firsts = _layout(glyphs)
    full = (_TABLES.get((op, st.rev)) or _table(op, st.rev)).get((neg, shape))
    if not full:
        return _NONE
    digit = st.digit
    pos = tuple(i for i, c in firsts if c in digit)[:_KEYED]
    if not pos:
        return full
    want = "".join([digit[glyphs[i]] for i in pos])
    key = (op, st.rev, neg, shape, pos)
    sub = _SUB.get(key)
    if sub is None:
        if len(_SUB) > 20_000:  # bound the memory of a long-lived worker (~150 MB RSS)
            _SUB.clear()
        sub = _SUB[key] = {}
        for s in full:
            sub.setdefault("".join([s[i] for i in pos]), []).append(s)
    return sub.get(want, _NONE)


def _readings(st: SymbolicState, g: str, text: str) -> list[tuple[bool, str, tuple[str, str] | None]]:
    """The ways a result text can be read: (negative?, digit glyphs, sign style or None). A negative result
    is marked by the operator glyph itself (for "-" also a minus) before or after the digits."""
    out = [(False, text, None)]
    if g in text and g not in st.digit:
        if text[0] == g and len(text) > 1 and st.sign in (None, ("g", "pre")):
            out.append((True, text[1:], ("g", "pre")))
        if text[-1] == g and len(text) > 1 and st.sign in (None, ("g", "post")):
            out.append((True, text[:-1], ("g", "post")))
    return out


def _free_assignments(st: SymbolicState, glyphs: str):
    """Every way to give the unmapped glyphs among ``glyphs`` distinct unused digits."""
    todo = list(dict.fromkeys(c for c in glyphs if c not in st.digit))
    free = [d for d in _DIGITS if d not in st.glyph]

    def rec(i: int):
        if i == len(todo):
            yield
            return
        for d in list(free):
            if d in st.glyph:
                continue
            st.digit[todo[i]] = d
            st.glyph[d] = todo[i]
            yield from rec(i + 1)
            del st.glyph[d]
            del st.digit[todo[i]]

    yield from rec(0)


class _Timeout(Exception):
    pass


def _options(st: SymbolicState, lhs: str, rhs: str) -> list[tuple[str, str, tuple | None, list[str] | None]]:
    """Every way one example can fit the partial decoding: (op, glyphs to bind, sign style, digit strings
    for those glyphs); a join (cat / rcat) binds nothing and has None for both."""
    g, x, y = lhs[2], lhs[:2], lhs[3:]
    out = []
    for op in [st.ops[g]] if g in st.ops else _OP_NAMES:
        if op in ("cat", "rcat"):
            # Joining copies glyphs: checked on glyphs alone, binding no digits (keeps the search small).
            if rhs == _glyph_cat(op, st.rev, x, y):
                out.append((op, "", None, None))
            continue
        for neg, body, style in _readings(st, g, rhs):
            glyphs = x + y + body
            cands = _candidates(st, op, neg, glyphs)
            if cands:
                out.append((op, glyphs, style, cands))
    return out


def _search(st: SymbolicState, examples: list[tuple[str, str]], todo: tuple[int, ...], deadline: float):
    """Depth-first over examples: yields each consistent full state (the state object, mutated). The next
    example is the one with the fewest ways to fit what is decoded so far (most constrained first)."""
    if time.monotonic() > deadline:
        raise _Timeout
    if not todo:
        yield st
        return
    best = None
    for i in todo:
        opts = _options(st, *examples[i])
        size = sum(1 if c is None else len(c) for _, _, _, c in opts)
        if best is None or size < best[0]:
            best = (size, i, opts)
            if not size:
                return  # this example fits no extension of the partial decoding
    _, i, opts = best
    rest = tuple(j for j in todo if j != i)
    g = examples[i][0][2]
    for op, glyphs, style, cands in opts:
        fresh = g not in st.ops
        if fresh:
            st.ops[g] = op
        if cands is None:
            yield from _search(st, examples, rest, deadline)
        else:
            for digits in cands:
                new: list[str] = []
                if _bind(st, glyphs, digits, new):
                    old = st.sign
                    st.sign = style or old
                    yield from _search(st, examples, rest, deadline)
                    st.sign = old
                _unbind(st, new)
        if fresh:
            del st.ops[g]


def _glyph_cat(op: str, rev: bool, x: str, y: str) -> str:
    """A join written in glyphs: in the reversed world the operands come out swapped."""
    return x + y if (op == "cat") != rev else y + x


def _order(examples: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Examples sorted so each next one shares the most glyphs with those before (tighter pruning)."""
    rest = list(examples)
    seen: set[str] = set()
    out = []
    while rest:
        best = max(
            rest,
            key=lambda e: (
                len(set(e[0][:2] + e[0][3:] + e[1]) & seen) - len(set(e[0][:2] + e[0][3:]) - seen),
                len(e[1]),
            ),
        )
        rest.remove(best)
        out.append(best)
        seen |= set(best[0] + best[1])
    return out


def _encode(st: SymbolicState, q: str, out: tuple[str, bool]) -> list[str]:
    """The glyph strings a rendered query result can be written as (several when the sign style is open);
    empty when a result digit has no known glyph."""
    s, neg = out
    if any(d not in st.glyph for d in s):
        return []
    body = "".join(st.glyph[d] for d in s)
    if not neg:
        return [body]
    styles = [st.sign] if st.sign else [("g", "pre"), ("g", "post")]
    outs = []
    for marker, where in styles:
        m = q if marker == "g" else "-"
        outs.append(m + body if where == "pre" else body + m)
    return outs


@dataclasses.dataclass
class SymbolicResult:
    answers: dict[str, float]  # answer -> weighted number of consistent decodings giving it
    complete: bool  # the search finished inside its time cap
    ambiguous: bool  # some decoding left the query open (unseen operator / glyph / sign style / digit)
    example: dict | None  # one decoding giving the top answer: digit map, ops, world, sign


def _op_weight(q: str, op: str, ops: dict[str, str]) -> float:
    """How much one decoding counts for the vote: 1 when the examples fix the operator, else the prior
    (an operation another glyph already uses is rare)."""
    if q in ops:
        return 1.0
    table = GLYPH_PRIOR.get(q, OP_PRIOR)
    return (table.get(op, 0) + 1) / 100 * (0.1 if op in ops.values() else 1.0)


def analyze_symbolic(
    puzzle: Puzzle, time_cap: float = 2.0, max_solutions: int = 20000, deduce_only: bool = False
) -> SymbolicResult:
    """Every decoding that fits the examples (both worlds), and the query answers they give. With
    ``deduce_only`` the search stops (incomplete) as soon as the answer is open: two answers, or a decoding
    that leaves the query undetermined; the mix builder needs no vote among guesses."""
    deadline = time.monotonic() + time_cap
    q, qx, qy = puzzle.query[2], puzzle.query[:2], puzzle.query[3:]
    answers: dict[str, float] = {}
    first: dict[str, dict] = {}
    ambiguous = False
    complete = True
    n = 0
    examples = _order(puzzle.examples)
    try:
        for rev in (False, True):
            for st in _search(
                SymbolicState(rev, {}, {}, {}), examples, tuple(range(len(examples))), deadline
            ):
                n += 1
                if n > max_solutions:
                    raise _Timeout
                ops = [st.ops[q]] if q in st.ops else [op.name for op in OPS]
                # An operand glyph the examples never fix is tried with every free digit below (exhaustive, so
                # a single answer is still deduced); an operator they never show is only ever a guess.
                if q not in st.ops:
                    ambiguous = True
                    if deduce_only:
                        raise _Timeout
                cat_ops = [op for op in ops if op in ("cat", "rcat")]
                for op in cat_ops:
                    a = _glyph_cat(op, st.rev, qx, qy)
                    answers[a] = answers.get(a, 0) + _op_weight(q, op, st.ops)
                    first.setdefault(
                        a, {"rev": st.rev, "digit": dict(st.digit), "ops": {**st.ops, q: op}, "sign": st.sign}
                    )
                    if deduce_only and len(answers) > 1:
                        raise _Timeout
                ops = [op for op in ops if op not in cat_ops]
                if not ops:
                    continue
                for _ in _free_assignments(st, qx + qy):
                    dx = st.digit[qx[0]] + st.digit[qx[1]]
                    dy = st.digit[qy[0]] + st.digit[qy[1]]
                    for op in ops:
                        out = _raw(op, st.rev, dx, dy)
                        if out is None:
                            continue
                        encoded = _encode(st, q, out)
                        if not encoded or len(encoded) > 1:
                            ambiguous = True
                        if deduce_only and (ambiguous or len(answers.keys() | set(encoded)) > 1):
                            raise _Timeout
                        for a in encoded:
                            answers[a] = answers.get(a, 0) + _op_weight(q, op, st.ops)
                            if a not in first:
                                first[a] = {
                                    "rev": st.rev,
                                    "digit": dict(st.digit),
                                    "ops": {**st.ops, q: op},
                                    "sign": st.sign,
                                }
    except _Timeout:
        complete = False
    top = max(answers, key=answers.get) if answers else None
    return SymbolicResult(answers, complete, ambiguous, first.get(top))


def solve_symbolic(puzzle: Puzzle, time_cap: float = 2.0, deduce_only: bool = False) -> Solution | None:
    res = analyze_symbolic(puzzle, time_cap, deduce_only=deduce_only)
    if not res.answers:
        return None
    top = max(res.answers, key=res.answers.get)
    deduced = res.complete and not res.ambiguous and len(res.answers) == 1
    if deduce_only and not deduced:
        return None
    return Solution(
        top,
        "deduced" if deduced else "guessed",
        rule="symbolic",
        steps={"family": "symbolic", "decoding": res.example, "answers": len(res.answers)},
    )


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
    encode = str.maketrans(_DIGITS, "".join(digit_glyphs))

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


# ---------------------------------------------------------------- static audit of the traces

_ARITH = re.compile(r"-?\d+(?: [-+*] -?\d+)*(?: = -?\d+(?: [-+*] -?\d+)*)+")
_SIG_LINE = re.compile(r"^\s+(.{5}) = (\S*): ([A-J?=#-]+)$")
_RECALL = re.compile(r"^\s+(.{5}) = (\S*): signature (\S+),(?: recall \[(.*)\]; \d+ agree"
                     r"|( \(recalled above\), agree with the digits so far \[)(.*)\]$)")
_RECITE = re.compile(r"^\s+(.{5}) = (\S*): signature (\S+), recall its (\d+) candidates one at a time; \d+ agree")
_WORLD_LINE = re.compile(r"^\s+(read right to left|read as written), (.{5}) = (\S+) \(a=")


def _arith_ok(span: str) -> bool:
    """Every side of ``x op y = z = ...`` evaluates to the same integer (only + - * on integers)."""
    values = set()
    for side in span.split(" = "):
        tokens = side.split(" ")
        terms, sign, product = [], 1, int(tokens[0])
        for op, num in zip(tokens[1::2], tokens[2::2]):
            if op == "*":
                product *= int(num)
            else:
                terms.append(sign * product)
                sign, product = (1 if op == "+" else -1), int(num)
        values.add(sum(terms) + sign * product)
    return len(values) == 1


def _op_claims(line: str) -> bool | None:
    """A numeric trace line "world, AB?CD = R (a=.., b=..): op -> result ok|no, ...": every claimed result
    and verdict re-computed (None: not such a line)."""
    m = _WORLD_LINE.match(line)
    if m is None:
        return None
    rev, lhs, rhs = m.group(1) == "read right to left", m.group(2), m.group(3)
    seen = 0
    for op in OPS:
        for c in re.finditer(r"(?:: |, )" + re.escape(op.text) + r" -> (\S+) (ok|no)", line):
            seen += 1
            outs = {r.apply(lhs) for r in _rules_for(op.name) if r.rev == rev}
            if c.group(1) not in {str(o) for o in outs} or (c.group(2) == "ok") != (rhs in outs):
                return False
    return seen > 0


def _recall_ok(m: re.Match) -> bool:
    """A recall line: the signature is the example's, and every recalled candidate is in its catalog entry
    (all of it, in catalog order, for a drilled entry; the digit-filtered part of a long one or of an entry
    written in full above)."""
    from puzzles import cryptarithm

    lhs, rhs, sig = m.group(1), m.group(2), m.group(3)
    listed = m.group(4) if m.group(5) is None else m.group(6)
    if cryptarithm.signature(lhs, rhs) != sig:
        return False
    entry = cryptarithm.full_table().get(sig, ())
    got = cryptarithm.parse_cands(listed)
    if got is None:
        return False
    if sig in cryptarithm.catalog() and m.group(5) is None:
        return listed == cryptarithm._cands_text(entry)[1:-1]
    items = {(cryptarithm.rule_text(r), d) for r, d in entry}
    return all(t in items for t in got)


def audit(puzzle: Puzzle, reasoning: str) -> list[AuditStep]:
    """Re-derive the checkable lines of an equations trace: arithmetic (every ``x op y = z`` chain), the
    numeric op-by-op claims, signatures, recalled catalog candidates and the cryptarithm walk's lines
    (``cryptarithm.audit_walk``: bindings tried, verdicts, "N agree" counts). A line whose claim does not
    re-derive is a leap (``derived=False``); a line with no claim is kind "text"."""
    from puzzles import cryptarithm

    steps = []
    lines = reasoning.split("\n")
    walk = cryptarithm.audit_walk(puzzle, lines)  # the recall-and-verify lines, replayed
    for i, line in enumerate(lines):  # 0-based, as puzzles.audit.audit_steps keys lines
        kinds: list[tuple[str, bool]] = [walk[i]] if i in walk else []
        if (m := _RECALL.match(line)) is not None:
            kinds.append(("recall", _recall_ok(m)))
        elif (m := _RECITE.match(line)) is not None:  # a long drilled entry, recited candidate by candidate
            sig = m.group(3)
            entry = cryptarithm.catalog().get(sig)
            ok = cryptarithm.signature(m.group(1), m.group(2)) == sig and entry is not None
            kinds.append(("recall", ok and len(entry) == int(m.group(4))))
        elif (m := _SIG_LINE.match(line)) is not None:
            kinds.append(("signature", cryptarithm.signature(m.group(1), m.group(2)) == m.group(3)))
        else:
            ops = _op_claims(line)
            if ops is not None:
                kinds.append(("verify", ops))
            spans = [s for s in _ARITH.findall(line) if re.search(r" [-+*] ", s)]
            if spans:
                kinds.append(("arithmetic", all(_arith_ok(s) for s in spans)))
        if line.startswith("Decoding that fits every example"):
            kinds.append(("search", False))  # the search trace states a decoding it never derives
        if not kinds:
            steps.append(AuditStep(i, "text", True, line))
            continue
        bad = [k for k, ok in kinds if not ok]
        steps.append(AuditStep(i, bad[0] if bad else kinds[0][0], not bad, line))
    return steps
