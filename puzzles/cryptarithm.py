"""Cryptarithms (symbolic equations) the catalog way: recall, then verify; never search in the trace.

An example line ``!#+$# = #!$`` is normalised to its SIGNATURE: operand and result glyphs renamed A, B, C,
... in order of first appearance, the operator written ``?`` and a sign mark (the operator glyph in the
result) written ``-``: ``AB?CB=BAC``. The CATALOG maps a signature to every (rule, digits) that produces
it: rule = (operation, world, sign style) from the generator's rule space (``puzzles.equations_rules``), digits =
the digit of A, B, C, ... in order. It is built by code from that rule space (every operand pair 00..99
under every rule), never from real puzzles, and keeps only signatures with at most ``MAX_CANDIDATES``
entries (4,202 of the 4,266 signatures; the 1st place memorised 4,205): the recall drills of
``drill_rows`` teach them.

The trace (``recall_trace``):
1. writes each example's signature;
2. takes the example whose catalog entry is shortest, RECALLS its candidates (an entry of at most
   ``LIST_MAX`` written out, grouped by rule; a longer one recited one candidate at a time, likeliest rule
   first) and for each candidate in turn binds the glyphs and VERIFIES the other examples: an example whose
   operands are all bound is computed (``puzzles.equations_rules`` arithmetic) and its result glyphs checked or
   bound (every operation computed once where its operator is new); otherwise its own entry is recalled,
   written in full once and later only the part that agrees with the digits bound so far;
3. decodes the query with the surviving binding and writes the answer in glyphs; a query operator no
   example shows gets the generator's likeliest rule (``guess_rule``, status "guessed").
A puzzle whose trace cannot get there within ``TOKEN_BUDGET`` estimated tokens (or whose examples are not
in the catalog) is not trace-teachable: ``equations.trace`` raises ``NotTeachable`` and no SFT row is made;
the CPU search (``puzzles.equations_symbolic.solve_symbolic``) still answers it and checks every trace's answer.
``python bench/cryptarithm.py`` measures the coverage on the real puzzles.
"""

from __future__ import annotations

import dataclasses
import functools
import random

from puzzles.base import Puzzle
from puzzles.equations_rules import ALL_RULES, FAMILY, OP_BY_NAME, RULE_PRIOR, Rule, arith_text, rule_weight

MAX_CANDIDATES = 1000  # candidates a memorised (drilled) entry may hold: 4,202 of the 4,266 signatures
# (the 1st place memorised 4,205); entries over LIST_MAX are recited in the trace one candidate at a time
TOKEN_BUDGET = 7000  # estimated real tokens (puzzles.audit.estimate_real_tokens) the walk may write: the
# competition allows 7,680 generated tokens; the last line over budget and the query lines fit the rest
# (train_dev: p99 6,456, 6,000 gave 45.0 % coverage, 7,000 46.2 %)
LIST_MAX = 24  # a drilled entry longer than this is not written out: its candidates are tried in catalog order
JOINS = ("cat", "rcat")
FILTERED_RECALL = True  # also recall long entries where the digits bound so far leave <= MAX_CANDIDATES
LETTERS = "ABCDEFGHIJ"


def signature(lhs: str, rhs: str) -> str:
    """``AB?CD=EF``: glyphs renamed by first appearance; the operator ``?``, a sign mark in the result ``-``."""
    g = lhs[2]
    names: dict[str, str] = {}
    out = []
    for i, c in enumerate(lhs + "=" + rhs):
        if i == 2:
            out.append("?")
        elif c == "=" and i == 5:
            out.append("=")
        elif c == g and i > 5:
            out.append("-")
        else:
            out.append(names.setdefault(c, LETTERS[len(names)] if len(names) < 10 else "#"))
    return "".join(out)


def glyph_order(lhs: str, rhs: str) -> list[str]:
    """The example's digit glyphs in signature-letter order (A first)."""
    g = lhs[2]
    return list(dict.fromkeys(c for c in lhs[:2] + lhs[3:] + rhs if c != g))


def rule_text(r: Rule) -> str:
    world = "reversed" if r.rev else "plain"
    sign = "" if not r.can_be_negative() else (", sign after" if r.sign.endswith("post") else ", sign before")
    return f"{world} {OP_BY_NAME[r.op].text}{sign}"


# The rules in the order a catalog entry lists (and the trace tries) them: the generator's prior
# (``equations_rules.RULE_PRIOR``, fitted on train_dev frequencies of fixed rules), ties in ALL_RULES order.
PRIOR_ORDER = sorted(ALL_RULES, key=lambda r: -RULE_PRIOR.get((r.op, r.rev, r.sign), 0.5))


@functools.lru_cache(maxsize=1)
def catalog() -> dict[str, tuple[tuple[Rule, str], ...]]:
    """signature -> ((rule, digits of A, B, C...), ...) for every signature with at most MAX_CANDIDATES
    entries: the part of ``full_table`` a model memorises."""
    return {s: v for s, v in full_table().items() if len(v) <= MAX_CANDIDATES}


@functools.lru_cache(maxsize=1)
def full_table() -> dict[str, tuple[tuple[Rule, str], ...]]:
    """signature -> every (rule, digits of A, B, C...) producing it, over the whole rule space. Joins copy
    glyphs whatever the digits, so they enter once per signature with digits "". Deterministic: rules in
    ``PRIOR_ORDER`` (likeliest rules first, so the trace tries them first), operand pairs ascending
    (~6 s, cached)."""
    full: dict[str, dict[tuple[Rule, str], None]] = {}  # ordered sets: membership is O(1)
    for r in PRIOR_ORDER:
        for a in range(100):
            for b in range(100):
                lhs = f"{a:02d}?{b:02d}"
                rhs = r.apply(lhs)
                if rhs is None:
                    continue
                sig = signature(lhs, rhs)
                if r.op in JOINS:
                    entry = (r, "")
                else:
                    entry = (r, "".join(glyph_order(lhs, rhs)))
                full.setdefault(sig, {})[entry] = None
    return {s: tuple(v) for s, v in full.items()}


def recall(lhs: str, rhs: str) -> tuple[tuple[Rule, str], ...] | None:
    """The catalog's candidates for one example (None: the signature has too many to memorise)."""
    return catalog().get(signature(lhs, rhs))


# ---------------------------------------------------------------- the recall-and-verify walk


@dataclasses.dataclass
class Walk:
    """The trace's state: lines written, glyph -> digit binding, operator glyph -> rule, world."""

    lines: list[str]
    digit: dict[str, str]
    rules: dict[str, Rule]
    rev: bool | None = None
    budget: int = TOKEN_BUDGET
    recalled: frozenset[str] = frozenset()  # signatures whose full entry is already written above

    def spend(self, text: str) -> bool:
        self.lines.append(text)
        self.budget -= _tokens(text)
        return self.budget > 0


def _tokens(text: str) -> int:
    from puzzles.audit import estimate_real_tokens

    return estimate_real_tokens(text) + 1


def _bind(digit: dict[str, str], glyphs: list[str], digits: str) -> dict[str, str] | None:
    """The binding extended so ``glyphs`` read ``digits`` (injective), or None on a clash."""
    out = dict(digit)
    used = {d: c for c, d in out.items()}
    for c, d in zip(glyphs, digits):
        if out.get(c, d) != d or used.get(d, c) != c:
            return None
        out[c] = d
        used[d] = c
    return out


def compute(rule: Rule, lhs: str, digit: dict[str, str]) -> tuple[str, str] | None:
    """(digits-with-sign result, arithmetic text) of a fully bound example under ``rule``."""
    num = "".join(digit[c] for c in lhs[:2]) + "?" + "".join(digit[c] for c in lhs[3:])
    x, y = num[:2], num[3:]
    a, b = (x[::-1], y[::-1]) if rule.rev else (x, y)
    out = rule.apply(num)
    if out is None:
        return None
    if rule.op in JOINS:
        return out, f"join -> {out}"
    text = f"a={a}, b={b}: {arith_text(rule.op, int(a), int(b))}"
    if rule.rev:
        text += f"; written right to left -> {out.replace('?', '-')}"
    return out, text


def _check_result(out: str, rhs: str, g: str, digit: dict[str, str]) -> dict[str, str] | None:
    """Match a computed result (sign mark ``?``) against the example's glyphs; binds new result glyphs."""
    if len(out) != len(rhs):
        return None
    glyphs, digits = [], ""
    for o, c in zip(out, rhs):
        if o == "?":
            if c != g:
                return None
            continue
        if c == g:
            return None
        glyphs.append(c)
        digits += o
    return _bind(digit, glyphs, digits)


def _fits(cand: tuple[Rule, str], lhs: str, rhs: str, walk: Walk) -> dict[str, str] | None:
    """The binding after accepting one recalled candidate for an example (None: it clashes)."""
    r, digits = cand
    g = lhs[2]
    if walk.rev is not None and r.rev != walk.rev:
        return None
    if g in walk.rules and walk.rules[g] != r:
        return None
    if any(FAMILY[o.op] == FAMILY[r.op] for h, o in walk.rules.items() if h != g):
        return None
    if r.op in JOINS:
        return dict(walk.digit)
    return _bind(walk.digit, glyph_order(lhs, rhs), digits)


def _verify(walk: Walk, todo: list[tuple[str, str]]) -> Walk | None:
    """Verify the remaining examples under the walk's binding, most determined first; recall a catalog
    entry where an example is not yet computable. Returns the finished walk or None (dead end)."""
    if not todo:
        return walk
    # An example whose operator is known and operands all bound is computed, no recall needed.
    for i, (lhs, rhs) in enumerate(todo):
        g = lhs[2]
        if g in walk.rules and all(c in walk.digit for c in lhs[:2] + lhs[3:]):
            text, digit = _check_line(walk, lhs, rhs)
            if not walk.spend(text) or digit is None:
                return None
            walk.digit = digit
            return _verify(walk, todo[:i] + todo[i + 1 :])
    # An example with bound operands but an operator not met yet: every rule of the world is computed.
    for i, (lhs, rhs) in enumerate(todo):
        g = lhs[2]
        if g not in walk.rules and all(c in walk.digit for c in lhs[:2] + lhs[3:]):
            return _enumerate(walk, todo, i)
    # Else recall the example whose catalog entry leaves the fewest candidates.
    best = None
    for i, (lhs, rhs) in enumerate(todo):
        got = _recall_options(walk, lhs, rhs)
        if got is not None and (best is None or len(got[1]) < len(best[2])):
            best = (i, *got)
    if best is None:
        return None  # nothing computable and nothing recallable: not teachable
    i, cands, alive = best
    lhs, rhs = todo[i]
    if not walk.spend(_recall_line(walk, lhs, rhs, cands, alive)):
        return None
    return _branch(walk, todo, i, _recall_branches(walk, lhs, rhs, alive))


def _check_line(walk: Walk, lhs: str, rhs: str) -> tuple[str, dict[str, str] | None]:
    """(check line, binding after it; None: it does not fit) of an example with known operator and bound
    operands."""
    g = lhs[2]
    res = compute(walk.rules[g], lhs, walk.digit)
    digit = _check_result(res[0], rhs, g, walk.digit) if res else None
    return (f"  check {lhs} = {rhs}: {_decoded(lhs, walk.digit)}; {res[1] if res else 'undefined'}"
            f" -> {'fits' if digit is not None else 'does not fit'}"), digit


def _recall_options(walk: Walk, lhs: str, rhs: str) -> tuple[tuple, list] | None:
    """(recalled candidates, those that agree with the walk) of an example (None: not recallable)."""
    cands = recall(lhs, rhs)
    if cands is None and FILTERED_RECALL and (walk.digit or walk.rules):
        # A long entry, recalled only where the digits bound so far leave few candidates.
        cands = tuple(c for c in full_table()[signature(lhs, rhs)] if _fits(c, lhs, rhs, walk) is not None)
        if len(cands) > MAX_CANDIDATES:
            return None
    if cands is None:
        return None
    return cands, [c for c in cands if _fits(c, lhs, rhs, walk) is not None]


def _recall_line(walk: Walk, lhs: str, rhs: str, cands: tuple, alive: list) -> str:
    """The recall line of an example; marks its signature as written in full where it is."""
    sig = signature(lhs, rhs)
    if sig in walk.recalled:  # written in full above: only the candidates that agree now
        return f"  {lhs} = {rhs}: signature {sig} (recalled above), agree with the digits so far {cands_text(alive)}"
    if len(cands) > LIST_MAX and sig in catalog():  # a long entry is recited one candidate at a time
        return (f"  {lhs} = {rhs}: signature {sig}, recall its {len(cands)} candidates one at a time; "
                f"{len(alive)} agree with the digits so far")
    walk.recalled = walk.recalled | {sig}
    return f"  {lhs} = {rhs}: signature {sig}, recall {cands_text(cands)}; {len(alive)} agree with the digits so far"


def _recall_branches(walk: Walk, lhs: str, rhs: str, alive: list) -> list[tuple]:
    """The ``_branch`` options of a recall: each agreeing candidate's binding."""
    return [(_try_text(cand, lhs, rhs), "", _fits(cand, lhs, rhs, walk), {**walk.rules, lhs[2]: cand[0]},
             cand[0].rev) for cand in alive]


def _enumerate(walk: Walk, todo: list[tuple[str, str]], i: int) -> Walk | None:
    """Compute every rule (of the walk's world, families not used by other operators) on an example whose
    operands are bound; branch over the rules whose result fits."""
    text, options = _enumerate_line(walk, *todo[i])
    if not walk.spend(text):
        return None
    return _branch(walk, todo, i, options)


def _enumerate_line(walk: Walk, lhs: str, rhs: str) -> tuple[str, list[tuple]]:
    """(new-operator line, ``_branch`` options: the rules that fit) of an example with bound operands."""
    g = lhs[2]
    used = {FAMILY[r.op] for h, r in walk.rules.items() if h != g}
    shown, fits = [], []
    for r in PRIOR_ORDER:  # the sign variants of one operation are shown once (the one that fits, if any)
        if (walk.rev is not None and r.rev != walk.rev) or FAMILY[r.op] in used:
            continue
        res = compute(r, lhs, walk.digit)
        digit = _check_result(res[0], rhs, g, walk.digit) if res else None
        if digit is not None:
            fits.append((r, digit))
    for r in PRIOR_ORDER:
        if (walk.rev is not None and r.rev != walk.rev) or FAMILY[r.op] in used:
            continue
        fit = next((f for f, _ in fits if (f.op, f.rev) == (r.op, r.rev)), None)
        if fit not in (None, r) or (fit is None and r.sign != "gpre"):
            continue  # another sign variant of this operation stands for it
        res = compute(r, lhs, walk.digit)
        world = "" if walk.rev is not None else ("reversed " if r.rev else "plain ")
        shown.append(f"{world}{OP_BY_NAME[r.op].text} -> {res[0].replace('?', '-') if res else 'undefined'} "
                     f"{'fits' if fit else 'no'}")
    return (f"  {lhs} = {rhs}: {_decoded(lhs, walk.digit)}, operator '{g}' is new; " + ", ".join(shown),
            [(rule_text(r), f" for '{g}'", digit, {**walk.rules, g: r}, r.rev) for r, digit in fits])


def _branch(walk: Walk, todo: list[tuple[str, str]], i: int, options: list[tuple]) -> Walk | None:
    """Try each option (name, where, digits, rules, reading direction) in turn: verify the other examples
    under it; the first that verifies wins, a failed one is written down and its spent budget carried on."""
    for name, where, digit, rules, rev in options:
        trial = Walk(list(walk.lines), digit, rules, rev, walk.budget, walk.recalled)
        if not trial.spend(f"  try {name}{where}"):
            return None
        done = _verify(trial, todo[:i] + todo[i + 1 :])
        if done is not None:
            return done
        walk.budget, walk.recalled = trial.budget - _tokens(f"  {name} fails"), trial.recalled
        walk.lines = trial.lines + [f"  {name} fails"]
    return None


def _decoded(lhs: str, digit: dict[str, str]) -> str:
    return "".join(digit.get(c, c) for c in lhs[:2]) + lhs[2] + "".join(digit.get(c, c) for c in lhs[3:])


def _cand_text(cand: tuple[Rule, str]) -> str:
    r, digits = cand
    if r.op in JOINS:
        return rule_text(r)
    return f"{rule_text(r)} with " + " ".join(f"{L}={d}" for L, d in zip(LETTERS, digits))


def _try_text(cand: tuple[Rule, str], lhs: str, rhs: str) -> str:
    """One recalled candidate as the glyph binding it makes: ``plain a * b: }=2 /=0 ^=5 %=1``."""
    r, digits = cand
    if r.op in JOINS:
        return rule_text(r)
    return f"{rule_text(r)}: " + " ".join(f"{c}={d}" for c, d in zip(glyph_order(lhs, rhs), digits))


def cands_text(cands) -> str:
    """``[plain a * b: 2051 3462; reversed a then b]``: candidates grouped by rule (consecutive runs), each
    candidate the digits of A, B, C... in letter order."""
    groups: list[tuple[Rule, list[str]]] = []
    for r, digits in cands:
        if groups and groups[-1][0] == r and digits:
            groups[-1][1].append(digits)
        else:
            groups.append((r, [digits] if digits else []))
    return "[" + "; ".join(rule_text(r) + (": " + " ".join(ds) if ds else "") for r, ds in groups) + "]"


def parse_cands(text: str) -> list[tuple[str, str]] | None:
    """The (rule text, digits) items of a ``_cands_text`` listing, without its brackets (None: malformed)."""
    items = []
    for group in filter(None, text.split("; ")):
        rule, _, ds = group.partition(": ")
        if ds and not all(d.isdigit() for d in ds.split(" ")):
            return None
        items.extend((rule, d) for d in ds.split(" ")) if ds else items.append((rule, ""))
    return items


def audit_walk(puzzle: Puzzle, lines: list[str]) -> dict[int, tuple[str, bool]]:
    """Replay the recall-and-verify walk from the trace's own lines: line index -> (kind, derived) for each
    walk line. The state (bound digits, operator rules, world, entries written in full) comes only from
    earlier lines; each line is re-derived from it with the walk's own line builders: a recall line
    (its "N agree" count), a check or new-operator line (computation and verdict) must read exactly as the
    builder writes it, a "try" line must name an option of the innermost open branch and a "fails" line a
    branch tried above; the query's lines must read as ``_query_lines`` writes them from the final state. A line that does not re-derive is a leap; later lines are judged on the state the derived
    lines give (a check's binding and a recall's options are the re-computed ones)."""
    out: dict[int, tuple[str, bool]] = {}
    walk = Walk([], {}, {}, budget=10**9)
    frames: list[dict] = []  # open branch points: state before it, its options, the option now tried
    start = lines.index("Recall and verify:") + 1 if "Recall and verify:" in lines else len(lines)
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("  ")), len(lines))
    for i in range(start, end):
        line = lines[i]
        if line.startswith("  try "):
            name = line[len("  try "):]
            frame = frames[-1] if frames else None
            opt = next((o for o in frame["options"] if o[0] + o[1] == name), None) if frame else None
            out[i] = ("try", opt is not None)
            if opt is not None:
                frame["tried"] = opt[0]
                walk = Walk([], dict(opt[2]), dict(opt[3]), opt[4], 10**9, walk.recalled)
            continue
        if line.endswith(" fails"):
            name = line[2 : -len(" fails")]
            k = next((k for k in range(len(frames) - 1, -1, -1) if frames[k]["tried"] == name), None)
            out[i] = ("try", k is not None)
            if k is not None:  # the branches opened inside it are closed too
                del frames[k + 1 :]
                frames[k]["tried"] = None
                base = frames[k]["base"]
                walk = Walk([], dict(base.digit), dict(base.rules), base.rev, 10**9, walk.recalled)
            continue
        ex = next(((lhs, rhs) for lhs, rhs in puzzle.examples
                   if line.startswith((f"  {lhs} = {rhs}: ", f"  check {lhs} = {rhs}: "))), None)
        if ex is None:
            out[i] = ("verify", False)
            continue
        lhs, rhs = ex
        bound = all(c in walk.digit for c in lhs[:2] + lhs[3:])
        base = Walk([], dict(walk.digit), dict(walk.rules), walk.rev, 10**9, walk.recalled)
        if line.startswith("  check "):
            ok = lhs[2] in walk.rules and bound
            text, digit = _check_line(walk, lhs, rhs) if ok else ("", None)
            out[i] = ("verify", ok and text == line)
            if digit is not None:
                walk.digit = digit
        elif ", operator '" in line and bound and lhs[2] not in walk.rules:
            text, options = _enumerate_line(walk, lhs, rhs)
            out[i] = ("verify", text == line)
            frames.append({"base": base, "options": options, "tried": None})
        else:
            got = _recall_options(walk, lhs, rhs)
            text = _recall_line(walk, lhs, rhs, *got) if got else ""
            out[i] = ("recall", text == line)
            frames.append({"base": base, "options": _recall_branches(base, lhs, rhs, got[1]) if got else [],
                           "tried": None})
    # The query's lines (guessed rule, digits, decoding, answer) from the binding the walk ends with.
    for i, want in zip(range(end, len(lines)), _query_lines(walk, puzzle.query)[0] if end > start else []):
        out[i] = ("decode", lines[i] == want)
    return out


@dataclasses.dataclass
class RecallResult:
    answer: str | None  # None: the walk did not reach an answer (not trace-teachable)
    reasoning: str
    status: str = "deduced"  # "guessed" when the query operator never appears in the examples


def recall_trace(puzzle: Puzzle) -> RecallResult:
    """The recall-and-verify trace of a symbolic puzzle (see the module doc)."""
    lines = [INTRO, "", "Signatures:"]
    for lhs, rhs in puzzle.examples:
        lines.append(f"  {lhs} = {rhs}: {signature(lhs, rhs)}")
    lines.append("Recall and verify:")
    walk = _verify(Walk(lines, {}, {}, budget=TOKEN_BUDGET), list(puzzle.examples))
    if walk is None:
        return RecallResult(None, "\n".join(lines))
    tail, answer, status = _query_lines(walk, puzzle.query)
    return RecallResult(answer, "\n".join(walk.lines + tail), status)


def _query_lines(walk: Walk, q: str) -> tuple[list[str], str | None, str]:
    """(lines, answer, status) that decode the query with the walk's binding (answer None: it cannot)."""
    g = q[2]
    lines: list[str] = []
    rule, status = walk.rules.get(g), "deduced"
    if rule is None:  # the query's operator never appears: the generator's likeliest rule (a guess)
        rule, status = guess_rule(g, walk), "guessed"
        lines.append(f"Operator '{g}' never appears in the examples; guess the likeliest rule for it "
                     f"(same reading, an operation family no other operator uses): {rule_text(rule)}")
    missing = [c for c in q[:2] + q[3:] if c not in walk.digit]
    if missing and rule.op not in JOINS:
        return lines, None, status
    lines.append("Digits: " + ", ".join(f"{c}={d}" for c, d in sorted(walk.digit.items(), key=lambda t: t[1])))
    if rule.op in JOINS:
        x, y = q[:2], q[3:]
        answer = (x + y) if (rule.op == "cat") != rule.rev else (y + x)
        lines.append(f"Query {q}: '{g}' is {rule_text(rule)}, copying the symbols -> {answer}")
    else:
        res = compute(rule, q, walk.digit)
        if res is None:
            return lines, None, status
        out, text = res
        inverse = {d: c for c, d in walk.digit.items()}
        if any(d != "?" and d not in inverse for d in out):
            return lines, None, status
        answer = "".join(g if d == "?" else inverse[d] for d in out)
        lines.append(f"Query {q}: '{g}' is {rule_text(rule)}; {_decoded(q, walk.digit)}; {text}")
        lines.append("Back to symbols: " + " ".join(f"{d}={g if d == '?' else inverse[d]}" for d in out))
    lines.append(f"Answer: {answer}")
    return lines, answer, status


def guess_rule(g: str, walk: Walk) -> Rule:
    """The heaviest rule (``equations_rules.rule_weight``: rule prior x operator-glyph prior) in the walk's world
    whose family no other operator uses, with the sign style the other operators show."""
    used = {FAMILY[r.op] for r in walk.rules.values()}
    signs = {r.sign for r in walk.rules.values() if r.can_be_negative()}
    pool = [r for r in ALL_RULES if (walk.rev is None or r.rev == walk.rev) and FAMILY[r.op] not in used
            and (not r.can_be_negative() or not signs or r.sign in signs)]
    return max(pool, key=lambda r: rule_weight(g, r))


INTRO = (
    "Each symbol stands for one digit (different symbols, different digits); the middle symbol is the "
    "operator. Each example's signature (symbols renamed A, B, C... in order, '?' the operator, '-' a sign "
    "mark) is recalled from the catalog; candidates are verified against the other examples."
)


# ---------------------------------------------------------------- drills: teach the catalog


def drill_text(sig: str) -> tuple[str, str, str]:
    """(prompt, completion reasoning, answer: the candidate count) of one recall drill row for a signature."""
    cands = catalog()[sig]
    prompt = (
        "In Alice's Wonderland, cryptarithm equations are normalised to signatures. "
        f"Recall the catalog entry for the signature: {sig}"
    )
    body = f"Signature {sig}: {len(cands)} candidate(s): " + cands_text(cands)
    return prompt, body, str(len(cands))


def drill_rows(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """``n`` drill rows (``drill_text``'s prompt, reasoning, answer), cycling through the catalog in a seeded shuffle so every
    entry appears before any repeats."""
    sigs = sorted(catalog())
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        order = list(sigs)
        rng.shuffle(order)
        out.extend(drill_text(s) for s in order[: n - len(out)])
    return out
