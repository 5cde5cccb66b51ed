"""Cryptarithm TRACE-TEACHABLE coverage on the real puzzles: the share of symbolic equations whose
recall-and-verify trace (``puzzles.cryptarithm.recall_trace``) reaches the gold answer (official metric)
within its token budget, split by what the CPU search (the checker) says: deduced / guessed / abstained.
Also the estimated real tokens (``puzzles.traces.estimate_real_tokens``) of the right traces.

    python bench/cryptarithm.py [--data ../shared/data/train_dev.csv] [--limit N]

Exits 0 with a note when the real data is absent; 1 when a trace of a search-DEDUCED puzzle reaches a
wrong answer (it would be trained).
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from puzzles import cryptarithm, equations
from puzzles.dataset import read_csv
from puzzles.metric import is_correct
from puzzles.traces import estimate_real_tokens

DEFAULT_DATA = REPO.parent / "shared" / "data" / "train_dev.csv"


def real_cryptarithms(data: Path, limit: int | None) -> list | None:
    """The symbolic equations (cryptarithms) of a real puzzle CSV, or None (said) where it is absent."""
    if not data.exists():
        print(f"{data} is absent: the real puzzles are only in the developers' shared folder.")
        return None
    return [p for p in read_csv(data, require_answer=True, skip_bad=True).puzzles
            if p.category == "equations" and p.features.get("family") == "symbolic"][:limit]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    puzzles = real_cryptarithms(args.data, args.limit)
    if puzzles is None:
        return 0
    t0 = time.time()
    cryptarithm.full_table()
    counts: collections.Counter = collections.Counter()
    tokens = []
    for p in puzzles:
        sol = equations.solve(p)
        search = sol.status if sol else "abstained"
        res = cryptarithm.recall_trace(p)
        trace = "none" if res.answer is None else ("right" if is_correct(res.answer, p.answer) else "wrong")
        counts[(search, trace)] += 1
        if trace == "right":
            tokens.append(estimate_real_tokens(res.reasoning))
    tokens.sort()
    n, right = len(puzzles), sum(v for (_, t), v in counts.items() if t == "right")
    print(f"cryptarithms: {n}, {time.time() - t0:.0f} s; catalog {len(cryptarithm.catalog())} signatures, "
          f"{sum(len(v) for v in cryptarithm.catalog().values())} candidates (MAX_CANDIDATES "
          f"{cryptarithm.MAX_CANDIDATES}, TOKEN_BUDGET {cryptarithm.TOKEN_BUDGET})")
    print(f"TRACE-TEACHABLE coverage: {right}/{n} = {100 * right / max(1, n):.1f} %")
    for search in ("deduced", "guessed", "abstained"):
        row = {t: counts[(search, t)] for t in ("right", "wrong", "none")}
        print(f"  search {search:9s}: {sum(row.values()):4d}  trace right {row['right']:4d}  wrong {row['wrong']:4d}"
              f"  no answer {row['none']:4d}")
    if tokens:
        pct = [tokens[min(len(tokens) - 1, int(q * len(tokens)))] for q in (0.5, 0.95, 0.99)]
        print(f"right traces, est. real tokens p50/p95/p99/max: {'/'.join(map(str, pct))}/{tokens[-1]}")
    return 1 if counts[("deduced", "wrong")] else 0


if __name__ == "__main__":
    sys.exit(main())
