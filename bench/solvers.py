"""Solver bench on the real puzzles: per category (equations split numeric/symbolic), the share answered
correctly, abstained, guessed right/wrong, DEDUCED WRONG (must be 0: it would poison SFT), and p50/p95
seconds per puzzle. Verdicts are the competition's (``puzzles.metric``); each deduced puzzle's trace is also
rendered as its SFT completion and scored by the official metric: a deduced-right puzzle whose completion
the metric cannot read back ("TRACE UNREADABLE", must be 0) would teach an answer the leaderboard rejects.

    python bench/solvers.py [--data ../shared/data/train_dev.csv] [--json out.json] [--workers 2]

Exits 0 with a note when the real data is absent (it lives only in the developers' shared folder), and 1
when any solver deduces a wrong answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from puzzles.analyze import print_solver_table, solve_traced, solver_table
from puzzles.dataset import read_csv
from puzzles.metric import extract_answer, score

DEFAULT_DATA = REPO.parent / "shared" / "data" / "train_dev.csv"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CSV with id,prompt,answer")
    ap.add_argument("--json", type=Path, default=None, help="also write the table (and wrong rows) as JSON")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="only the first N rows (quick look)")
    args = ap.parse_args()
    if not args.data.exists():
        print(f"{args.data} is absent: the real puzzles are only in the developers' shared folder; nothing to bench.")
        return 0
    load = read_csv(args.data, require_answer=True, skip_bad=True)
    puzzles = load.puzzles[: args.limit] if args.limit else load.puzzles
    t0 = time.time()
    records, rows = solve_traced_all(puzzles, args.workers)
    wall = time.time() - t0
    unreadable = [{"id": r["id"], "read": extract_answer(r["completion"]), "gold": r["answer"]} for r in rows
                  if r["features"]["solver_answer"].strip() == r["answer"].strip()
                  and not score(r["completion"], r["answer"])]
    table = solver_table(records)
    print_solver_table(table, title=f"solvers on {args.data.name}: {len(puzzles)} puzzles, {wall:.1f} s wall, "
                                    f"{args.workers} workers")
    by_id = {p.id: p for p in puzzles}
    wrong = [{"id": r["id"], "group": r["group"], "prediction": r["prediction"], "gold": by_id[r["id"]].answer}
             for r in records if r["outcome"] == "deduced_wrong"]
    errors = [{"id": r["id"], "group": r["group"], "error": r["error"]} for r in records if r["outcome"] == "error"]
    for w in wrong[:10]:
        print(f"DEDUCED WRONG {w['group']} {w['id']}: predicted {w['prediction']!r}, gold {w['gold']!r}")
    for u in unreadable[:10]:
        print(f"TRACE UNREADABLE {u['id']}: the metric reads {u['read']!r}, gold {u['gold']!r}")
    print(f"{len(rows)} deduced traces rendered; {len(unreadable)} unreadable by the official metric")
    for e in errors[:5]:
        print(f"ERROR {e['group']} {e['id']}: {e['error']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"data": str(args.data), "puzzles": len(puzzles), "skipped": len(load.skipped),
                                         "wall_s": wall, "workers": args.workers, "table": table,
                                         "deduced_wrong": wrong, "errors": errors,
                                         "trace_unreadable": unreadable}, indent=2))
    return 1 if wrong or unreadable else 0


def solve_traced_all(puzzles, workers: int):
    """(solver records, SFT rows of the deduced puzzles), one solve per puzzle."""
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pairs = pool.map(solve_traced, puzzles, chunksize=8)
    return [rec for rec, _ in pairs], [row for _, row in pairs if row is not None]


if __name__ == "__main__":
    sys.exit(main())
