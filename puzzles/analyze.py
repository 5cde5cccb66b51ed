"""What is in a puzzle file, and how well the solvers do on it.

``analyze(path, out_dir)`` reads a competition CSV (``id,prompt[,answer]``) or an SFT JSONL file and
reports rows per category, the difficulty features the mix builder matches, answer-format quirks, and, for
rows with answers, each solver's outcomes: deduced right/wrong, guessed right/wrong, abstained, error.
It writes ``report.json`` and ``report.png`` into ``out_dir`` and prints a rich table.

Equations are split into their two families (``equations/numeric``, ``equations/symbolic``) everywhere:
they are different problems with very different solver coverage.
"""

from __future__ import annotations

import collections
import multiprocessing
import re
import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fastnemo.files import read_jsonl, write_json
from puzzles.base import CATEGORIES, NotTeachable, Puzzle
from puzzles.metric import is_correct
from puzzles.traces import completion

OUTCOMES = ("deduced_right", "deduced_wrong", "guessed_right", "guessed_wrong", "abstained", "error")
# A feature with more distinct values than this (a rule text, a hash) is not a difficulty knob.
MAX_FEATURE_VALUES = 24


def group_of(puzzle: Puzzle) -> str:
    """The reporting group: the category, with equations split by family."""
    if puzzle.category == "equations":
        family = puzzle.features.get("family")
        if family is None:  # a parser that does not set it: numeric = 2-digit operands on both sides
            lhs = puzzle.query or ""
            family = "numeric" if lhs[:2].isdigit() and lhs[3:].isdigit() else "symbolic"
        return f"equations/{family}"
    return puzzle.category


GROUPS = tuple(c for c in CATEGORIES if c != "equations") + ("equations/numeric", "equations/symbolic")


# ------------------------------------------------------------------------------------------------ solving


def solve_one(puzzle: Puzzle) -> dict:
    """Run the category solver on one puzzle (never reads the answer) and classify the outcome."""
    from puzzles import categories

    t0 = time.perf_counter()
    try:
        sol = categories.solve(puzzle)
        err = None
    except Exception as e:  # noqa: BLE001 -- a solver crash is a finding to report, not a reason to stop the report
        sol, err = None, f"{type(e).__name__}: {e}"
    seconds = time.perf_counter() - t0
    rec = {
        "id": puzzle.id,
        "group": group_of(puzzle),
        "seconds": seconds,
        "prediction": sol.answer if sol else None,
        "status": sol.status if sol else None,
    }
    if err is not None:
        rec["outcome"], rec["error"] = "error", err[:300]
    elif sol is None:
        rec["outcome"] = "abstained"
    elif puzzle.answer is None:
        rec["outcome"] = sol.status  # no gold: only what the solver claimed
    else:
        right = is_correct(sol.answer, puzzle.answer)
        rec["exact"] = sol.answer.strip() == puzzle.answer.strip()
        rec["outcome"] = (
            f"{'deduced' if sol.status == 'deduced' else 'guessed'}_{'right' if right else 'wrong'}"
        )
    return rec


def solve_traced(puzzle) -> tuple[dict, dict | None]:
    """Solve one real puzzle once: ``solve_one``'s record and, when the solver deduces its answer, the SFT
    row it would train on (the trace of the solver's OWN answer; ``answer`` is the gold where there is one,
    so ``puzzles.audit`` scores the trace against what the leaderboard expects)."""
    from puzzles import categories
    from puzzles.dataset import sft_row

    t0 = time.perf_counter()
    try:
        sol = categories.solve(puzzle)
    except Exception:  # noqa: BLE001 -- solve_one reports the crash the same way the plain command does
        return solve_one(puzzle), None
    rec = {
        "id": puzzle.id,
        "group": group_of(puzzle),
        "seconds": time.perf_counter() - t0,
        "prediction": sol.answer if sol else None,
        "status": sol.status if sol else None,
    }
    if sol is None:
        rec["outcome"] = "abstained"
    elif puzzle.answer is None:
        rec["outcome"] = sol.status
    else:
        rec["exact"] = sol.answer.strip() == puzzle.answer.strip()
        right = "right" if is_correct(sol.answer, puzzle.answer) else "wrong"
        rec["outcome"] = f"{'deduced' if sol.status == 'deduced' else 'guessed'}_{right}"
    if sol is None or sol.status != "deduced":
        return rec, None
    try:
        reasoning = categories.trace(puzzle, sol)
    except NotTeachable:  # deduced by the search, but no recall trace reaches it: no SFT row (counted)
        rec["not_teachable"] = True
        return rec, None
    text = completion(reasoning, sol.answer)
    row = sft_row(puzzle, text, "solver", sol.status, solver_answer=sol.answer, solver_rule=sol.rule)
    row["answer"] = puzzle.answer if puzzle.answer is not None else sol.answer
    return rec, row


def solve_all(
    puzzles: list[Puzzle], workers: int = 1, progress: bool = True, label: str = "solving"
) -> list[dict]:
    """``solve_one`` over all puzzles, in ``workers`` processes, in input order, with a progress bar."""
    from rich.progress import track

    if workers <= 1:
        it: Iterable[dict] = map(solve_one, puzzles)
        return list(track(it, total=len(puzzles), description=label, disable=not progress))
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        it = pool.imap(solve_one, puzzles, chunksize=8)
        return list(track(it, total=len(puzzles), description=label, disable=not progress))


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def solver_table(records: list[dict]) -> dict[str, dict]:
    """Per group: counts of each outcome, shares, and p50/p95 seconds per puzzle. Row "all" sums them."""
    by = collections.defaultdict(list)
    for r in records:
        by[r["group"]].append(r)
        by["all"].append(r)
    out = {}
    for group in [g for g in GROUPS if g in by] + sorted(set(by) - set(GROUPS) - {"all"}) + ["all"]:
        rs = by[group]
        counts = collections.Counter(r["outcome"] for r in rs)
        n = len(rs)
        secs = [r["seconds"] for r in rs]
        right = counts["deduced_right"] + counts["guessed_right"]
        out[group] = {
            "n": n,
            **{k: counts[k] for k in OUTCOMES},
            "correct_share": right / n if n else 0.0,
            "abstain_share": counts["abstained"] / n if n else 0.0,
            "inexact_right": sum(
                1 for r in rs if r["outcome"].endswith("right") and not r.get("exact", True)
            ),
            "p50_s": _pct(secs, 0.50),
            "p95_s": _pct(secs, 0.95),
        }
    return out


# ------------------------------------------------------------------------------------ features and quirks


def feature_profile(puzzles: list[Puzzle]) -> dict[str, dict[str, dict[str, int]]]:
    """Per group and feature: value counts. ``n_examples`` is measured here for every category; features
    with many distinct values (rule texts) are left out."""
    counts: dict[str, dict[str, collections.Counter]] = collections.defaultdict(
        lambda: collections.defaultdict(collections.Counter)
    )
    for p in puzzles:
        g = group_of(p)
        counts[g]["n_examples"][str(len(p.examples))] += 1
        for k, v in p.features.items():
            if isinstance(v, (str, int, float, bool)) and k != "n_examples":
                counts[g][k][str(v)] += 1
    return {
        g: {k: dict(sorted(c.items())) for k, c in fs.items() if len(c) <= MAX_FEATURE_VALUES}
        for g, fs in sorted(counts.items())
    }


_ROMAN = re.compile(r"^M{0,3}(CM|CD|D?C{0,3})(XC|XL|L?X{0,3})(IX|IV|V?I{0,3})$")


def _quirks_of(p: Puzzle) -> list[str]:
    a = p.answer
    q = []
    if a != a.strip() or "  " in a:
        q.append("surrounding or double whitespace")
    if any(c in a for c in "{}\\"):
        q.append("brace or backslash (needs care inside \\boxed{})")
    if p.category == "bit_manipulation":
        if not re.fullmatch(r"[01]{8}", a):
            q.append("bit answer not 8 bits")
        return q
    if re.fullmatch(r"-?\d+\.\d+", a):
        q.append(f"decimal with {len(a.split('.')[1])} places")
        if a.endswith("0"):
            q.append("decimal ending in 0 (keep the trailing zero)")
    elif re.fullmatch(r"-?\d+", a):
        q.append("plain integer")
        if len(a) > 1 and a.lstrip("-").startswith("0"):
            q.append("integer with leading zero")
        if a.startswith("-"):
            q.append("negative integer")
    if p.category == "numeral_system" and not _ROMAN.match(a):
        q.append("numeral answer not a Roman numeral")
    if p.category == "cipher" and not re.fullmatch(r"[a-z]+( [a-z]+)*", a):
        q.append("cipher answer not lowercase words")
    if p.category == "equations" and a == "":
        q.append("empty answer")
    return q


def answer_quirks(puzzles: list[Puzzle]) -> dict[str, dict[str, Any]]:
    """Per group: answer length range and counts of format quirks a trace or a metric must respect."""
    out: dict[str, dict[str, Any]] = {}
    by = collections.defaultdict(list)
    for p in puzzles:
        if p.answer is not None:
            by[group_of(p)].append(p)
    for g, ps in sorted(by.items()):
        lens = [len(p.answer) for p in ps]
        quirks = collections.Counter(q for p in ps for q in _quirks_of(p))
        out[g] = {
            "n": len(ps),
            "len_min": min(lens),
            "len_median": statistics.median(lens),
            "len_max": max(lens),
            "quirks": dict(quirks.most_common()),
        }
    return out


# ------------------------------------------------------------------------------------------------ loading


def load_any(path: str | Path, skip_bad: bool = True) -> tuple[list[Puzzle], dict]:
    """Puzzles from a competition CSV or an SFT JSONL file, and facts about the file itself."""
    from puzzles import categories, dataset

    path = Path(path)
    if path.suffix == ".jsonl":
        rows = read_jsonl(path, strict=True)
        puzzles = []
        for r in rows:
            p = categories.parse(r["prompt"])
            p.id, p.answer = r["id"], r.get("answer")
            p.features = {
                **p.features,
                **{k: v for k, v in r.get("features", {}).items() if k not in p.features},
            }
            puzzles.append(p)
        facts = {
            "format": "sft-jsonl",
            "rows": len(rows),
            "source": dict(collections.Counter(r.get("source") for r in rows)),
            "status": dict(collections.Counter(r.get("status") for r in rows)),
        }
        return puzzles, facts
    load = dataset.read_csv(path, skip_bad=skip_bad)
    facts = {
        "format": "csv",
        "rows": len(load.puzzles) + len(load.skipped),
        "skipped": len(load.skipped),
        "skipped_by_reason": load.skipped_by_reason(),
    }
    return load.puzzles, facts


# ------------------------------------------------------------------------------------------------ report


def analyze(
    path: str | Path,
    out_dir: str | Path | None = None,
    solve: bool = True,
    workers: int = 1,
    progress: bool = True,
) -> dict:
    """Build the report dict; with ``out_dir``, write ``report.json`` and ``report.png`` there."""
    puzzles, facts = load_any(path)
    report: dict[str, Any] = {
        "file": str(path),
        **facts,
        "rows_per_group": dict(collections.Counter(group_of(p) for p in puzzles)),
        "features": feature_profile(puzzles),
        "answers": answer_quirks(puzzles),
    }
    records = solve_all(puzzles, workers=workers, progress=progress) if solve else []
    if records:
        report["solvers"] = solver_table(records)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "report.json", report)
        plot(report, puzzles, records, out / "report.png")
    return report


def plot(report: dict, puzzles: list[Puzzle], records: list[dict], path: Path) -> None:
    """Three panels: rows per group, n_examples per group, solver outcomes per group (when solved)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in GROUPS if g in report["rows_per_group"]]
    if not groups:  # every row was skipped: a plot that says so (matplotlib cannot box-plot nothing)
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.text(0.5, 0.5, "no usable rows (see the report's skipped rows)", ha="center", va="center")
        ax.set_axis_off()
        fig.savefig(path, dpi=80)
        plt.close(fig)
        return
    fig, axes = plt.subplots(1, 3 if records else 2, figsize=(18 if records else 12, 5))
    ax = axes[0]
    ax.barh(groups, [report["rows_per_group"][g] for g in groups], color="tab:blue")
    ax.set_title("rows per group")
    ax.invert_yaxis()

    ax = axes[1]
    by = collections.defaultdict(list)
    for p in puzzles:
        by[group_of(p)].append(len(p.examples))
    ax.boxplot([by[g] for g in groups], orientation="horizontal", tick_labels=groups)
    ax.set_title("examples per prompt")
    ax.invert_yaxis()

    if records:
        ax = axes[2]
        table = report["solvers"]
        left = [0.0] * len(groups)
        colors = {
            "deduced_right": "tab:green",
            "guessed_right": "yellowgreen",
            "guessed_wrong": "orange",
            "deduced_wrong": "tab:red",
            "abstained": "lightgray",
            "error": "black",
        }
        for outcome, color in colors.items():
            vals = [table[g][outcome] / max(1, table[g]["n"]) for g in groups]
            ax.barh(groups, vals, left=left, color=color, label=outcome)
            left = [a + b for a, b in zip(left, vals)]
        ax.set_xlim(0, 1)
        ax.set_title("solver outcomes (share)")
        ax.invert_yaxis()
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _console():
    """A console wide enough for the tables even when output goes to a file or a pipe."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=150)


def print_report(report: dict) -> None:
    """The rich tables a person reads: rows and features per group, then solver outcomes."""
    from rich.table import Table

    console = _console()
    t = Table(title=f"{report['file']} ({report['rows']} rows, {report['format']})")
    for col in ("group", "rows", "n_examples", "other features", "answer quirks"):
        t.add_column(col)
    for g, n in sorted(report["rows_per_group"].items()):
        feats = report["features"].get(g, {})
        nex = " ".join(f"{k}:{v}" for k, v in feats.get("n_examples", {}).items())
        other = "; ".join(
            f"{k}=" + ",".join(f"{v}:{c}" for v, c in vals.items())
            for k, vals in feats.items()
            if k != "n_examples"
        )
        quirks = "; ".join(f"{k}: {v}" for k, v in report["answers"].get(g, {}).get("quirks", {}).items())
        t.add_row(g, str(n), nex, other, quirks)
    console.print(t)
    if "solvers" in report:
        print_solver_table(report["solvers"], console)


def print_solver_table(table: dict, console=None, title: str = "solver outcomes") -> None:
    from rich.table import Table

    console = console or _console()
    t = Table(title=title)
    cols = (
        "group",
        "n",
        "correct",
        "abstain",
        "deduced right",
        "deduced WRONG",
        "guessed right",
        "guessed wrong",
        "error",
        "p50 ms",
        "p95 ms",
    )
    for c in cols:
        t.add_column(c, justify="left" if c == "group" else "right")
    for g, r in table.items():
        wrong = str(r["deduced_wrong"])
        t.add_row(
            g,
            str(r["n"]),
            f"{100 * r['correct_share']:.1f}%",
            f"{100 * r['abstain_share']:.1f}%",
            str(r["deduced_right"]),
            f"[bold red]{wrong}[/]" if r["deduced_wrong"] else wrong,
            str(r["guessed_right"]),
            str(r["guessed_wrong"]),
            str(r["error"]),
            f"{1000 * r['p50_s']:.1f}",
            f"{1000 * r['p95_s']:.1f}",
        )
    console.print(t)
