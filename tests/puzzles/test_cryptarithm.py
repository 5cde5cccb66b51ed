"""The cryptarithm catalog: signatures, a catalog built from the rule space, the recall-and-verify trace."""

from __future__ import annotations

import random
import re

from puzzles import cryptarithm as C
from puzzles import equations as E
from puzzles import equations_rules as R
from puzzles.base import NotTeachable, Puzzle


def test_signature_renames_glyphs_and_marks_the_sign():
    assert C.signature("!#+$#", "#!$") == "AB?CB=BAC"
    assert C.signature("!#-$%", "-&!") == "AB?CD=-EA"  # the operator glyph in the result is a sign
    assert C.glyph_order("!#-$%", "-&!") == ["!", "#", "$", "%", "&"]


def test_catalog_entries_reproduce_their_signature():
    cat = C.catalog()
    assert 1000 < len(cat) and all(0 < len(v) <= C.MAX_CANDIDATES for v in cat.values())
    rng = random.Random(0)
    for sig in rng.sample(sorted(cat), 200):
        for rule, digits in cat[sig]:
            if rule.op in C.JOINS:
                continue
            # Rebuild the example from the letters' digits and check the rule produces the signature.
            letters = dict(zip(C.LETTERS, digits))
            lhs = "".join(letters[c] for c in sig[:2]) + "?" + "".join(letters[c] for c in sig[3:5])
            assert C.signature(lhs, rule.apply(lhs)) == sig


def _recallable(n: int) -> list[tuple[Puzzle, str]]:
    rng = random.Random(3)
    out = []
    while len(out) < n:
        p = E.generate(rng, {"family": "symbolic"})
        q = E.parse(p.prompt)
        res = C.recall_trace(q)
        if res.answer is not None:
            out.append((q, p.answer, res))
    return out


def test_recall_trace_reaches_the_generators_answer_and_audits_clean():
    found = _recallable(5)
    right = 0
    for puzzle, gold, res in found:
        right += res.answer == gold
        assert "\\boxed{" not in res.reasoning and "recall [" in res.reasoning
        assert all(s.derived for s in E.audit(puzzle, res.reasoning)), res.reasoning
    assert right >= 4


def test_a_tampered_recall_is_a_leap():
    puzzle, _, res = _recallable(1)[0]
    lines = res.reasoning.split("\n")
    i = next(i for i, line in enumerate(lines) if "recall [" in line)
    head, listing = lines[i].split("recall [", 1)
    j = next((k for k, c in enumerate(listing) if c.isdigit()), None)
    if j is None:  # a join-only entry: drop its last candidate
        listing = listing.rsplit("; ", 1)[0] + "]" + listing.split("]", 1)[1]
    else:  # one recalled digit changed
        listing = listing[:j] + str((int(listing[j]) + 1) % 10) + listing[j + 1 :]
    lines[i] = head + "recall [" + listing
    assert not all(s.derived for s in E.audit(puzzle, "\n".join(lines)))


def test_drill_rows_cover_the_catalog_before_repeating():
    rows = C.drill_rows(len(C.catalog()) + 3, seed=1)
    prompts = [p for p, *_ in rows]
    assert len(set(prompts[: len(C.catalog())])) == len(C.catalog())
    sig = prompts[0].rsplit(": ", 1)[1]
    assert rows[0][1].startswith(f"Signature {sig}: {len(C.catalog()[sig])} candidate")


def test_candidate_listing_parses_back():
    sig = next(s for s, v in C.catalog().items() if 3 <= len(v) <= C.LIST_MAX and v[0][1])
    text = C.cands_text(C.catalog()[sig])
    items = C.parse_cands(text[1:-1])
    assert items == [(C.rule_text(r), d) for r, d in C.catalog()[sig]]
    assert C.parse_cands("plain a + b: 12x4") is None


def test_a_long_entry_is_recited_and_its_count_audited():
    rng = random.Random(8)
    for _ in range(400):
        q = E.parse(E.generate(rng, {"family": "symbolic"}).prompt)
        res = C.recall_trace(q)
        if res.answer is not None and "one at a time" in res.reasoning:
            break
    else:
        raise AssertionError("no generated puzzle recites a long entry")
    assert all(s.derived for s in E.audit(q, res.reasoning))
    line = next(x for x in res.reasoning.split("\n") if "one at a time" in x)
    n = line.split("recall its ")[1].split(" ")[0]
    bad = res.reasoning.replace(line, line.replace(f"recall its {n} ", f"recall its {int(n) + 1} "))
    assert not all(s.derived for s in E.audit(q, bad))


def test_unseen_operator_is_a_prior_guess_in_the_walks_world():
    walk = C.Walk([], {}, {"+": R.Rule(True, "add")}, rev=True)
    r = C.guess_rule("*", walk)
    assert r.rev and R.FAMILY[r.op] != "add"
    assert r == max((x for x in R.ALL_RULES if x.rev and R.FAMILY[x.op] != "add"),
                    key=lambda x: R.rule_weight("*", x))


def test_no_search_trace_for_a_cryptarithm_the_recall_cannot_reach():
    from puzzles.base import Solution

    rng = random.Random(4)
    for _ in range(300):
        p = E.parse(E.generate(rng, {"family": "symbolic"}).prompt)
        if C.recall_trace(p).answer is None:
            break
    sol = Solution("??", "deduced", rule="symbolic", steps={"family": "symbolic"})
    try:
        E.trace(p, sol)
    except NotTeachable:
        return
    raise AssertionError("a symbolic trace was written without the recall walk reaching the answer")


def _walk_with(marker: str) -> tuple[Puzzle, list[str]]:
    """A generated puzzle whose recall-and-verify trace has a line containing ``marker``, and its lines."""
    rng = random.Random(5)
    for _ in range(400):
        q = E.parse(E.generate(rng, {"family": "symbolic"}).prompt)
        res = C.recall_trace(q)
        if res.answer is not None and marker in res.reasoning:
            return q, res.reasoning.split("\n")
    raise AssertionError(f"no generated trace has {marker!r}")


def _leaps(puzzle: Puzzle, lines: list[str]) -> list[tuple[str, str]]:
    return [(s.kind, s.text) for s in E.audit(puzzle, "\n".join(lines)) if not s.derived]


def test_walk_lines_are_replayed_not_taken_as_text():
    puzzle, lines = _walk_with("is new; ")
    steps = E.audit(puzzle, "\n".join(lines))
    assert not [s for s in steps if not s.derived]
    walk = [s for s in steps if s.text.startswith("  ")]
    assert walk and all(s.kind != "text" for s in walk)  # every walk line's claim was re-derived
    assert {"try", "verify", "recall"} <= {s.kind for s in walk}


def _tamper(lines: list[str], pick, change) -> list[str]:
    i = next(i for i, line in enumerate(lines) if pick(line))
    return lines[:i] + [change(lines[i])] + lines[i + 1 :]


def _bump_last_digit(text: str) -> str:
    j = max(k for k, c in enumerate(text) if c.isdigit())
    return text[:j] + str((int(text[j]) + 1) % 10) + text[j + 1 :]


def test_a_tampered_try_binding_is_a_leap():
    puzzle, lines = _walk_with("  try ")
    bad = _tamper(lines, lambda x: x.startswith("  try ") and "=" in x, _bump_last_digit)
    assert ("try", next(x for x in bad if x not in lines)) in _leaps(puzzle, bad)


def test_a_flipped_check_verdict_is_a_leap():
    puzzle, lines = _walk_with("  check ")
    bad = _tamper(lines, lambda x: x.startswith("  check ") and x.endswith(" -> fits"),
                  lambda x: x[: -len("fits")] + "does not fit")
    assert [k for k, _ in _leaps(puzzle, bad)] == ["verify"]


def test_a_flipped_new_operator_verdict_is_a_leap():
    puzzle, lines = _walk_with("is new; ")
    bad = _tamper(lines, lambda x: "is new; " in x, lambda x: x.replace(" fits", " no", 1) if " fits" in x
                  else x.replace(" no", " fits", 1))
    assert "verify" in [k for k, _ in _leaps(puzzle, bad)]


def test_a_changed_agree_count_is_a_leap():
    puzzle, lines = _walk_with(" agree with the digits so far")
    bad = _tamper(lines, lambda x: x.endswith(" agree with the digits so far"),
                  lambda x: re.sub(r"; (\d+) agree", lambda m: f"; {int(m.group(1)) + 1} agree", x))
    assert [k for k, _ in _leaps(puzzle, bad)] == ["recall"]


def test_a_tampered_query_line_is_a_leap():
    puzzle, lines = _walk_with("Back to symbols: ")
    assert all(s.kind == "decode" for s in E.audit(puzzle, "\n".join(lines)) if s.text.startswith("Digits: "))
    bad = _tamper(lines, lambda x: x.startswith("Digits: "), _bump_last_digit)
    assert [k for k, _ in _leaps(puzzle, bad)] == ["decode"]
