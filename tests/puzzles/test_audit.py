import json
import random

import pytest
from click.testing import CliRunner

from puzzles import audit, categories
from puzzles.analyze import solve_traced
from puzzles.cli import data
from puzzles.traces import completion


def _row(category, seed=1):
    """The trace row of the first generated puzzle from ``seed`` on that the solver deduces."""
    for s in range(seed, seed + 50):
        _, row = solve_traced(categories.generate(category, random.Random(s)))
        if row is not None:
            return row
    raise AssertionError(f"no deduced {category} puzzle")


@pytest.mark.parametrize(("line", "ok"), [
    ("10.08 * 0.6636 = 10 * 0.6636 + 0.08 * 0.6636 = 6.636 + 0.053088 = 6.689088 -> 6.69", True),
    ("10.08 * 0.6636 = 6.8", False),
    ("6.69 / 10.08 = 0.6637", True),  # the right side's precision
    ("6.69 / 10.08 = 0.6645", False),
    ("6.689088 -> 6.68", False),
    ("a = 3 + 4 = 7", True),
])
def test_arithmetic_claims_are_recomputed(line, ok):
    assert all(audit.arithmetic_claims(line)) is ok


def test_no_claim_is_none():
    assert audit.arithmetic_claims("Step 1: build the table.") is None


def test_unreferenced_numbers_are_found():
    lines = ["x = 12.5 * 2 = 25", "25 + 99 = 124"]
    assert audit.unreferenced("the value 12.5", lines) == [(1, "99")]


def test_a_rederived_cryptarithm_query_is_referenced_and_a_tampered_one_is_not():
    """The query line's operands ("91-81") are its symbols read through the stated digits: the cryptarithm
    audit re-derives the line, so they count as referenced; a line it cannot re-derive gets no such pass."""
    for s in range(1, 400):
        _, row = solve_traced(categories.generate("equations", random.Random(s)))
        if row is not None and "Recall and verify:" in row["completion"]:
            break
    rec = audit.audit_row(row)
    assert rec["metric_ok"] and not rec["leaps"] and not rec["unreferenced"]
    query = next(line for line in audit.reasoning_of(row["completion"]).split("\n") if line.startswith("Query "))
    operands = query.split("; ")[1]
    tampered = operands.replace(operands[0], str((int(operands[0]) + 1) % 10), 1)
    bad = dict(row, completion=row["completion"].replace(f"; {operands};", f"; {tampered};"))
    rec = audit.audit_row(bad)
    assert [k for k, *_ in rec["leaps"]] == ["decode"] and rec["unreferenced"]


@pytest.mark.parametrize("category", ["cipher", "numeral_system", "unit_conversion", "gravity", "bit_manipulation"])
def test_solver_traces_of_audited_categories_have_no_wrong_steps(category):
    rec = audit.audit_row(_row(category))
    assert rec["metric_ok"] and rec["steps"] > 3
    allowed = () if category == "cipher" else ("recall",)  # cipher's word recall is re-derived from WORDS
    assert all(kind in allowed for kind, *_ in rec["leaps"]), rec["leaps"]


@pytest.mark.parametrize(("category", "old", "new"), [
    ("unit_conversion", "given ", "given 1"),  # a "given" that is not the example's output
    ("numeral_system", "- units: ", "- units: 9 -> 9 = IX\n- units: "),
    ("cipher", "Table: ", "Table: q->q, "),
    ("gravity", "fits every example", "fits every example"),
])
def test_a_tampered_line_is_a_leap(category, old, new):
    row = _row(category)
    reasoning = audit.reasoning_of(row["completion"])
    if category == "gravity":  # change g's stated value
        import re

        reasoning = re.sub(r"g = (\d+)\.(\d)", lambda m: f"g = {int(m.group(1)) + 3}.{m.group(2)}", reasoning, 1)
    else:
        reasoning = reasoning.replace(old, new, 1)
    row["completion"] = completion(reasoning, row["answer"])
    assert audit.audit_row(row)["leaps"]


# Real-layout puzzles whose feasible interval ENDS on the shortest decimal (0.75, 5.216): at that end one
# example's product sits exactly on a half cent (5.9 * 0.75 = 4.425), where half-up rounding says 4.43 and
# the generator (a binary float round) said 4.42. The old traces stated that end and "matches".
TIES = {
    "unit_conversion": (("In Alice's Wonderland, a secret unit conversion is applied to measurements. For example:\n"
                        "5.9 m becomes 4.42\n26.32 m becomes 19.74\n34.55 m becomes 25.91\n33.73 m becomes 25.30\n"
                        "20.74 m becomes 15.55\nNow, convert the following measurement: 33.34 m"), "25.00", "factor",
                        "0.75"),
    "gravity": (("In Alice's Wonderland, the gravitational constant has been secretly changed. Here are some example "
                "observations:\nFor t = 2.52s, distance = 16.56 m\nFor t = 1.86s, distance = 9.02 m\n"
                "For t = 1.25s, distance = 4.07 m\nFor t = 1.42s, distance = 5.26 m\nFor t = 3.14s, distance = "
                "25.71 m\nNow, determine the falling distance for t = 2.02s given d = 0.5*g*t^2."), "10.64", "g",
                "5.216"),
}


@pytest.mark.parametrize("category", sorted(TIES))
def test_fitted_constants_stay_off_half_cent_ties_and_the_audit_catches_one(category):
    from decimal import Decimal

    prompt, gold, key, tie = TIES[category]
    mod, puzzle = categories.module(category), categories.parse(prompt)
    sol = mod.solve(puzzle)
    assert sol.answer == gold and sol.steps[key] != Decimal(tie)  # strictly inside the interval now
    row = {"id": "t", "category": category, "prompt": prompt, "answer": gold,
           "completion": completion(mod.trace(puzzle, sol), gold)}
    assert audit.audit_row(row)["leaps"] == []
    sol.steps[key] = Decimal(tie)  # what the old solver stated
    row["completion"] = completion(mod.trace(puzzle, sol), gold)
    kinds = {kind for kind, *_ in audit.audit_row(row)["leaps"]}
    assert kinds == {"choice", "verify"} | ({"rounding"} if category == "unit_conversion" else set())  # 33.34 * 0.75 = 25.005


def test_a_tie_is_a_leap_even_when_half_up_rounding_agrees():
    prompt = "In Alice's Wonderland, a secret unit conversion is applied to measurements. For example:\n" \
             "3.0 m becomes 4.42\n10.0 m becomes 14.72\nNow, convert the following measurement: 10.0 m"
    # f = 1.4725: 3 * f = 4.4175 (fine), 10 * f = 14.725 -> 14.73 under half-up, not the given 14.72; and
    # f = 1.4715: 10 * f = 14.715 -> 14.72 under half-up, yet a tie that another convention rounds to 14.71
    steps = audit.fit_steps(["f = 1.4715 fits every example after rounding. Check:",
                             "10.0 * 1.4715 = 14.715 -> 14.72, given 14.72, matches."],
                            categories.parse(prompt).examples, lambda f, x: x * f)
    assert [(s.kind, s.derived) for s in steps] == [("choice", False), ("verify", False)]


def test_metric_failure_is_counted(tmp_path):
    row = _row("numeral_system")
    bad = dict(row, completion=row["completion"] + " \\boxed{-1}", id="bad")
    path = tmp_path / "sft.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (row, bad)) + "\n")
    s = audit.audit_file(path)
    e = s["categories"]["numeral_system"]
    assert e["rows"] == 2 and e["metric_fail"] == 1 and e["examples"][0]["id"] == "bad"
    assert e["est_tokens"]["max"] > 0


def test_cli_writes_json_and_png_and_names_the_bad_row(tmp_path):
    rows = [_row(c, s) for c in ("cipher", "gravity") for s in (1, 60)]
    path = tmp_path / "sft.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    r = CliRunner().invoke(data, ["audit", str(path), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    got = json.loads((tmp_path / "rep" / "audit.json").read_text())
    assert got["categories"]["all"]["rows"] == 4 and (tmp_path / "rep" / "audit.png").stat().st_size > 0
    broken = dict(rows[0], completion="no think close here")
    path.write_text("\n".join(json.dumps(r) for r in (rows[1], broken)) + "\n")
    r = CliRunner().invoke(data, ["audit", str(path), "--out", str(tmp_path / "rep2")])
    assert r.exit_code != 0 and "row 2" in r.output and str(path) in r.output
    assert not (tmp_path / "rep2").exists()


def test_an_interval_end_a_last_digit_off_is_no_way_onto_a_tie():
    # hi = 24.115 / 26.5 computes as 0.91000...01 (28 digits), so 0.91 looked inside; 26.5 * 0.91 = 24.115
    prompt = ("In Alice's Wonderland, a secret unit conversion is applied to measurements. For example:\n"
              "26.5 m becomes 24.11\n18.46 m becomes 16.80\n46.62 m becomes 42.42\n31.47 m becomes 28.64\n"
              "Now, convert the following measurement: 49.89 m")
    from puzzles import units

    puzzle = categories.parse(prompt)
    sol = units.solve(puzzle)
    assert sol.steps["hi"] > sol.steps["factor"] and str(sol.steps["factor"]) != "0.91"
    row = {"id": "t", "category": "unit_conversion", "prompt": prompt, "answer": sol.answer,
           "completion": completion(units.trace(puzzle, sol), sol.answer)}
    assert audit.audit_row(row)["leaps"] == []


def test_a_tower_of_exponents_is_no_claim_and_does_not_hang():
    """'9^9^9' is a 369-million-digit integer in Python's ints: the audit hung on model outputs holding it (in C,
    where no signal interrupts it: hence a child process with a timeout)."""
    import subprocess
    import sys

    code = ("from puzzles.audit import arithmetic_claims as a; "
            "print(a('9^9^9 = 1'), a('x: 99^99^99^99 = 2, 2^10 = 1024'), a('(' * 10000 + '1' + ')' * 10000 + ' = 1'))")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    except subprocess.TimeoutExpired:
        pytest.fail("arithmetic_claims hung on an exponent tower")
    assert out.stdout.split() == ["None", "[True]", "None"]
