"""Evaluation with the competition's metric on a validation set (the user's train.csv).

Greedy decoding with the scoring settings, answers extracted and compared by ``puzzles.metric``; one JSON
line per puzzle (its output included) appended as batches finish, so an interrupted evaluation resumes
where it stopped; a per-category accuracy table; counts of truncated and unboxed outputs. With N processes
(``fastnemo.distributed``) each scores its round-robin shard and rank 0 merges them into the same file.
"""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path

from rich.table import Table

from fastnemo import distributed
from fastnemo.config import SamplingConfig
from fastnemo.progress import console, task
from puzzles import CATEGORIES, Puzzle
from puzzles.files import append_jsonl, move_into_place, read_jsonl, write_jsonl
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


def evaluate(session, puzzles: list[Puzzle], sampling: SamplingConfig, out_path: Path, batch_size: int = 64) -> dict:
    """Score ``session``'s model on ``puzzles``; write ``out_path`` (JSONL) and return the summary. In a run of
    N processes (``fastnemo.distributed``) each scores its shard into its own file (``evaluate_shard``) and
    rank 0 merges them into the same ``out_path`` and summary one process gives."""
    n = distributed.world()
    out_path = Path(out_path)
    if n == 1:
        return finish(puzzles, score_into(session, puzzles, sampling, out_path.with_suffix(".partial.jsonl"), batch_size),
                      out_path)
    evaluate_shard(session, puzzles, sampling, out_path, batch_size, distributed.rank(), n)
    distributed.barrier()
    return distributed.on_main(merge_shards, puzzles, out_path)


def score_into(session, puzzles: list[Puzzle], sampling: SamplingConfig, partial: Path, batch_size: int) -> dict:
    """Every puzzle's results line, by id: those already in ``partial``, the others generated and appended to
    it batch by batch (an interrupted evaluation resumes where it stopped)."""
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
    return done


def finish(puzzles: list, done: dict, out_path: Path) -> dict:
    """Every puzzle's line from ``done`` (by id) into ``out_path`` (the partial file moved into place), the
    summary printed as the per-category table."""
    move_into_place(Path(out_path).with_suffix(".partial.jsonl"), out_path)
    return report([done[p.id] for p in puzzles])


def report(results: list[dict]) -> dict:
    """The summary of ``results``, printed as the per-category table."""
    summary = summarize(results)
    console.print(table(summary))
    return summary


# ------------------------------------------------------------------------------- N processes: shards


def evaluate_shard(session, puzzles: list, sampling, out_path: Path, batch_size: int, r: int, n: int) -> Path:
    """Evaluate rank ``r``'s shard (of ``n``) into ``results.rank{r}.jsonl`` beside ``out_path``; resumable,
    and a finished shard generates nothing."""
    out_path = Path(out_path)
    mine = out_path.with_name(f"{out_path.stem}.rank{r}.jsonl")
    partial = mine.with_suffix(".partial.jsonl")
    if mine.exists() and not partial.exists():
        move_into_place(mine, partial)  # a finished shard: score_into re-reads it and generates nothing
    score_into(session, distributed.shard(puzzles, r, n), sampling, partial, batch_size)
    move_into_place(partial, mine)
    return mine


def merge_shards(puzzles: list, out_path: Path) -> dict:
    """Join every rank's results file into ``out_path`` (the puzzles' order) and summarize it; every puzzle
    must have its line."""
    out_path = Path(out_path)
    records = {}
    for f in sorted(out_path.parent.glob(f"{out_path.stem}.rank*.jsonl")):
        if ".partial" not in f.name:
            records.update((r["id"], r) for r in read_jsonl(f, strict=True))
    missing = [p.id for p in puzzles if p.id not in records]
    if missing:
        raise RuntimeError(f"eval {out_path.parent.name}: {len(missing)} prompts have no result after the shards "
                           f"finished (first {missing[:3]})")
    results = [records[p.id] for p in puzzles]
    write_jsonl(out_path, results)
    return report(results)
