"""How much of the cryptarithm catalog the right traces of REAL puzzles use: coverage of real cryptarithms
against the drilled prefix (``puzzles.recall`` order: the cipher lists, then signatures by prior mass), with
the entries, candidates and estimated real tokens (``puzzles.audit.estimate_real_tokens``) one pass of each
prefix costs. A real puzzle counts as covered by a prefix when its recall-and-verify trace reaches the gold
answer and every catalog entry that trace recalls lies inside the prefix.

    python bench/recall_coverage.py [--data ../shared/data/train_dev.csv] [--limit N] [--out bench/results]

Writes recall_coverage.json (the curve, and the prefix each coverage share picks) and recall_coverage.png.
Exits 0 with a note when the real data is absent.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.cryptarithm import real_cryptarithms
from puzzles import cryptarithm, recall
from puzzles.metric import is_correct
from puzzles.traces import estimate_real_tokens

DEFAULT_DATA = REPO.parent / "shared" / "data" / "train_dev.csv"
_RECALLED = re.compile(r": signature (\S+)(?:,| \(recalled above\))")
SHARES = (0.5, 0.8, 0.9, 0.95, 0.99, 1.0)


def recalled_signatures(reasoning: str) -> set[str]:
    """The catalog signatures a trace recalls (written in full, recited one at a time, or referred back to)."""
    catalog = cryptarithm.catalog()
    return {m.group(1) for m in _RECALLED.finditer(reasoning) if m.group(1) in catalog}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    puzzles = real_cryptarithms(args.data, args.limit)
    if puzzles is None:
        return 0
    t0 = time.time()
    order = [e for e in recall.catalog_entries() if e.kind == "cryptarithm"]
    rank = {e.key: i for i, e in enumerate(order)}
    used = []  # per right trace: the catalog signatures it recalls
    for i, p in enumerate(puzzles):
        res = cryptarithm.recall_trace(p)
        if res.answer is not None and is_correct(res.answer, p.answer):
            used.append(sorted(recalled_signatures(res.reasoning)))
        if (i + 1) % 100 == 0:
            print(f"  {i + 1}/{len(puzzles)} traced, {time.time() - t0:.0f} s", flush=True)
    needed = [max((rank[s] for s in sigs), default=-1) for sigs in used]  # the deepest entry each needs
    n = len(puzzles)
    orders = compare_orders(order, used, n)
    ks = sorted({1, 10, 30, 100, 200, 300, 500, 750, 1000, 1500, 2000, 2500, 3000, 3500, 4000, len(order)}
                | {r + 1 for r in needed if r >= 0})
    ks = [k for k in ks if k <= len(order)]
    candidates, tokens, mass, curve = 0, 0, 0.0, []
    for k in range(1, len(order) + 1):
        e = order[k - 1]
        candidates += int(e.answer)
        tokens += estimate_real_tokens(e.prompt) + estimate_real_tokens(e.completion)
        mass += e.prior
        if k in ks:
            curve.append({"entries": k, "candidates": candidates, "tokens_per_pass": tokens,
                          "prior_mass": round(mass, 6), "covered": sum(0 <= r < k or r == -1 for r in needed),
                          "covered_share": sum(0 <= r < k or r == -1 for r in needed) / max(1, n)})
    picks = []
    for share in SHARES:
        drilled = [e for e in recall.entries(share) if e.kind == "cryptarithm"]
        k = len(drilled)
        covered = sum(0 <= r < k or r == -1 for r in needed)
        picks.append({"coverage": share, "entries": k, "candidates": sum(int(e.answer) for e in drilled),
                      "tokens_per_pass": sum(estimate_real_tokens(e.prompt) + estimate_real_tokens(e.completion)
                                             for e in drilled),
                      "real_covered": covered, "real_right": len(needed), "real_n": n,
                      "gives_up": len(needed) - covered})
    out = {"data": str(args.data), "cryptarithms": n, "right_traces": len(needed), "seconds": round(time.time() - t0),
           "catalog_entries": len(order), "curve": curve, "coverage_keys": picks, "orders": orders,
           "used": used}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "recall_coverage.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"cryptarithms {n}, right traces {len(needed)} ({len(needed) / max(1, n):.1%}), {out['seconds']} s")
    print(f"{'coverage':>8} {'entries':>7} {'candidates':>10} {'tokens/pass':>11} {'real covered':>12} {'gives up':>8}")
    for p in picks:
        print(f"{p['coverage']:8.2f} {p['entries']:7d} {p['candidates']:10,d} {p['tokens_per_pass']:11,d} "
              f"{p['real_covered']:5d}/{n:<6d} {p['gives_up']:8d}")
    print("other general orders (real cryptarithms covered by the first k entries):")
    for name, row in orders.items():
        print(f"  {name:>12}: " + "  ".join(f"{k}: {c}" for k, c in row.items()))
    plot(out, args.out / "recall_coverage.png")
    return 0


def compare_orders(order, used: list[list[str]], n: int) -> dict:
    """Real cryptarithms covered by the first k entries under other general orders than the drill order:
    fewest candidates first, and prior mass per candidate (likely AND short) first."""
    ks = (250, 500, 1000, 1500, 2000, 3000)
    ways = {"drill order": order,
            "fewest first": sorted(order, key=lambda e: (int(e.answer), e.key)),
            "mass/cand": sorted(order, key=lambda e: (-e.prior / int(e.answer), e.key))}
    out = {}
    for name, seq in ways.items():
        rank = {e.key: i for i, e in enumerate(seq)}
        needed = [max((rank[s] for s in sigs), default=-1) for sigs in used]
        out[name] = {k: sum(r < k for r in needed) for k in ks}
    return out


def plot(out: dict, path: Path) -> None:
    from fastnemo.plots import pyplot, save_png

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [c["tokens_per_pass"] / 1e6 for c in out["curve"]]
    ax.plot(xs, [c["covered_share"] for c in out["curve"]], marker=".", label="real cryptarithms covered")
    ax.axhline(out["right_traces"] / max(1, out["cryptarithms"]), color="gray", linestyle=":",
               label="whole catalog (right traces)")
    for p in out["coverage_keys"]:
        ax.annotate(f"{p['coverage']:.2f}", (p["tokens_per_pass"] / 1e6, p["real_covered"] / max(1, out["cryptarithms"])),
                    fontsize=7)
    ax.set_xlabel("estimated tokens per pass of the drilled prefix (millions)")
    ax.set_ylabel("share of train_dev cryptarithms")
    ax.set_title("recall coverage: catalog prefix (prior order) vs real cryptarithms")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


if __name__ == "__main__":
    sys.exit(main())
