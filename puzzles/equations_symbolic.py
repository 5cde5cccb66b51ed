"""Symbolic equations (every character a glyph): the exhaustive search over decodings -- world, operation per
operator glyph, injective glyph -> digit map -- so a single answer across all of them is a deduction.

Each example is matched by looking its glyph shape up in a per-operation table of all 10,000 operand pairs,
the most constrained example first: real puzzles take ~10 ms at the median, ~0.2 s at p95 (2 s cap). This
search is the CHECKER of symbolic traces, never a trace itself: ``puzzles.equations.trace`` writes the
catalog recall-and-verify trace of ``puzzles.cryptarithm`` where it reaches the search's deduced answer.
"""

from __future__ import annotations

import dataclasses
import functools
import time

from puzzles.base import Puzzle, Solution
from puzzles.equations_rules import GLYPH_PRIOR, OP_NAMES, OP_PRIOR, OPS, value

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
    for op in [st.ops[g]] if g in st.ops else OP_NAMES:
        if op in ("cat", "rcat"):
            # Joining copies glyphs: checked on glyphs alone, binding no digits (keeps the search small).
            if rhs == glyph_cat(op, st.rev, x, y):
                out.append((op, "", None, None))
            continue
        for neg, body, style in _readings(st, g, rhs):
            glyphs = x + y + body
            cands = _candidates(st, op, neg, glyphs)
            if cands:
                out.append((op, glyphs, style, cands))
    return out


def search(st: SymbolicState, examples: list[tuple[str, str]], todo: tuple[int, ...], deadline: float):
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
            yield from search(st, examples, rest, deadline)
        else:
            for digits in cands:
                new: list[str] = []
                if _bind(st, glyphs, digits, new):
                    old = st.sign
                    st.sign = style or old
                    yield from search(st, examples, rest, deadline)
                    st.sign = old
                _unbind(st, new)
        if fresh:
            del st.ops[g]


def glyph_cat(op: str, rev: bool, x: str, y: str) -> str:
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
            for st in search(SymbolicState(rev, {}, {}, {}), examples, tuple(range(len(examples))), deadline):
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
                    a = glyph_cat(op, st.rev, qx, qy)
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
