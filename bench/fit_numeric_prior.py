"""Fit the numeric-equation guess prior (``puzzles.equations_rules.NUMERIC_PRIOR``) on real puzzles, and estimate
how well it generalises: fit on the even ids, score the odd ones, and the other way round (2-fold).

The model is the generator's structure (``equations_rules.SLOTS``): a world, a set of slots (one per operator
glyph), a glyph class per slot, a variant per slot. EM over every slot assignment consistent with a puzzle's
examples AND its answer (the query line counts as one more example), so an ambiguous glyph shares its count
among its readings instead of being dropped (dropping biases the prior towards the variants examples fix
easily, e.g. ``sub`` over ``absdiff``). A fitted prior is frequency knowledge of train_dev: it only ranks
guesses, never deduces.

    python bench/fit_numeric_prior.py [--data ../shared/data/train_dev.csv] [--iters 40]

Prints the 2-fold and in-sample share right (official metric) and the fitted prior as a Python literal.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from puzzles import equations_numeric as N
from puzzles import equations_rules as R
from puzzles.dataset import read_csv
from puzzles.metric import is_correct

DEFAULT_DATA = REPO.parent / "shared" / "data" / "train_dev.csv"
CLASSES = ("+", "-", "*", "other")


def flat_prior() -> R.SlotPrior:
    variant = {}
    for rev in (False, True):
        for s in "AMS":
            vs = [(r.op, r.sign) for r in R.ALL_RULES if r.rev == rev and s in R.SLOTS[r.op]]
            variant[(rev, s)] = {v: 1 / len(vs) for v in vs}
    return R.SlotPrior(
        rev=0.5,
        slot_sets={
            1: {"A": 1 / 3, "M": 1 / 3, "S": 1 / 3},
            2: {"AM": 1 / 3, "AS": 1 / 3, "MS": 1 / 3},
            3: {"AMS": 1.0},
        },
        glyph={s: {c: 0.25 for c in CLASSES} for s in "AMS"},
        variant=variant,
    )


def with_answer(p) -> dict[bool, dict[str, list[R.Rule]]]:
    """Each glyph's rules per world, the query line (with its answer) counted as an example."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for x, y in [*p.examples, (p.query, p.answer)]:
        groups.setdefault(x[2], []).append((x, y))
    return {
        rev: {
            g: [r for r in R.ALL_RULES if r.rev == rev and all(r.apply(x) == y for x, y in exs)]
            for g, exs in groups.items()
        }
        for rev in (False, True)
    }


def fit(puzzles, iters: int = 40, alpha: float = 0.5) -> R.SlotPrior:
    """EM; ``alpha`` is the pseudo-count every probability starts from (keeps unseen variants possible)."""
    prior = flat_prior()
    data = [with_answer(p) for p in puzzles]
    for _ in range(iters):
        c_rev = [alpha, alpha]
        c_set = {n: collections.Counter(dict.fromkeys(d, alpha)) for n, d in prior.slot_sets.items()}
        c_cls = {s: collections.Counter(dict.fromkeys(CLASSES, alpha)) for s in "AMS"}
        c_var = {k: collections.Counter(dict.fromkeys(d, alpha)) for k, d in prior.variant.items()}
        for rules in data:
            configs = N.slot_configs(rules, prior)
            z = sum(w for w, _, _ in configs)
            for w, rev, assign in configs:
                p = w / z
                c_rev[rev] += p
                c_set[len(assign)]["".join(sorted(s for _, s in assign.values()))] += p
                for g, (rule, s) in assign.items():
                    c_cls[s][R.glyph_class(g)] += p
                    c_var[(rev, s)][(rule.op, rule.sign)] += p

        def norm(c):
            return {k: round(v / sum(c.values()), 4) for k, v in c.items()}

        prior = R.SlotPrior(
            rev=round(c_rev[1] / sum(c_rev), 4),
            slot_sets={n: norm(c) for n, c in c_set.items()},
            glyph={s: norm(c) for s, c in c_cls.items()},
            variant={k: norm(c) for k, c in c_var.items()},
        )
    return prior


def right(puzzles, prior: R.SlotPrior) -> collections.Counter:
    c = collections.Counter()
    for p in puzzles:
        sol = N.solve_numeric(p, prior)
        ok = sol is not None and is_correct(sol.answer, p.answer)
        kind = "abstained" if sol is None else sol.status
        c[f"{kind}_{'right' if ok else 'wrong'}"] += 1
    return c


def prior_literal(prior: R.SlotPrior) -> str:
    """The prior as the Python source of ``NUMERIC_PRIOR`` (one dict a line)."""
    lines = ["NUMERIC_PRIOR = SlotPrior(", f"    rev={prior.rev},", "    slot_sets={"]
    lines += [f"        {n}: {d!r}," for n, d in prior.slot_sets.items()]
    lines += (
        ["    },", "    glyph={"]
        + [f"        {s!r}: {d!r}," for s, d in prior.glyph.items()]
        + ["    },", "    variant={"]
    )
    for key, d in prior.variant.items():
        lines.append(f"        {key!r}: {{")
        lines += [f"            {v!r}: {x}," for v, x in sorted(d.items(), key=lambda t: -t[1])]
        lines.append("        },")
    return "\n".join(lines + ["    },", ")"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--iters", type=int, default=40)
    args = ap.parse_args()
    if not args.data.exists():
        print(f"{args.data} is absent: the real puzzles are only in the developers' shared folder.")
        return 0
    puzzles = [
        p
        for p in read_csv(args.data, require_answer=True, skip_bad=True).puzzles
        if p.category == "equations" and p.features.get("family") == "numeric"
    ]
    halves = [[p for p in puzzles if int(p.id, 16) % 2 == k] for k in (0, 1)]
    two_fold = right(halves[1], fit(halves[0], args.iters)) + right(halves[0], fit(halves[1], args.iters))
    prior = fit(puzzles, args.iters)
    for name, c in (
        ("2-fold (fit even ids, score odd, and back)", two_fold),
        ("in-sample", right(puzzles, prior)),
    ):
        n_right = c["deduced_right"] + c["guessed_right"]
        print(
            f"{name}: {n_right}/{len(puzzles)} = {100 * n_right / len(puzzles):.1f} % right; {dict(sorted(c.items()))}"
        )
    print(prior_literal(prior))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
