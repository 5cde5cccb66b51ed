import dataclasses
import random

import pytest

from puzzles import equations as E
from puzzles import equations_numeric as N
from puzzles import equations_rules as R
from puzzles import equations_symbolic as S
from puzzles.audit import estimate_real_tokens
from puzzles.base import NotTeachable, PuzzleFormatError

NUMERIC_OPS = [op.name for op in R.OPS]


def _deduced_and_right(puzzle, time_cap=1.0):
    sol = E.solve(E.parse(puzzle.prompt), time_cap=time_cap)
    if sol is None or sol.status != "deduced":
        return sol, None
    return sol, sol.answer == puzzle.answer


def test_rule_examples_from_real_layout():
    # Reversed world: 43 - 44 = -1 written back "1"... b - a = 44 - 43 = 1; 25 - 96 = -71 -> "17" + glyph.
    assert R.Rule(True, "rsub", "gpost").apply("69/52") == "17/"
    assert R.Rule(True, "mul").apply("57*67") == "0075"  # 75 * 76 = 5700, written backwards
    assert R.Rule(False, "sub", "gpre").apply("23:33") == ":10"
    assert R.Rule(False, "mulm1").apply("38-68") == "2583"
    assert R.Rule(False, "mod").apply("10!94") == "4"  # larger mod smaller
    assert R.Rule(True, "negabs", "gpost").apply("36?55") == "8?"
    assert R.Rule(True, "cat").apply("77+07") == "0777"


def test_parse_rejects_other_layouts():
    with pytest.raises(PuzzleFormatError):
        E.parse("In Alice's Wonderland, a secret bit manipulation rule transforms 8-bit binary numbers.")
    with pytest.raises(PuzzleFormatError):
        E.parse(E.HEADER + "12+34 = 46\nNow, determine the result for: 1+2")


@pytest.mark.parametrize("op", NUMERIC_OPS)
def test_numeric_each_operation_is_deduced_correctly(op):
    rng = random.Random(op)
    deduced = 0
    for _ in range(15):
        p = E.generate(
            rng, {"family": "numeric", "ops": (op,), "n_ops": 1, "n_examples": 4, "query_seen": 1.0}
        )
        sol, right = _deduced_and_right(p)
        assert sol is not None
        assert right is not False, (p.prompt, p.answer, sol)
        deduced += right is True
    assert deduced >= 8, f"{op}: only {deduced}/15 deduced"


@pytest.mark.parametrize("op", ["add", "sub", "mul", "cat", "mulm1", "negabs"])
def test_symbolic_each_operation_never_wrong(op):
    rng = random.Random(op)
    deduced = 0
    for _ in range(6):
        p = E.generate(
            rng, {"family": "symbolic", "ops": (op,), "n_ops": 1, "n_examples": 5, "query_seen": 1.0}
        )
        sol, right = _deduced_and_right(p, time_cap=0.5)
        assert right is not False, (p.prompt, p.answer, sol)
        deduced += right is True
    assert deduced >= 1, f"{op}: nothing deduced"


def test_unseen_operator_is_only_guessed():
    rng = random.Random(7)
    for family in ("numeric", "symbolic"):
        for _ in range(5):
            p = E.generate(rng, {"family": family, "n_ops": 2, "query_seen": 0.0, "n_examples": 3})
            if p.features["query_seen"]:
                continue
            sol = E.solve(E.parse(p.prompt), time_cap=0.5)
            assert sol is None or sol.status == "guessed"


def test_abstains_when_no_rule_fits():
    prompt = E.render([("12+34", "7"), ("56+78", "123456"), ("11+11", "999")], "12+12")
    assert E.solve(E.parse(prompt)) is None
    prompt = E.render([("!@+#$", "!"), ("%^+&(", "!!!!!!")], "!@+%^")
    assert E.solve(E.parse(prompt), time_cap=0.5) is None


def test_one_example_with_many_fits_is_not_deduced():
    # 12 + 12 = 24 fits a + b read as written and read right to left (21 + 21 = 42, written "24");
    # on 19+25 the two readings differ (44 against 91 + 52 = 143, written "341").
    prompt = E.render([("12+12", "24")], "19+25")
    sol = E.solve(E.parse(prompt))
    assert sol is not None and sol.status == "guessed"


def test_generate_parse_solve_round_trip():
    rng = random.Random(3)
    for _ in range(30):
        p = E.generate(rng)
        q = E.parse(p.prompt)
        assert q.examples == p.examples and q.query == p.query
        assert q.features["family"] == p.features["family"]
        assert E.render(q.examples, q.query) == p.prompt
        sol = E.solve(q, time_cap=0.3)
        if sol is not None and sol.status == "deduced":
            assert sol.answer == p.answer, (p.prompt, p.answer, sol)


def test_trace_ends_with_answer_and_is_short():
    rng = random.Random(11)
    for family in ("numeric", "symbolic"):
        n = 0
        for _ in range(20):
            p = E.generate(rng, {"family": family, "query_seen": 1.0, "n_examples": 5})
            sol = E.solve(E.parse(p.prompt), time_cap=0.5)
            if sol is None or sol.status != "deduced":
                continue
            try:
                text = E.trace(p, sol)
            except NotTeachable:
                assert family == "symbolic"  # no recall trace reaches it: no trace at all (never the search)
                continue
            assert text.rstrip().endswith(sol.answer)
            assert estimate_real_tokens(text) < 7680  # the competition's generation budget
            n += 1
        assert n >= 2


def _rows(train_dev_rows, family):
    out = []
    for r in train_dev_rows:
        if "transformation rules is applied to equations" in r["prompt"][:200]:
            p = E.parse(r["prompt"])
            if p.features["family"] == family:
                out.append((p, r["answer"]))
    return out


def test_real_numeric_rows_zero_wrong_deduced(train_dev_rows):
    rows = _rows(train_dev_rows, "numeric")
    right = 0
    for p, answer in rows:
        sol = E.solve(p)
        if sol is not None and sol.status == "deduced":
            assert sol.answer == answer, (p.prompt, answer, sol)
            right += 1
    assert right >= 0.6 * len(rows)


def test_real_symbolic_rows_zero_wrong_deduced(train_dev_rows):
    rows = _rows(train_dev_rows, "symbolic")[:150]
    right = 0
    for p, answer in rows:
        sol = E.solve(p, time_cap=1.0)
        if sol is not None and sol.status == "deduced":
            assert sol.answer == answer, (p.prompt, answer, sol)
            right += 1
    # The indexed search finishes ~95 % of real puzzles inside the cap; ~44 % of them pin one answer down.
    assert right >= 0.35 * len(rows)


def _known_symbolic(rng: random.Random, n_examples: int):
    """A symbolic puzzle built here from a known decoding (not by E.generate): digit map, ops, world."""
    rev = rng.random() < 0.6
    ops = dict(zip("+*", rng.sample(["add", "sub", "mul", "mulm1", "add1", "negabs", "mod"], 2)))
    glyphs = rng.sample([c for c in E.GLYPHS if c not in "+-*"], 10)
    digit = dict(zip(glyphs, "0123456789"))
    encode = str.maketrans("0123456789", "".join(glyphs))
    examples = []
    while len(examples) < n_examples:
        g = rng.choice("+*")
        lhs = f"{rng.randint(10, 99)}{g}{rng.randint(10, 99)}"
        out = R.Rule(rev, ops[g], "gpre").apply(lhs)
        if out is not None:
            examples.append((lhs.translate(encode), out.translate(encode)))
    return examples, digit, ops, rev


def test_symbolic_search_is_sound_and_complete():
    # Every decoding the indexed search yields reproduces every example (sound), and the decoding the
    # puzzle was built from is among them (complete: the shape index drops no candidate).
    rng = random.Random(5)
    for _ in range(40):
        examples, digit, ops, rev = _known_symbolic(rng, rng.randint(2, 4))
        found, truth_found = 0, False
        for st in S.search(S.SymbolicState(rev, {}, {}, {}), examples, tuple(range(len(examples))), 1e18):
            found += 1
            for lhs, rhs in examples:
                op = st.ops[lhs[2]]
                if op in ("cat", "rcat"):
                    assert rhs == S.glyph_cat(op, rev, lhs[:2], lhs[3:])
                    continue
                num = "".join(st.digit.get(c, c) for c in lhs)
                sign = "gpre" if st.sign is None else "g" + st.sign[1]
                want = "".join(st.digit.get(c, c) for c in rhs)
                assert R.Rule(rev, op, sign).apply(num) == want, (examples, st)
            used = {g for lhs, _ in examples for g in lhs[2]}
            truth_found |= all(st.digit.get(c, d) == d for c, d in digit.items()) and all(
                st.ops[g] == ops[g] for g in used
            )
        assert found and truth_found, examples


def test_deduce_only_keeps_exactly_the_deduced_answers():
    # The builder's fast mode: the same puzzles deduced, the same answers; guesses become None.
    rng = random.Random(9)
    deduced = 0
    for _ in range(150):
        p = E.parse(E.generate(rng, {"family": rng.choice(["symbolic", "symbolic", "numeric"])}).prompt)
        full, fast = E.solve(p), E.solve(p, deduce_only=True)
        if full is not None and full.status == "deduced":
            assert fast is not None and fast.status == "deduced" and fast.answer == full.answer
            deduced += 1
        else:
            assert fast is None, (p.prompt, full, fast)
    assert deduced >= 50


# ---------------------------------------------------------------- rule prior, families, audit


def test_unseen_operator_guess_avoids_families_other_glyphs_use():
    from puzzles.equations import render
    from puzzles.equations_rules import FAMILY, Rule

    rule = Rule(True, "add")
    exs = [(lhs, rule.apply(lhs)) for lhs in ("12+34", "56+21", "40+33")]
    p = E.parse(render(exs, "23*45"))
    sol = E.solve(p)
    assert sol.status == "guessed" and FAMILY[sol.steps["rule"].op] != "add"


def _numeric_deduced(n: int):
    rng = random.Random(5)
    out = []
    while len(out) < n:
        g = E.generate(rng, {"family": "numeric"})
        p = E.parse(g.prompt)
        sol = E.solve(p)
        if sol and sol.status == "deduced":
            out.append((p, E.trace(p, sol)))
    return out


def test_numeric_traces_audit_clean_and_a_tampered_digit_is_a_leap():
    for p, text in _numeric_deduced(20):
        steps = E.audit(p, text)
        assert all(s.derived for s in steps), [s.text for s in steps if not s.derived]
        assert {"verify", "arithmetic"} <= {s.kind for s in steps}
    p, text = _numeric_deduced(1)[0]
    line = next(s for s in E.audit(p, text) if s.kind == "arithmetic")
    tampered = line.text.replace(" = ", " = 1", 1)
    steps = E.audit(p, text.replace(line.text, tampered))
    assert [s.line for s in steps if not s.derived] == [line.line]


def test_real_deduced_traces_have_no_leaps(train_dev_rows):
    rows = [r for r in train_dev_rows if "transformation rules is applied to equations" in r["prompt"][:200]]
    checked = 0
    for r in rows:
        p = E.parse(r["prompt"])
        if p.features["family"] != "numeric":
            continue  # symbolic recall traces: tests/puzzles/test_cryptarithm.py (the search's are leaps)
        sol = E.solve(p)
        if sol is None or sol.status != "deduced":
            continue
        text = E.trace(p, sol)
        checked += 1
        assert all(s.derived for s in E.audit(p, text)), r["id"]
    assert checked >= 250


# ---------------------------------------------------------------- numeric guesses: operation slots


def _numeric(examples_rules: list[tuple[str, R.Rule]], query: str):
    return E.parse(E.render([(lhs, rule.apply(lhs)) for lhs, rule in examples_rules], query))


def test_slot_prior_covers_every_rule():
    for rule in R.ALL_RULES:
        for slot in R.SLOTS[rule.op]:
            assert R.NUMERIC_PRIOR.variant[(rule.rev, slot)][(rule.op, rule.sign)] > 0, rule
    for slot in "AMS":
        assert sum(R.NUMERIC_PRIOR.glyph[slot].values()) == pytest.approx(1, abs=1e-3)


def test_unseen_operator_takes_the_slot_the_others_leave():
    add, mul = R.Rule(True, "add"), R.Rule(True, "mul")
    p = _numeric([("12+34", add), ("56+21", add), ("40*33", mul), ("17*52", mul)], "23?45")
    sol = E.solve(p)
    assert sol.status == "guessed" and R.SLOTS[sol.steps["rule"].op] == "S"
    # Two joins fill the additive and the multiplicative slot: a third operator is subtractive.
    cat = R.Rule(True, "cat")
    p = _numeric([("12+34", cat), ("56+21", cat), ("40*33", cat), ("17*52", cat)], "23?45")
    assert R.SLOTS[E.solve(p).steps["rule"].op] == "S"


def test_guess_shares_are_a_distribution_best_first():
    p = _numeric([("12-34", R.Rule(True, "sub")), ("56*21", R.Rule(True, "mul"))], "83-36")
    ranked = N.ranked_guesses(p, N.analyze_numeric(p))
    shares = [w for _, w, _ in ranked]
    assert shares == sorted(shares, reverse=True) and sum(shares) == pytest.approx(1)
    assert all(rule.apply(p.query) == answer for answer, _, rule in ranked)


def test_glyphs_the_slots_cannot_hold_still_get_a_guess():
    # Four operator glyphs (or two additive ones, as a synthetic puzzle may have): no slot assignment fits,
    # so the query's candidates are weighed alone.
    add = R.Rule(False, "add")
    p = _numeric([("12+34", add), ("56#21", add), ("40&33", add), ("17@52", add)], "23?45")
    sol = E.solve(p)
    assert sol is not None and sol.status == "guessed" and sol.steps["ranked"]


def _fit_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "fit_numeric_prior.py"
    spec = importlib.util.spec_from_file_location("fit_numeric_prior", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prior_fit_recovers_the_world_share_and_prints_valid_source():
    fit = _fit_module()
    rng = random.Random(3)
    puzzles = []
    for i in range(60):
        rev = i % 4 != 0  # 75 % reversed
        ops = rng.choice([("add", "mul"), ("add", "sub"), ("mul", "mod"), ("cat", "sub")])
        g = E.generate(rng, {"family": "numeric", "ops": ops, "n_ops": 2, "rev": rev, "query_seen": 1.0})
        puzzles.append(dataclasses.replace(E.parse(g.prompt), answer=g.answer))
    prior = fit.fit(puzzles, iters=15)
    assert prior.rev == pytest.approx(0.75, abs=0.08)
    s_rev = prior.variant[(True, "S")]  # drawn: sub and mod only; absdiff and negabs merely fit some lines
    sub = s_rev[("sub", "gpre")] + s_rev[("sub", "gpost")]
    assert sub > s_rev[("mod", "gpre")] > s_rev[("absdiff", "gpre")] and sub > 4 * s_rev[("negabs", "gpre")]
    source = fit.prior_literal(prior)
    assert eval(source.split("=", 1)[1], {"SlotPrior": R.SlotPrior}) == prior


def test_every_real_numeric_puzzle_fits_the_slots_and_the_prior_is_the_fitted_one(train_dev_rows):
    fit = _fit_module()
    puzzles = []
    for r in train_dev_rows:
        if "transformation rules is applied to equations" in r["prompt"][:200]:
            p = E.parse(r["prompt"])
            if p.features["family"] == "numeric":
                puzzles.append(dataclasses.replace(p, id=r["id"], answer=r["answer"]))
    assert all(N.slot_configs(fit.with_answer(p), R.NUMERIC_PRIOR) for p in puzzles)
    refit = fit.fit(puzzles, iters=40)
    assert refit.rev == pytest.approx(R.NUMERIC_PRIOR.rev, abs=0.01)
    for key, table in refit.variant.items():
        for v, x in table.items():
            assert x == pytest.approx(R.NUMERIC_PRIOR.variant[key][v], abs=0.01), (key, v)


def test_guessed_trace_names_the_slots_and_ends_with_the_guess():
    add, mul = R.Rule(True, "add"), R.Rule(True, "mul")
    p = _numeric([("12+34", add), ("56+21", add), ("40*33", mul), ("17*52", mul)], "23?45")
    sol = E.solve(p)
    text = E.trace(p, sol)
    assert "'+' additive, '*' multiplicative; '?' subtractive" in text
    assert "never appears in the examples, so its operation is a guess" in text
    assert text.endswith(f"Answer: {sol.answer}")
