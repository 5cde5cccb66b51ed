"""The checkpoint ledger: every evaluation of the run, which adapter it scored, and the best one.

The ledger is read from the manifest (each eval stage's summary names its checkpoint), so it can never
disagree with what is on disk. ``best`` is the highest overall accuracy; a tie goes to the earlier
checkpoint (less training, same score).
"""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from puzzles import CATEGORIES

SHORT = {"bit_manipulation": "bits", "cipher": "cipher", "numeral_system": "numeral",
         "unit_conversion": "units", "gravity": "gravity", "equations": "equations"}


def entries(run) -> list[dict]:
    out = []
    for key, entry in run.manifest()["stages"].items():
        s = entry["summary"]
        if "-eval-" in key and s.get("checkpoint"):
            recall = s.get("recall") or {}
            out.append({"stage": key, "checkpoint": s["checkpoint"], "accuracy": s["accuracy"],
                        "per_category": {c: v["accuracy"] for c, v in s["per_category"].items()},
                        "recall": recall.get("exact") if recall.get("n") else None,
                        "recall_by_kind": recall.get("by_kind", {}) if recall.get("n") else {}})
    return out


def best(run) -> dict | None:
    rows = entries(run)
    top = None
    for r in rows:
        if top is None or r["accuracy"] > top["accuracy"]:
            top = r
    return top


def table(run) -> Table:
    rows, top = entries(run), best(run)
    t = Table(title=f"leaderboard: {run.path}")
    t.add_column("stage")
    t.add_column("checkpoint")
    t.add_column("all", justify="right")
    cats = [c for c in CATEGORIES if any(c in r["per_category"] for r in rows)]
    for c in cats:
        t.add_column(SHORT[c], justify="right")
    kinds = sorted({k for r in rows for k in r["recall_by_kind"]})
    for k in kinds:  # exact recall of the drilled catalog (fastnemo.recall), beside the score
        t.add_column(f"recall {k}", justify="right")
    for r in rows:
        mark = "[bold green]" if top and r["stage"] == top["stage"] else ""
        t.add_row(mark + r["stage"], r["checkpoint"], f"{mark}{r['accuracy']:.1%}",
                  *[f"{r['per_category'].get(c, 0):.1%}" for c in cats],
                  *[f"{r['recall_by_kind'][k]:.1%}" if k in r["recall_by_kind"] else "-" for k in kinds])
    return t


def plot(run, out: Path) -> Path | None:
    """Score by stage, overall and per category, as a PNG."""
    rows = entries(run)
    if not rows:
        return None
    from fastnemo.plots import pyplot, save_png

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows) + 3), 4.5))
    x = range(len(rows))
    for c in CATEGORIES:
        ys = [r["per_category"].get(c) for r in rows]
        if any(y is not None for y in ys):
            ax.plot(x, [y if y is not None else float("nan") for y in ys], marker="o", alpha=0.6, label=c)
    ax.plot(x, [r["accuracy"] for r in rows], marker="s", color="black", linewidth=2.5, label="all")
    top = best(run)
    ax.axvline([r["stage"] for r in rows].index(top["stage"]), color="green", linestyle=":", label="best")
    ax.set_xticks(list(x), [r["stage"] for r in rows], rotation=20)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("accuracy")
    ax.set_title("validation score by stage")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    return save_png(fig, out)


def write_report(run) -> None:
    """Leaderboard table to the console and ``leaderboard.png`` + training curves into the run folder."""
    from fastnemo import plots
    from fastnemo.progress import console

    if entries(run):
        console.print(table(run))
        plot(run, run.path / "leaderboard.png")
    plots.training_curves(run, run.path / "training.png")
