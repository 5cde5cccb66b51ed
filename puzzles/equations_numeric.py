"""Numeric equations (2-digit operands written as digits): which rules fit each operator glyph, the deduced
or prior-ranked answer (``solve_numeric``), and the visible op-by-op deduction a model is trained on
(``trace_numeric``).

Deduced where every candidate rule of the query glyph (world and sign style fixed puzzle-wide) gives one
answer; else a guess ranked by the generator's three operation slots (``equations_rules.SLOTS``) and the
prior fitted on real puzzles (``equations_rules.NUMERIC_PRIOR``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math

from puzzles.base import Puzzle, Solution
from puzzles.equations_rules import (
    ALL_RULES,
    NUMERIC_PRIOR,
    OP_BY_NAME,
    OPS,
    SIGNS,
    SLOT_TEXT,
    SLOTS,
    Rule,
    SlotPrior,
    arith_text,
    glyph_class,
    rules_for,
    value,
)


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


# ---------------------------------------------------------------- numeric traces


def _world_text(rev: bool) -> str:
    return "read right to left" if rev else "read as written"


def _operands(lhs: str, rev: bool) -> tuple[str, str]:
    x, y = lhs[:2], lhs[3:]
    return (x[::-1], y[::-1]) if rev else (x, y)



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
    body = f"a={x}, b={y}: " + arith_text(rule.op, int(x), int(y))
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
                ok = [o for o in alive if any(r.apply(x) == y for r in rules_for(o) if r.rev == rev)]
                a, b = _operands(x, rev)
                shown = []
                for o in alive:
                    r = next((r for r in rules_for(o) if r.rev == rev and r.apply(x) == y), None)
                    r = r or next(
                        r
                        for r in rules_for(o)
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

