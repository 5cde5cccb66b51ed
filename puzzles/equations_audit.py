"""The static audit of equations traces (``audit``, called by ``puzzles.audit`` through the category module):
re-derives their arithmetic, the numeric op-by-op claims, the signatures and recalled catalog candidates,
and the cryptarithm walk's lines (``puzzles.cryptarithm.audit_walk``).
"""

from __future__ import annotations

import re

from puzzles import cryptarithm
from puzzles.base import AuditStep, Puzzle
from puzzles.equations_rules import OPS, rules_for

_ARITH = re.compile(r"-?\d+(?: [-+*] -?\d+)*(?: = -?\d+(?: [-+*] -?\d+)*)+")
_SIG_LINE = re.compile(r"^\s+(.{5}) = (\S*): ([A-J?=#-]+)$")
_RECALL = re.compile(
    r"^\s+(.{5}) = (\S*): signature (\S+),(?: recall \[(.*)\]; \d+ agree"
    r"|( \(recalled above\), agree with the digits so far \[)(.*)\]$)"
)
_RECITE = re.compile(
    r"^\s+(.{5}) = (\S*): signature (\S+), recall its (\d+) candidates one at a time; \d+ agree"
)
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
            outs = {r.apply(lhs) for r in rules_for(op.name) if r.rev == rev}
            if c.group(1) not in {str(o) for o in outs} or (c.group(2) == "ok") != (rhs in outs):
                return False
    return seen > 0


def _recall_ok(m: re.Match) -> bool:
    """A recall line: the signature is the example's, and every recalled candidate is in its catalog entry
    (all of it, in catalog order, for a drilled entry; the digit-filtered part of a long one or of an entry
    written in full above)."""
    lhs, rhs, sig = m.group(1), m.group(2), m.group(3)
    listed = m.group(4) if m.group(5) is None else m.group(6)
    if cryptarithm.signature(lhs, rhs) != sig:
        return False
    entry = cryptarithm.full_table().get(sig, ())
    got = cryptarithm.parse_cands(listed)
    if got is None:
        return False
    if sig in cryptarithm.catalog() and m.group(5) is None:
        return listed == cryptarithm.cands_text(entry)[1:-1]
    items = {(cryptarithm.rule_text(r), d) for r, d in entry}
    return all(t in items for t in got)


def audit(puzzle: Puzzle, reasoning: str) -> list[AuditStep]:
    """Re-derive the checkable lines of an equations trace: arithmetic (every ``x op y = z`` chain), the
    numeric op-by-op claims, signatures, recalled catalog candidates and the cryptarithm walk's lines
    (``cryptarithm.audit_walk``: bindings tried, verdicts, "N agree" counts). A line whose claim does not
    re-derive is a leap (``derived=False``); a line with no claim is kind "text"."""
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
        if not kinds:
            steps.append(AuditStep(i, "text", True, line))
            continue
        bad = [k for k, ok in kinds if not ok]
        steps.append(AuditStep(i, bad[0] if bad else kinds[0][0], not bad, line))
    return steps
