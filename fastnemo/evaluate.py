"""Evaluation with the competition's metric on a validation set (the user's train.csv).

Greedy decoding with the scoring settings, answers extracted and compared by ``puzzles.metric``; one JSON
line per puzzle (its output included) appended as batches finish, so an interrupted evaluation resumes
where it stopped; a per-category accuracy table; counts of truncated and unboxed outputs.
"""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path

from rich.table import Table

from fastnemo.config import SamplingConfig
from fastnemo.files import append_jsonl, move_into_place, read_jsonl
from fastnemo.progress import console, task
from puzzles import CATEGORIES, Puzzle
from puzzles.metric import boxed_contents, extract_answer, is_correct


def stratified(puzzles: list, limit: int, seed: int = 0) -> list:
    """At most ``limit`` puzzles (or SFT rows), the same share of each category (round-robin over a fixed
    shuffle)."""
    import random

    if not limit or limit >= len(puzzles):
        return puzzles
    by_cat = collections.defaultdict(list)
    for p in puzzles:
        by_cat[p["category"] if isinstance(p, dict) else p.category].append(p)
    rng = random.Random(seed)
    for rows in by_cat.values():
        rng.shuffle(rows)
    out, i = [], 0
    while len(out) < limit:
        for rows in by_cat.values():
            if i < len(rows) and len(out) < limit:
                out.append(rows[i])
        i += 1
    return out


def summarize(results: list[dict]) -> dict:
    """Accuracy overall and per category, with truncated / unboxed counts."""
    per = collections.defaultdict(lambda: [0, 0])
    for r in results:
        per[r["category"]][0] += r["correct"]
        per[r["category"]][1] += 1
    n = len(results)
    return {
        "n": n,
        "accuracy": sum(r["correct"] for r in results) / n if n else 0.0,
        "per_category": {c: {"correct": k, "n": m, "accuracy": k / m} for c, (k, m) in sorted(per.items())},
        "truncated": sum(r["finish_reason"] == "length" for r in results),
        "unboxed": sum(not r["boxed"] for r in results),
        "mean_tokens": sum(r["n_tokens"] for r in results) / n if n else 0.0,
    }


def table(summary: dict, title: str = "evaluation") -> Table:
    t = Table(title=title)
    for col in ("category", "correct", "n", "accuracy"):
        t.add_column(col, justify="left" if col == "category" else "right")
    for cat in CATEGORIES:
        if cat in summary["per_category"]:
            s = summary["per_category"][cat]
            t.add_row(cat, str(s["correct"]), str(s["n"]), f"{s['accuracy']:.1%}")
    t.add_row("[bold]all", str(round(summary["accuracy"] * summary["n"])), str(summary["n"]),
              f"[bold]{summary['accuracy']:.1%}")
    t.caption = f"truncated {summary['truncated']} · unboxed {summary['unboxed']} · mean {summary['mean_tokens']:.0f} tokens"
    return t


def record(puzzle: dict, text: str, finish_reason: str, n_tokens: int) -> dict:
    """One results line: the puzzle's id, category and answer, the extracted prediction and its verdict by
    the competition's metric, and the output (the one format of the engine path and the harness child)."""
    pred = extract_answer(text)
    return {
        "id": puzzle["id"], "category": puzzle["category"], "answer": puzzle["answer"], "prediction": pred,
        "correct": is_correct(pred, puzzle["answer"]), "boxed": bool(boxed_contents(text)),
        "finish_reason": finish_reason, "n_tokens": n_tokens, "output": text,
    }


def finish(puzzles: list, done: dict, out_path: Path) -> dict:
    """Every puzzle's line from ``done`` (by id) into ``out_path`` (the partial file moved into place), the
    summary printed as the per-category table."""
    results = [done[p.id] for p in puzzles]
    move_into_place(Path(out_path).with_suffix(".partial.jsonl"), out_path)
    summary = summarize(results)
    console.print(table(summary))
    return summary


def evaluate(session, puzzles: list[Puzzle], sampling: SamplingConfig, out_path: Path, batch_size: int = 64) -> dict:
    """Score ``session``'s model on ``puzzles``; write ``out_path`` (JSONL) and return the summary."""
    out_path = Path(out_path)
    partial = out_path.with_suffix(".partial.jsonl")
    done = {r["id"]: r for r in read_jsonl(partial)}  # a line torn by a kill: that puzzle is redone
    todo = [p for p in puzzles if p.id not in done]
    with task("eval", len(puzzles), unit="puzzle") as advance:
        advance(len(puzzles) - len(todo))
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            outputs = session.generate([p.prompt for p in batch], dataclasses.replace(sampling, n=1))
            records = []
            for p, (c,) in zip(batch, outputs):
                r = record({"id": p.id, "category": p.category, "answer": p.answer}, c.text, c.finish_reason,
                           c.n_tokens)
                done[p.id] = r
                records.append(r)
            append_jsonl(partial, records)  # fsynced: a kill redoes at most this batch
            scored = [done[p.id] for p in puzzles if p.id in done]
            advance(len(batch), info=f"acc {sum(r['correct'] for r in scored) / len(scored):.1%}")
    return finish(puzzles, done, out_path)
