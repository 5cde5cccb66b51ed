"""Bit manipulation puzzles: 8-bit strings, a hidden byte rule, 7-10 examples.

Bit positions are string positions: bit 0 is the leftmost character. A rule is one catalog gate applied at
every position to a few shifted or rotated copies of the input (the grammar: ``puzzles.bits_rules``).
``solve`` weighs the catalog rules that reproduce every example; ``trace`` writes the derivation a model can
redo: the edge columns and the copies read off them, the remaining copies scanned over their amounts (each
rejected amount with its conflict), the key table read off the examples, its snap to the catalog, every
example verified, the query bit by bit. ``audit`` re-derives each of those lines. Bits stay spaced, one
token each, never hex: every bit written is the operand of a per-bit step the auditor checks.
"""

from __future__ import annotations

import itertools
import random
import re
from functools import lru_cache

from puzzles import bits_rules, bits_search
from puzzles.base import AuditStep, Puzzle, PuzzleFormatError, Solution

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


def generate(rng: random.Random, difficulty: dict | None = None) -> Puzzle:
    """A rule drawn from the grammar (``puzzles.bits_rules``): a catalog gate by its real prior, its copies'
    amounts uniformly. Difficulty knobs: ``k`` (number of copies, 1-3; default: the real mix),
    ``n_examples`` (7-10, default random)."""
    difficulty = difficulty or {}
    gates = [g for g in bits_rules.CATALOG if "k" not in difficulty or len(g.kinds) == int(difficulty["k"])]
    gate = rng.choices(gates, weights=[g.weight for g in gates])[0]
    rule = bits_rules.Rule(gate, rng.choice(bits_rules.placements(gate.kinds)))
    n = int(difficulty.get("n_examples", rng.randint(7, 10)))
    xs = [format(v, "08b") for v in rng.sample(range(256), n + 1)]
    examples = [(x, rule.apply(x)) for x in xs[:n]]
    query = xs[n]
    return Puzzle(
        id=f"bits-{rng.getrandbits(40):010x}",
        category=CATEGORY,
        prompt=render(examples, query),
        examples=examples,
        query=query,
        answer=rule.apply(query),
        features={"k": len(gate.kinds), "n_examples": n, "gate": gate.name, "bases": list(rule.copies)},
    )


# ---------------------------------------------------------------- solving

DEDUCE = 0.99  # prior share of the fitting catalog rules that give the answer, at or above: "deduced"


def solve(puzzle: Puzzle, time_cap: float = 1.0) -> Solution | None:
    """The catalog rules (``puzzles.bits_rules``) that reproduce every example, weighted by their prior;
    the answer with the most weight, deduced when it holds >= DEDUCE of it, else guessed. Rows no catalog
    rule fits fall back to the open search of ``puzzles.bits_search`` and are never called deduced."""
    fit = bits_rules.fitting(puzzle.examples)
    if not fit:
        return _solve_open(puzzle, time_cap)
    mass: dict[str, float] = {}
    for r in fit:
        a = r.apply(puzzle.query)
        mass[a] = mass.get(a, 0.0) + r.prior
    best = max(mass, key=mass.get)
    share = mass[best] / sum(mass.values())
    rule = max((r for r in fit if r.apply(puzzle.query) == best), key=lambda r: r.prior)
    return Solution(
        answer=best,
        status="deduced" if share >= DEDUCE else "guessed",
        rule=f"{rule.gate.name} of " + ", ".join(bits_rules.copy_name(c) for c in rule.copies),
        steps={"bases": list(rule.copies), "gate": rule.gate.name, "share": share, "fitting": len(fit)},
    )


def _solve_open(puzzle: Puzzle, time_cap: float) -> Solution | None:
    inf = bits_search.infer(puzzle.examples, puzzle.query, time_cap=time_cap)
    if inf.answer is None:
        return None
    return Solution(
        answer=inf.answer,
        status="guessed",
        rule=" and ".join(bits_search.base_name(b) for b in inf.bases),
        steps={"bases": bits_rules.sort_copies(list(inf.bases)), "gate": None, "share": inf.posterior},
    )


# ---------------------------------------------------------------- trace
#
# Every line states one claim the auditor below re-computes from the prompt and the lines before it.

INTRO = (
    "Bits are numbered 0 to 7 from the left. Each output bit i is one gate of bit i of copies of x: "
    "x rotated left by r (bit i = x bit (i+r) mod 8), x shifted left by a (bit i = x bit i+a, 0 past bit 7), "
    "x shifted right by b (bit i = x bit i-b, 0 before bit 0)."
)
_EDGE_DEAD = {0: "right shifts", 7: "left shifts"}


def _sp(s: str) -> str:
    return " ".join(s)


def _keys_line(keys: list[str], outs: str) -> str:
    return "keys: " + " ".join(f"{k}:{o}" for k, o in zip(keys, outs))


def _column(rows: list[str], j: int) -> str:
    return "".join(r[j] for r in rows)


def _matches(col: str, xs: list[str]) -> tuple[list[int], list[int]]:
    inv = "".join("1" if c == "0" else "0" for c in col)
    return [j for j in range(8) if _column(xs, j) == col], [j for j in range(8) if _column(xs, j) == inv]


def _names(js: list[int]) -> str:
    return ", ".join(f"c{j}" for j in js) or "none"


def _read_off(c: bits_rules.Copy, edges: dict[int, tuple[list[int], list[int]]]) -> int | None:
    """The edge whose output column equals (or complements) exactly the input column copy c reads there."""
    for i, (eq, neg) in edges.items():
        p = bits_search.base_source(c, i)
        if p is not None and (eq + neg) == [p]:
            return i
    return None


def _copy_line(letter: str, c: bits_rules.Copy, edge: int | None) -> str:
    head = f"{letter} = {bits_rules.copy_name(c)}"
    if edge is None:
        return f"{head}: proposed, checked on every example below"
    return f"{head}: read off bit {edge} (its bit {edge} is x bit {bits_search.base_source(c, edge)})"


def scan_combos(kinds: tuple[str, ...], known: dict[int, bits_rules.Copy], unknown: list[int]) -> list[tuple]:
    """Every choice of amounts for the unknown copies: their kinds' amounts, same-kind copies distinct
    and the smaller first (the catalog's order)."""
    out = []
    for combo in itertools.product(*(bits_rules.AMOUNTS[kinds[j]] for j in unknown)):
        amt = {j: c[1] for j, c in known.items()} | dict(zip(unknown, combo))
        if all(amt[i] < amt[j] for i in amt for j in amt if i < j and kinds[i] == kinds[j]):
            out.append(combo)
    return out


def conflict(copies: list[bits_rules.Copy], examples: list[tuple[str, str]]) -> tuple | None:
    """The first two (example, bit) places where one key shows 0 and 1: (key, e1, i1, e2, i2), or None."""
    first: dict[str, tuple[str, int, int]] = {}
    for e, (x, y) in enumerate(examples, start=1):
        for i, key in enumerate(bits_rules.keys_of(copies, x)):
            if key not in first:
                first[key] = (y[i], e, i)
            elif first[key][0] != y[i]:
                _, e1, i1 = first[key]
                return key, e1, i1, e, i
    return None


def _conflict_text(examples: list[tuple[str, str]], w: tuple) -> str:
    key, e1, i1, e2, i2 = w
    y1, y2 = examples[e1 - 1][1][i1], examples[e2 - 1][1][i2]
    return f"key {key} gives {y1} at example {e1} bit {i1} and {y2} at example {e2} bit {i2}"


def _names_of(letters: list[str], copies: list[bits_rules.Copy]) -> str:
    return ", ".join(f"{L} = {bits_rules.copy_name(c)}" for L, c in zip(letters, copies))


def _copies_lines(puzzle: Puzzle, copies: list[bits_rules.Copy], edges: dict) -> list[str]:
    """Copies read off the edges first; then the others (one or two at a time) scanned over their amounts
    with the rest fixed, when exactly one choice leaves no key with two outputs; else the first of them is
    proposed (a hypothesis, checked on every example) and the scan goes on."""
    kinds = tuple(c[0] for c in copies)
    known = {j: c for j, c in enumerate(copies) if _read_off(c, edges) is not None}
    out = [_copy_line(LETTERS[j], copies[j], _read_off(copies[j], edges)) for j in sorted(known)]
    while len(known) < len(copies):
        unknown = [j for j in range(len(copies)) if j not in known]
        if len(unknown) <= 2:
            combos = scan_combos(kinds, known, unknown)
            trial = {}
            for combo in combos:
                full = dict(known) | {j: (kinds[j], a) for j, a in zip(unknown, combo)}
                trial[combo] = conflict([full[i] for i in range(len(copies))], puzzle.examples)
            truth = tuple(copies[j][1] for j in unknown)
            if [c for c, w in trial.items() if w is None] == [truth]:
                letters = [LETTERS[j] for j in unknown]
                its = "its" if len(unknown) == 1 else "their"
                out.append(f"Scan {', '.join(letters)} over {its} amounts, the other copies fixed:")
                for combo, w in trial.items():
                    why = "no key gives both 0 and 1" if w is None else _conflict_text(puzzle.examples, w)
                    out.append(f"{_names_of(letters, [(kinds[j], a) for j, a in zip(unknown, combo)])}: {why}")
                only = "the only amount" if len(unknown) == 1 else "the only amounts"
                out.append(f"{_names_of(letters, [copies[j] for j in unknown])}: {only} without a conflict")
                known.update({j: copies[j] for j in unknown})
                continue
        j = unknown[0]
        out.append(_copy_line(LETTERS[j], copies[j], None))
        known[j] = copies[j]
    return out


def trace(puzzle: Puzzle, solution: Solution) -> str:
    """Columns, the edge bits 0 and 7 and the copies read off them, every example's key table, the table
    snapped to the catalog, every example verified, then the query bit by bit."""
    copies = list(solution.steps["bases"])
    kinds = tuple(c[0] for c in copies)
    letters = LETTERS[: len(copies)]
    xs = [x for x, _ in puzzle.examples]
    ys = [y for _, y in puzzle.examples]
    n = len(xs)
    out = [INTRO, f"Input columns (bit j of the inputs of examples 1 to {n}):"]
    out += [f"c{j} = {_sp(_column(xs, j))}" for j in range(8)]
    edges = {}
    for i in (0, 7):
        col = _column(ys, i)
        edges[i] = _matches(col, xs)
        out.append(f"Output bit {i} ({_EDGE_DEAD[i]} are dead there): o{i} = {_sp(col)}")
        out.append(f"o{i} equals {_names(edges[i][0])}; o{i} is the complement of {_names(edges[i][1])}")
    out.append(f"Copies, kinds ({', '.join(kinds)}):")
    out += _copies_lines(puzzle, copies, edges)
    for m, (x, y) in enumerate(puzzle.examples, start=1):
        out.append(f"Example {m}: x = {_sp(x)} ; y = {_sp(y)}")
        out += [f"{L} = {_sp(bits_rules.copy_bits(c, x))}" for L, c in zip(letters, copies)]
        out.append(_keys_line(bits_rules.keys_of(copies, x), y))
    table = bits_rules.read_table(copies, puzzle.examples) or {}
    k = len(copies)
    shown = " ".join(f"{key}:{table.get(key, '?')}" for key in (format(v, f"0{k}b") for v in range(1 << k)))
    out.append(f"Key table read from the examples (no key shows both 0 and 1): {shown}")
    gates = bits_rules.gates_of(kinds)
    out.append(f"Catalog gates for kinds ({', '.join(kinds)}), Hamming distance on the seen keys:")
    out += [f"{g.name} = {g.table} ({g.formula}): distance {bits_rules.distance(g, table)}" for g in gates]
    gate = next((g for g in gates if g.name == solution.steps.get("gate")), None)
    if gate is None:  # open-search fallback: no catalog entry; the read table itself, guessed
        full = {key: table.get(key, "0") for key in (format(v, f"0{k}b") for v in range(1 << k))}
        gate = bits_rules.Gate("READ", kinds, "".join(full.values()), "the read table, unseen keys 0", 0)
        out.append(f"No catalog gate at distance 0: use the read table, unseen keys 0 = {gate.table}")
    else:
        others = [g.name for g in gates if g is not gate and bits_rules.distance(g, table) == 0]
        also = f"; also at distance 0: {', '.join(others)}, less common" if others else ""
        out.append(f"Nearest: {gate.name} = {gate.table} (distance 0{also})")
    out.append(f"Check every example with {gate.name}:")
    for m, (x, y) in enumerate(puzzle.examples, start=1):
        got = "".join(gate.out(key) for key in bits_rules.keys_of(copies, x))
        out.append(f"Example {m}: {_sp(got)} {'= y' if got == y else '!= y'}")
    q = puzzle.query
    out.append(f"Query: x = {_sp(q)}")
    out += [f"{L} = {_sp(bits_rules.copy_bits(c, q))}" for L, c in zip(letters, copies)]
    qkeys = bits_rules.keys_of(copies, q)
    answer = "".join(gate.out(key) for key in qkeys)
    out.append(_keys_line(qkeys, answer))
    out.append(f"Output: {_sp(answer)}")
    out.append(f"The answer is {answer}")
    return "\n".join(out)


# ---------------------------------------------------------------- audit
#
# Re-derives each trace line from the prompt and the lines above it, with its own integer arithmetic for the
# copies (not the trace writer's string code), so a wrong bit anywhere is a leap.

_COPY_NAME = re.compile(r"^x(?: (rotated left|shifted left|shifted right) by ([1-7]))?$")
_KIND_OF = {"rotated left": "rot", "shifted left": "shl", "shifted right": "shr"}


def _parse_copy(name: str) -> bits_rules.Copy | None:
    m = _COPY_NAME.match(name)
    if m is None:
        return None
    return ("rot", 0) if m.group(1) is None else (_KIND_OF[m.group(1)], int(m.group(2)))


@lru_cache(maxsize=65536)
def _int_copy(c: bits_rules.Copy, x: str) -> str:
    v, (kind, k) = int(x, 2), c
    if kind == "rot":
        v = ((v << k) | (v >> (8 - k))) & 255
    else:
        v = (v << k) & 255 if kind == "shl" else v >> k
    return format(v, "08b")


def _bits(s: str) -> str:
    """'0 1 1' -> '011'; anything that is not spaced bits -> ''."""
    s = s.strip()
    return s.replace(" ", "") if re.fullmatch(r"[01]( [01])*", s) else ""


class _Audit:
    """The state an auditor builds while it walks a trace: what earlier lines established."""

    def __init__(self, puzzle: Puzzle):
        self.p = puzzle
        self.xs = [x for x, _ in puzzle.examples]
        self.ys = [y for _, y in puzzle.examples]
        self.defined: dict[str, bits_rules.Copy] = {}  # letter -> copy, as the Copies lines define them
        self.scan: tuple[str, dict[int, bool], bool] | None = None  # letter, amount -> no conflict, all derived
        self.kinds: tuple[str, ...] = ()
        self.hypotheses: list[int] = []  # step indices of "proposed" copies, settled by the checks
        self.current: str | None = None  # x of the example (or query) being worked
        self.cur_y: str | None = None
        self.cur_copies: dict[str, str] = {}
        self.keys: dict[int, list[str]] = {}  # example number -> keys line
        self.example = 0
        self.read: dict[str, str] | None = None
        self.listed: dict[str, int] = {}  # gate name -> distance stated
        self.gate: bits_rules.Gate | None = None
        self.verified: set[int] = set()
        self.output: str | None = None
        self.query_out: str | None = None

    def column(self, rows: list[str], j: int) -> str:
        return "".join(r[j] for r in rows)

    def check(self, line: str) -> tuple[str, bool]:
        """(step kind, derived) of one line; one branch per line form."""
        n = len(self.xs)
        # The frequent forms first (bits of a copy, keys, scanned amounts); the forms never overlap.
        if line.startswith("keys: "):
            return "table_lookup", self._keys(line[6:].split(" "))
        if m := re.fullmatch(r"([ABC]) = ([01 ]+)", line):
            c = self.defined.get(m.group(1))
            ok = self.current is not None and c is not None and _bits(m.group(2)) == _int_copy(c, self.current)
            self.cur_copies[m.group(1)] = _bits(m.group(2))
            return "bit_op", ok
        if m := re.fullmatch(r"([ABC] = [a-z0-9 ]+(?:, [ABC] = [a-z0-9 ]+)*): the only amounts? without a conflict", line):
            return "scan_pick", self._scan_pick(self._named(m.group(1)))
        if m := re.fullmatch(r"([ABC] = [a-z0-9 ]+(?:, [ABC] = [a-z0-9 ]+)*): (no key gives both 0 and 1|key .+)", line):
            return "scan", self._scan_line(self._named(m.group(1)), m.group(2))
        if line == INTRO:
            return "statement", True
        if m := re.fullmatch(r"Input columns \(bit j of the inputs of examples 1 to (\d+)\):", line):
            return "statement", int(m.group(1)) == n
        if m := re.fullmatch(r"c([0-7]) = ([01 ]+)", line):
            return "table_lookup", _bits(m.group(2)) == self.column(self.xs, int(m.group(1)))
        if m := re.fullmatch(r"Output bit ([07]) \((right|left) shifts are dead there\): o\1 = ([01 ]+)", line):
            i = int(m.group(1))
            dead_ok = (m.group(2) == "right") == (i == 0)
            return "table_lookup", dead_ok and _bits(m.group(3)) == self.column(self.ys, i)
        if m := re.fullmatch(r"o([07]) equals (.+); o\1 is the complement of (.+)", line):
            eq, neg = _matches(self.column(self.ys, int(m.group(1))), self.xs)
            return "compare", m.group(2) == _names(eq) and m.group(3) == _names(neg)
        if m := re.fullmatch(r"Copies, kinds \(([a-z, ]+)\):", line):
            self.kinds = tuple(m.group(1).split(", "))
            return "hypothesis", any(g.kinds == self.kinds for g in bits_rules.CATALOG)
        if m := re.fullmatch(r"([ABC]) = ([a-z0-9 ]+): read off bit ([07]) \(its bit \3 is x bit ([0-7])\)", line):
            c, i, j = _parse_copy(m.group(2)), int(m.group(3)), int(m.group(4))
            ok = c is not None and self._new_copy(m.group(1), c) and bits_search.base_source(c, i) == j
            eq, neg = _matches(self.column(self.ys, i), self.xs)
            return "read_off", ok and (eq + neg) == [j]
        if m := re.fullmatch(r"([ABC]) = ([a-z0-9 ]+): proposed, checked on every example below", line):
            c = _parse_copy(m.group(2))
            return "hypothesis", c is not None and self._new_copy(m.group(1), c)
        if m := re.fullmatch(r"Scan ([ABC](?:, [ABC])*) over (?:its|their) amounts, the other copies fixed:", line):
            letters = tuple(m.group(1).split(", "))
            self.scan = (letters, {}, True)
            ok = all(LETTERS.index(L) < len(self.kinds) and L not in self.defined for L in letters)
            return "statement", ok and len(self.defined) + len(letters) == len(self.kinds)
        if m := re.fullmatch(r"Example (\d+): x = ([01 ]+) ; y = ([01 ]+)", line):
            self.example = int(m.group(1))
            ok = 1 <= self.example <= n and (_bits(m.group(2)), _bits(m.group(3))) == self.p.examples[self.example - 1]
            self.current, self.cur_y, self.cur_copies = _bits(m.group(2)), _bits(m.group(3)), {}
            return "table_lookup", ok
        if m := re.fullmatch(r"Query: x = ([01 ]+)", line):
            self.example, self.current, self.cur_y, self.cur_copies = 0, _bits(m.group(1)), None, {}
            return "table_lookup", self.current == self.p.query
        if m := re.fullmatch(r"Key table read from the examples \(no key shows both 0 and 1\): (.+)", line):
            return "collect", self._collect(m.group(1).split(" "))
        if m := re.fullmatch(r"Catalog gates for kinds \(([a-z, ]+)\), Hamming distance on the seen keys:", line):
            return "statement", tuple(m.group(1).split(", ")) == self.kinds
        if m := re.fullmatch(r"([A-Z0-9]+) = ([01]+) \((.+)\): distance (\d+)", line):
            g = next((g for g in bits_rules.gates_of(self.kinds) if g.name == m.group(1)), None)
            ok = g is not None and g.table == m.group(2) and g.formula == m.group(3) and self.read is not None
            ok = ok and bits_rules.distance(g, self.read) == int(m.group(4))
            self.listed[m.group(1)] = int(m.group(4))
            return "recall", ok
        if m := re.fullmatch(r"Nearest: ([A-Z0-9]+) = ([01]+) \(distance 0(?:; also at distance 0: (.+), less common)?\)", line):
            return "snap", self._snap(m.group(1), m.group(2), m.group(3))
        if m := re.fullmatch(r"Check every example with ([A-Z0-9]+):", line):
            return "statement", self.gate is not None and self.gate.name == m.group(1)
        if m := re.fullmatch(r"Example (\d+): ([01 ]+) (=|!=) y", line):
            e = int(m.group(1))
            ok = self.gate is not None and e in self.keys and 1 <= e <= n and m.group(3) == "="
            ok = ok and _bits(m.group(2)) == "".join(self.gate.out(k) for k in self.keys[e]) == self.ys[e - 1]
            if ok:
                self.verified.add(e)
            return "verify", ok
        if m := re.fullmatch(r"Output: ([01 ]+)", line):
            self.output = _bits(m.group(1))
            return "bit_op", self.query_out is not None and self.output == self.query_out
        if m := re.fullmatch(r"The answer is ([01]{8})", line):
            return "answer", self.output is not None and m.group(1) == self.output
        return "unknown", False

    @property
    def copies(self) -> list[bits_rules.Copy]:
        return [self.defined[L] for L in LETTERS[: len(self.kinds)] if L in self.defined]

    def _new_copy(self, letter: str, c: bits_rules.Copy) -> bool:
        j = LETTERS.index(letter)
        ok = j < len(self.kinds) and letter not in self.defined and c[0] == self.kinds[j]
        self.defined[letter] = c
        return ok

    def _named(self, text: str) -> dict[str, bits_rules.Copy | None]:
        return {part.split(" = ")[0]: _parse_copy(part.split(" = ")[1]) for part in text.split(", ")}

    def _scan_line(self, named: dict[str, bits_rules.Copy | None], claim: str) -> bool:
        if self.scan is None or tuple(named) != self.scan[0] or None in named.values():
            return False
        if any(c[0] != self.kinds[LETTERS.index(L)] for L, c in named.items()):
            return False
        trial = [named.get(L) or self.defined[L] for L in LETTERS[: len(self.kinds)]]
        keys = {e: ["".join(b) for b in zip(*(_int_copy(t, x) for t in trial))] for e, x in enumerate(self.xs, 1)}
        if claim == "no key gives both 0 and 1":
            table: dict[str, str] = {}
            ok = all(table.setdefault(k, y[i]) == y[i] for e, y in enumerate(self.ys, 1) for i, k in enumerate(keys[e]))
        else:
            m = re.fullmatch(r"key ([01]+) gives ([01]) at example (\d+) bit ([0-7]) and ([01]) at example (\d+) bit ([0-7])",
                             claim)
            ok = m is not None and m.group(2) != m.group(5)
            for bit, e, i in ((m.group(2), m.group(3), m.group(4)), (m.group(5), m.group(6), m.group(7))) if ok else ():
                e, i = int(e), int(i)
                ok = ok and e in keys and keys[e][i] == m.group(1) and self.ys[e - 1][i] == bit
        letters, found, all_ok = self.scan
        found[tuple(c[1] for c in named.values())] = claim == "no key gives both 0 and 1"
        self.scan = (letters, found, all_ok and ok)
        return ok

    def _scan_pick(self, named: dict[str, bits_rules.Copy | None]) -> bool:
        if self.scan is None or tuple(named) != self.scan[0] or None in named.values():
            return False
        letters, found, all_ok = self.scan
        known = {LETTERS.index(L): c for L, c in self.defined.items()}
        want = scan_combos(self.kinds, known, [LETTERS.index(L) for L in letters])
        self.scan = None
        defined = [self._new_copy(L, c) for L, c in named.items()]  # define every one, even after a failure
        new = all(defined)
        pick = tuple(c[1] for c in named.values())
        return new and all_ok and sorted(found) == sorted(want) and [c for c in want if found[c]] == [pick]

    def _keys(self, items: list[str]) -> bool:
        if self.current is None or len(items) != 8 or len(self.cur_copies) != len(self.copies):
            return False
        pairs = [it.split(":") for it in items]
        if any(len(pr) != 2 for pr in pairs):
            return False
        cb = [self.cur_copies[L] for L in LETTERS[: len(self.copies)]]
        if [k for k, _ in pairs] != ["".join(b[i] for b in cb) for i in range(8)]:
            return False
        outs = "".join(o for _, o in pairs)
        if self.example:  # an example: the outputs are y's bits
            self.keys[self.example] = [k for k, _ in pairs]
            return outs == self.cur_y
        if self.gate is None:  # the query: the outputs are the snapped gate's entries
            return False
        self.query_out = "".join(self.gate.out(k) for k, _ in pairs)
        return outs == self.query_out

    def _collect(self, items: list[str]) -> bool:
        table: dict[str, str] = {}
        for e, ks in self.keys.items():
            for k, bit in zip(ks, self.ys[e - 1]):
                if table.setdefault(k, bit) != bit:
                    return False
        k = len(self.copies)
        want = [f"{key}:{table.get(key, '?')}" for key in (format(v, f"0{k}b") for v in range(1 << k))]
        self.read = table
        return len(self.keys) == len(self.xs) and items == want

    def _snap(self, name: str, table: str, others: str | None) -> bool:
        gates = bits_rules.gates_of(self.kinds)
        if self.read is None or set(self.listed) != {g.name for g in gates}:
            return False  # every candidate of the catalog must have been checked above
        zero = [g.name for g in gates if bits_rules.distance(g, self.read) == 0]
        gate = next((g for g in gates if g.name == name), None)
        self.gate = gate
        stated = sorted(others.split(", ")) if others else []
        return gate is not None and gate.table == table and name in zero and stated == sorted(set(zero) - {name})


def audit(puzzle: Puzzle, reasoning: str) -> list[AuditStep]:
    """One AuditStep per line of a ``trace`` text: its step kind and whether the line re-derives from the
    prompt and the lines above it. A hypothesis (the kinds, a "proposed" copy) counts as derived only when
    every example is then verified with it; a line of any other form is an "unknown" leap. A full
    completion may be given: what follows ``</think>`` (the box) is left to ``puzzles.audit``."""
    state = _Audit(puzzle)
    steps = []
    # lines numbered from 0, as puzzles.audit indexes the reasoning (its own verdict on a line is replaced)
    for n, line in enumerate(reasoning.split("</think>")[0].strip().split("\n")):
        kind, ok = state.check(line)
        steps.append(AuditStep(line=n, kind=kind, derived=bool(ok), text=line))
        if kind == "hypothesis" and ok:
            state.hypotheses.append(len(steps) - 1)
    settled = state.verified == set(range(1, len(state.xs) + 1))
    for j in state.hypotheses:
        steps[j].derived = settled
    return steps
