"""The drill catalog's order and coverage cut, and the pure recall measurement (puzzles/recall.py)."""

from __future__ import annotations

import random
import re

import pytest

from puzzles import cryptarithm
from puzzles import recall as R
from puzzles.traces import THINK_CLOSE


def test_entries_start_with_the_word_lists_then_signatures_by_prior_mass():
    every = R.catalog_entries()
    assert [e.kind for e in every[:9]] == ["cipher"] * 9 and {e.kind for e in every[9:]} == {"cryptarithm"}
    assert len(every) - 9 == len(cryptarithm.catalog())
    priors = [e.prior for e in every[9:]]
    assert priors == sorted(priors, reverse=True) and sum(priors) == pytest.approx(1.0)


def test_coverage_keeps_the_shortest_prefix_holding_that_mass_and_limit_cuts_it():
    half = R.entries(0.5)
    crypt = [e for e in half if e.kind == "cryptarithm"]
    assert sum(e.prior for e in crypt) >= 0.5 > sum(e.prior for e in crypt[:-1])
    assert [e.key for e in half] == [e.key for e in R.catalog_entries()[: len(half)]]
    assert len(R.entries(1.0)) == len(R.catalog_entries())
    assert [e.key for e in R.entries(0.5, limit=11)] == [e.key for e in half[:11]]
    with pytest.raises(ValueError, match="coverage"):
        R.entries(0.0)


def test_a_drill_entry_is_exactly_what_the_recall_trace_recites():
    """For generated cryptarithms: every entry the trace writes in full equals that signature's drill body."""
    from puzzles import equations

    bodies = {e.key: e.body for e in R.catalog_entries() if e.kind == "cryptarithm"}
    rng, checked = random.Random(3), 0
    for _ in range(40):
        p = equations.generate(rng, {"family": "symbolic"})
        res = cryptarithm.recall_trace(p)
        for sig, listing in re.findall(r": signature (\S+), recall (\[.*?\]); \d+ agree", res.reasoning):
            if sig in bodies:
                assert bodies[sig].endswith(": " + listing), sig
                checked += 1
    assert checked >= 5


def test_exposure_order_shows_every_entry_once_a_pass():
    drilled = R.entries(1.0, limit=15)
    order = R.exposure_order(drilled, 3, seed=1)
    assert len(order) == 45
    for k in range(3):
        assert sorted(e.key for e in order[15 * k : 15 * (k + 1)]) == sorted(e.key for e in drilled)


def test_requests_spread_over_kinds_and_buckets_and_are_fixed():
    drilled = R.entries(1.0)
    reqs = R.recall_requests(drilled, 24)
    assert reqs == R.recall_requests(drilled, 24)  # a fixed sample: every eval scores the same entries
    cells = {(r["kind"], r["bucket"]) for r in reqs}
    assert {("cipher", "short"), ("cryptarithm", "short"), ("cryptarithm", "medium"),
            ("cryptarithm", "long"), ("cryptarithm", "very_long")} <= cells
    r = reqs[0]
    assert r["messages"][0]["content"].startswith(r["prompt"]) and r["max_tokens"] > len(r["expected"])


def test_score_recall_is_exact_match_of_the_entry_then_the_closed_thought():
    reqs = R.recall_requests(R.entries(1.0, limit=12), 4)
    right = [r["expected"] + "\n" + THINK_CLOSE + "\n\\boxed{3}" for r in reqs]
    outputs = [right[0], right[1][:-20], right[2].replace("\n" + THINK_CLOSE, " more\n" + THINK_CLOSE), right[3]]
    s = R.score_recall(reqs, outputs)
    assert s["n"] == 4 and s["exact"] == 0.5
    assert [rec["exact"] for rec in s["records"]] == [True, False, False, True]  # cut short; a word added
    m = R.metrics(s)
    assert m["recall/all"] == 0.5 and set(s["by_kind"]) <= {"cipher", "cryptarithm"}
    assert all(k.startswith("recall/") for k in m)
    with pytest.raises(ValueError, match="outputs"):
        R.score_recall(reqs, outputs[:2])
