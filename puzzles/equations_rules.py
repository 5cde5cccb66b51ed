"""The equations' rule space and priors: the operations a glyph can hide, how a rule renders its result in
a world (plain or reversed) with a sign style, the priors fitted on real puzzles that rank guesses, and
``arith_text``, an operation's computation written the way every trace shows it.

Shared by the numeric solver (``puzzles.equations_numeric``), the symbolic search
(``puzzles.equations_symbolic``), the cryptarithm catalog (``puzzles.cryptarithm``) and the generator
(``puzzles.equations``).
"""

from __future__ import annotations

import dataclasses


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
OP_NAMES = [op.name for op in OPS]
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



def rules_for(op: str) -> list[Rule]:
    signs = SIGNS if Rule(False, op).can_be_negative() else ("gpre",)
    return [Rule(rev, op, sign) for rev in (False, True) for sign in signs]


ALL_RULES = [rule for op in OPS for rule in rules_for(op.name)]

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


def arith_text(op: str, a: int, b: int) -> str:
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

