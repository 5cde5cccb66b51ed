"""The SFT mix builder: generated puzzles, solved from their prompt text, with solver traces.

``build_mix(MixConfig(n=100_000, like="train.csv", floor=5_000, out="data/sft.jsonl"))``:

1. Measures the reference file (when given): category shares, and per category the joint distribution of
   the difficulty features its parser reports (``n_examples`` always; e.g. ``family`` numeric/symbolic for
   equations). Without a reference, categories are equal and generators use their own defaults.
2. Allocates ``n`` rows over categories by share, with at least ``floor`` rows each, and splits each
   category's rows over its stratum features' values (``strata``: ``n_examples`` everywhere, equations also
   by ``family``) by the reference shares. Drawing difficulty vectors at random is not enough: solvers
   deduce some strata far more often than others (generated numeric equations ~80 %, symbolic ~50 %,
   3-example symbolic ones least), and keeping only deduced rows would drift the mix toward the easy strata.
3. Generates in shards (in ``workers`` processes): each puzzle's difficulty dict is a reference puzzle's
   feature vector drawn at random, so the mix matches the reference distribution. Each generated prompt is
   parsed back from its TEXT and solved, exactly as a real puzzle would be; rows the solver abstains on,
   gets wrong (not exactly the generator's answer), only guesses (unless allowed), or whose prompt
   appears in the reference file (validation leakage) are dropped and counted. A solver that takes
   ``deduce_only`` gets it when its category keeps only deduced rows: it may then stop as soon as the
   answer is open instead of finishing the search a guess would need (symbolic equations: ~5x faster).
4. Merges shards, dedupes prompts across shards, tops up cells that came short, writes the JSONL
   atomically with a ``.stats.json`` beside it.

Shards live in ``<out>.shards/`` until the build succeeds, so an interrupted build resumes where it
stopped when rerun with the same arguments.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import multiprocessing
import random
import time
from pathlib import Path
from typing import Any

from fastnemo.files import read_jsonl, write_json, write_jsonl
from puzzles.base import CATEGORIES, NotTeachable, Puzzle
from puzzles.dataset import sft_row
from puzzles.metric import extract_answer, score
from puzzles.traces import completion

MAX_FEATURE_VALUES = 24  # a feature with more distinct values (a rule text) is not a difficulty knob


# Measured on 10k-row builds: deduced-only units/gravity rows skew toward small answers (median 24.6 vs the
# reference's 29.4 for units, 33.6 vs 55.8 for gravity); keeping their exactly-right guesses restores it.
KEEP_GUESSED = ("unit_conversion", "gravity")


@dataclasses.dataclass
class MixConfig:
    """One mix build.

    n: rows in the output. like: reference CSV whose category shares and difficulty features to match
    (None: equal shares, generator defaults). floor: minimum rows per category. statuses: solver statuses
    kept ("deduced" only by default: a guessed trace teaches guessing). keep_guessed: categories whose
    guessed rows are kept too (e.g. unit_conversion, gravity: their rounded examples leave the last digit
    open, the guess is within the metric's tolerance, and a kept row's answer equals the generator's
    exactly, so its trace is right). strata: per category, reference features whose joint value shares the
    mix matches exactly (see the module doc). shard_size: rows per work unit
    (the resume granularity). max_attempts: generated puzzles tried per kept row before a shard gives up.
    max_minutes: wall-clock budget; when it runs out, unfinished shards stop and the mix is written short
    (a slow solver would otherwise decide the build time).
    """

    n: int
    out: str
    like: str | None = None
    floor: int = 0
    seed: int = 0
    workers: int = 2
    statuses: tuple[str, ...] = ("deduced",)
    keep_guessed: tuple[str, ...] = KEEP_GUESSED
    strata: dict[str, tuple[str, ...]] = dataclasses.field(
        default_factory=lambda: {c: ("family", "n_examples") if c == "equations" else ("n_examples",)
                                 for c in CATEGORIES}
    )
    categories: tuple[str, ...] = CATEGORIES
    shard_size: int = 500
    max_attempts: int = 20
    max_rounds: int = 6
    progress: bool = True
    keep_shards: bool = False
    max_minutes: float | None = None
    shares: dict[str, float] = dataclasses.field(default_factory=dict)
    """Per-category share overrides (renormalised with the others); a category left out keeps the
    reference's share (or 1 without a reference), so the default keeps the real shares."""
    drill_share: float = 0.0
    """Fraction of the ``n`` rows that are recall drills (``drill_component``: the cipher word list, then
    the cryptarithm catalog); the puzzle categories share the rest."""


# ------------------------------------------------------------------------------------------- reference


def prompt_key(prompt: str) -> str:
    """Dedupe key: the prompt with whitespace runs collapsed, hashed."""
    return hashlib.sha1(" ".join(prompt.split()).encode()).hexdigest()


@dataclasses.dataclass
class Reference:
    shares: dict[str, float]
    profiles: dict[str, list[dict[str, Any]]]  # per category: one difficulty dict per reference puzzle
    keys: set[str]  # prompt keys to keep out of the mix


def measure_reference(puzzles: list[Puzzle], categories=CATEGORIES) -> Reference:
    """Category shares and per-category difficulty vectors (low-cardinality scalar features only)."""
    by = collections.defaultdict(list)
    for p in puzzles:
        by[p.category].append(p)
    profiles = {}
    for cat, ps in by.items():
        values = collections.defaultdict(set)
        for p in ps:
            for k, v in p.features.items():
                values[k].add(v if isinstance(v, (str, int, float, bool)) else None)
        knobs = [k for k, vs in values.items() if None not in vs and len(vs) <= MAX_FEATURE_VALUES]
        profiles[cat] = [
            {"n_examples": len(p.examples), **{k: p.features[k] for k in knobs if k in p.features}}
            for p in ps
        ]
    total = sum(len(by[c]) for c in categories)
    shares = {c: len(by[c]) / total if total else 1 / len(categories) for c in categories}
    return Reference(shares, profiles, {prompt_key(p.prompt) for p in puzzles})


def allocate(n: int, shares: dict[str, float], floor: int = 0) -> dict[str, int]:
    """Rows per category: proportional to ``shares``, at least ``floor`` each, summing to exactly ``n``.
    Categories whose share falls under the floor are pinned to it and the rest re-split (water-filling);
    rounding by largest remainder."""
    cats = list(shares)
    if floor * len(cats) > n:
        raise ValueError(f"floor {floor} x {len(cats)} categories = {floor * len(cats)} exceeds n = {n}")
    pinned: set[str] = set()
    while True:
        free = [c for c in cats if c not in pinned]
        budget = n - floor * len(pinned)
        weight = sum(shares[c] for c in free) or 1.0
        raw = {c: budget * shares[c] / weight for c in free}
        low = {c for c in free if raw[c] < floor}
        if not low:
            break
        pinned |= low
    raw.update({c: float(floor) for c in pinned})
    quotas = {c: int(raw[c]) for c in cats}
    by_remainder = sorted(cats, key=lambda c: raw[c] - quotas[c], reverse=True)
    for c in by_remainder[: n - sum(quotas.values())]:
        quotas[c] += 1
    return quotas


# ---------------------------------------------------------------------------------------------- worker

_REF_KEYS: set[str] = set()  # set before the pool forks: workers inherit it without pickling


@dataclasses.dataclass
class Shard:
    category: str
    round: int
    index: int
    count: int
    seed: int
    profiles: list[dict[str, Any]] | None
    statuses: tuple[str, ...]
    max_attempts: int
    deadline: float | None = None  # time.time() after which the shard stops (and is not saved: partial)
    stratum: dict[str, Any] | None = None  # feature values every kept row must have (the shard's cell)

    @property
    def name(self) -> str:
        part = "".join(f"-{v}" for v in self.stratum.values()) if self.stratum else ""
        return f"{self.category}-r{self.round}{part}-{self.index:05d}"


def _solve(puzzle: Puzzle, statuses: tuple[str, ...]):
    """The category's solver, told ``deduce_only`` (where it takes it) when guesses are dropped anyway."""
    import inspect

    from puzzles import categories

    solve = categories.module(puzzle.category).solve
    if "guessed" not in statuses and "deduce_only" in inspect.signature(solve).parameters:
        return solve(puzzle, deduce_only=True)
    return solve(puzzle)


def make_row(generated: Puzzle, statuses: tuple[str, ...]) -> tuple[dict | None, str, str]:
    """Parse the generated prompt text, solve it, check it: (row, "kept", "") or (None, reason, detail)."""
    from puzzles import categories

    try:
        puzzle = categories.parse(generated.prompt)
    except Exception as e:  # noqa: BLE001 -- counted and reported, never fatal
        return None, "unparseable", f"{type(e).__name__}: {e}"
    puzzle.answer = None  # the solver sees only what a real puzzle shows
    try:
        sol = _solve(puzzle, statuses)
    except Exception as e:  # noqa: BLE001 -- counted and reported, never fatal
        return None, "solver_error", f"{type(e).__name__}: {e}"
    if sol is None:
        return None, "abstained", ""
    if sol.answer.strip() != generated.answer.strip():
        detail = f"solver {sol.answer!r} ({sol.rule}) != generator {generated.answer!r}"
        return None, f"wrong_{sol.status}", detail
    if sol.status not in statuses:
        return None, f"dropped_{sol.status}", ""
    try:
        text = categories.trace(puzzle, sol)
    except NotTeachable:  # a cryptarithm the recall trace cannot reach: the search is never trained
        return None, "not_teachable", ""
    except Exception as e:  # noqa: BLE001 -- counted and reported, never fatal
        return None, "trace_error", f"{type(e).__name__}: {e}"
    puzzle.answer = generated.answer
    puzzle.id = f"{generated.category}-{prompt_key(generated.prompt)[:12]}"
    puzzle.features = {**generated.features, **puzzle.features}
    try:
        full = completion(text, generated.answer)
    except ValueError as e:
        return None, "trace_error", str(e)
    if not score(full, generated.answer):  # what the leaderboard would read back from this very row
        return None, "metric_fail", f"metric reads {extract_answer(full)!r}, answer {generated.answer!r}"
    row = sft_row(puzzle, full, "solver", sol.status, n_examples=len(puzzle.examples), solver_rule=sol.rule)
    return row, "kept", ""


# Categories whose solvers take milliseconds to seconds a puzzle (see bench/solvers.py): scheduled last.
SLOW = ("bit_manipulation", "equations")

# Failures worth a module owner's attention; a few examples of each are kept in the build stats.
NOTABLE = ("wrong_deduced", "generator_error", "unparseable", "solver_error", "trace_error", "metric_fail")


def run_shard(shard: Shard) -> tuple[str, list[dict], dict]:
    """Generate until ``shard.count`` rows are kept (or attempts run out); rows unique within the shard and
    absent from the reference. Stats: counts per outcome, plus ``examples`` of notable failures."""
    from puzzles import categories

    part = "".join(f":{v}" for v in shard.stratum.values()) if shard.stratum else ""
    rng = random.Random(f"{shard.seed}:{shard.category}:{shard.round}{part}:{shard.index}")
    t0 = time.time()
    rows, seen, stats, examples = [], set(), collections.Counter(), []
    for _ in range(shard.count * shard.max_attempts):
        if len(rows) >= shard.count:
            break
        if shard.deadline is not None and time.time() > shard.deadline:
            stats["deadline"] += 1
            break
        difficulty = dict(rng.choice(shard.profiles)) if shard.profiles else None
        stats["generated"] += 1
        try:
            generated = categories.generate(shard.category, rng, difficulty)
        except Exception as e:  # noqa: BLE001 -- counted and reported, never fatal
            stats["generator_error"] += 1
            if stats["generator_error"] <= 2:
                examples.append({"reason": "generator_error", "detail": f"{type(e).__name__}: {e}",
                                 "difficulty": difficulty})
            if stats["generator_error"] >= 50 and stats["generator_error"] == stats["generated"]:
                stats["gave_up"] += 1  # a generator that never works: do not spin through every attempt
                break
            continue
        key = prompt_key(generated.prompt)
        if key in _REF_KEYS:
            stats["in_reference"] += 1
            continue
        if key in seen:
            stats["duplicate"] += 1
            continue
        row, why, detail = make_row(generated, shard.statuses)
        stratum = shard.stratum or {}
        if row is not None and any(row["features"].get(k) != v for k, v in stratum.items()):
            row, why = None, "off_stratum"  # e.g. an unseen query operator drops an example line
        stats[why] += 1
        if why in NOTABLE and stats[why] <= 3:
            examples.append({"reason": why, "detail": detail, "prompt": generated.prompt})
        if row is not None:
            seen.add(key)
            rows.append(row)
    return shard.name, rows, {"counts": dict(stats), "examples": examples, "seconds": time.time() - t0}


# ----------------------------------------------------------------------------------------------- build


Cell = tuple[str, tuple | None]  # (category, stratum feature values or None): the unit that gets a quota


def _cells(cfg: MixConfig, ref: Reference | None, quotas: dict[str, int]) -> dict[Cell, int]:
    """Split each category's quota over its strata by their reference shares (largest remainder);
    unstratified categories (or no reference) are one cell with stratum None."""
    cells: dict[Cell, int] = {}
    for cat, quota in quotas.items():
        features = cfg.strata.get(cat, ())
        profiles = (ref.profiles.get(cat) if ref else None) or []
        values = collections.Counter(tuple(d.get(f) for f in features) for d in profiles)
        if not features or not values or any(None in v for v in values):
            cells[(cat, None)] = quota
            continue
        shares = {v: values[v] / len(profiles) for v in sorted(values, key=str)}
        for value, count in allocate(quota, shares).items():
            cells[(cat, value)] = count
    return cells


def _shards(
    cfg: MixConfig, ref: Reference | None, need: dict[Cell, int], rnd: int, deadline: float | None
) -> list[tuple[Shard, Cell]]:
    shards = []
    for (cat, value), count in need.items():
        profiles = ref.profiles.get(cat) if ref else None
        stratum = dict(zip(cfg.strata[cat], value)) if value is not None else None
        if stratum:
            profiles = [d for d in profiles if all(d.get(k) == v for k, v in stratum.items())]
        statuses = tuple(dict.fromkeys(cfg.statuses + (("guessed",) if cat in cfg.keep_guessed else ())))
        for i, start in enumerate(range(0, count, cfg.shard_size)):
            n = min(cfg.shard_size, count - start)
            shard = Shard(cat, rnd, i, n, cfg.seed, profiles, statuses, cfg.max_attempts, deadline, stratum)
            shards.append((shard, (cat, value)))
    # Cheap categories first, interleaved: under a deadline they finish and only the slow solvers'
    # categories come short; a slow shard never stalls the rest.
    return sorted(shards, key=lambda sc: (sc[0].category in SLOW, sc[0].index))


def _run_shards(cfg: MixConfig, shards: list[Shard], shard_dir: Path, progress, task) -> dict[str, tuple]:
    """Run (or reload, when resuming) each shard; returns name -> (rows, stats)."""
    done, todo = {}, []
    for s in shards:
        rows_path, stats_path = shard_dir / f"{s.name}.jsonl", shard_dir / f"{s.name}.stats.json"
        if rows_path.exists() and stats_path.exists():
            done[s.name] = (read_jsonl(rows_path, strict=True), json.loads(stats_path.read_text()))
            progress.advance(task, len(done[s.name][0]))
        else:
            todo.append(s)

    def finish(name, rows, stats):
        if not stats["counts"].get("deadline"):  # a shard cut by the deadline is partial: redo it on resume
            write_jsonl(shard_dir / f"{name}.jsonl", rows)
            write_json(shard_dir / f"{name}.stats.json", stats)
        done[name] = (rows, stats)
        progress.advance(task, len(rows))

    if cfg.workers <= 1 or len(todo) <= 1:
        for s in todo:
            finish(*run_shard(s))
    else:
        with multiprocessing.get_context("fork").Pool(cfg.workers) as pool:
            for result in pool.imap_unordered(run_shard, todo):
                finish(*result)
    return done


def build_mix(cfg: MixConfig) -> dict:
    """Build the mix described by ``cfg``; returns the stats also written to ``<out>.stats.json``."""
    global _REF_KEYS
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from puzzles import dataset

    t0 = time.time()
    deadline = t0 + 60 * cfg.max_minutes if cfg.max_minutes else None
    ref = measure_reference(dataset.load_csv(cfg.like, skip_bad=True), cfg.categories) if cfg.like else None
    shares = {c: ref.shares[c] for c in cfg.categories} if ref else {c: 1.0 for c in cfg.categories}
    unknown = set(cfg.shares) - set(cfg.categories)
    if unknown or any(v < 0 for v in cfg.shares.values()) or not 0 <= cfg.drill_share < 1:
        raise ValueError(f"mix shares: unknown categories {sorted(unknown)} or a negative share in "
                         f"{cfg.shares}, or drill_share {cfg.drill_share} not in [0, 1)")
    shares.update(cfg.shares)
    n_drills = round(cfg.n * cfg.drill_share)
    quotas = allocate(cfg.n - n_drills, shares, cfg.floor)
    cells = _cells(cfg, ref, quotas)
    _REF_KEYS = ref.keys if ref else set()

    out = Path(cfg.out)
    shard_dir = out.with_name(out.name + ".shards")
    shard_dir.mkdir(parents=True, exist_ok=True)
    # Shards are reused only by the same build: other arguments make other shards, so clear stale ones.
    volatile = ("workers", "progress", "keep_shards", "max_minutes")
    ident = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in volatile}
    ident = json.loads(json.dumps(ident))
    cfg_path = shard_dir / "config.json"
    if cfg_path.exists() and json.loads(cfg_path.read_text()) != ident:
        for f in shard_dir.iterdir():
            f.unlink()
    write_json(cfg_path, ident)

    kept: dict[Cell, list[dict]] = {cell: [] for cell in cells}
    keys: set[str] = set()
    funnel: dict[str, collections.Counter] = {c: collections.Counter() for c in cfg.categories}
    cpu: collections.Counter = collections.Counter()  # worker seconds per category
    notable: dict[str, list] = {c: [] for c in cfg.categories}
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>7.0f} rows/s"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not cfg.progress) as progress:
        task = progress.add_task("building mix", total=cfg.n, rate=0.0)
        for rnd in range(cfg.max_rounds):
            # Top up only cells that made progress: a broken generator is reported, not retried.
            need = {cell: q - len(kept[cell]) for cell, q in cells.items()
                    if q > len(kept[cell]) and (rnd == 0 or kept[cell])}
            if not need or (deadline is not None and time.time() > deadline):
                break
            if rnd:  # a top-up round: the bar re-counts only the rows still missing
                progress.update(task, completed=sum(len(v) for v in kept.values()))
            shards = _shards(cfg, ref, need, rnd, deadline)
            cell_of = {s.name: cell for s, cell in shards}
            results = _run_shards(cfg, [s for s, _ in shards], shard_dir, _RateProgress(progress, t0), task)
            for name in sorted(results):
                rows, shard_stats = results[name]
                cell = cell_of[name]
                cat = cell[0]
                funnel[cat].update(shard_stats["counts"])
                cpu[cat] += shard_stats.get("seconds", 0.0)
                notable[cat].extend(shard_stats["examples"][: max(0, 6 - len(notable[cat]))])
                for row in rows:
                    key = prompt_key(row["prompt"])
                    if key in keys:
                        funnel[cat]["duplicate_across_shards"] += 1
                    elif len(kept[cell]) < cells[cell]:
                        keys.add(key)
                        kept[cell].append(row)
        progress.update(task, completed=sum(len(v) for v in kept.values()))

    rows = [r for cell in cells for r in kept[cell]]
    drills = drill_component(n_drills, cfg.seed)
    rows += drills
    by_cat = {c: sum(len(kept[cell]) for cell in cells if cell[0] == c) for c in cfg.categories}
    random.Random(cfg.seed).shuffle(rows)
    write_jsonl(out, rows)
    seconds = time.time() - t0
    summary = {
        "out": str(out),
        "rows": len(rows),
        "seconds": round(seconds, 2),
        "rows_per_second": round(len(rows) / seconds, 1) if seconds else None,
        "workers": cfg.workers,
        "quotas": quotas,
        "kept": by_cat,
        "short": {c: quotas[c] - by_cat[c] for c in cfg.categories if by_cat[c] < quotas[c]},
        "strata": {f"{c}/" + "/".join(map(str, v)): {"quota": q, "kept": len(kept[(c, v)])}
                   for (c, v), q in cells.items() if v is not None},
        "statuses": {c: dict(collections.Counter(r["status"] for cell in cells if cell[0] == c
                                                 for r in kept[cell])) for c in cfg.categories},
        "worker_seconds": {c: round(cpu[c], 1) for c in cfg.categories},
        "shares_reference": ref.shares if ref else None,
        "funnel": {c: dict(sorted(f.items())) for c, f in funnel.items()},
        "drills": drill_stats(drills, rows),
        "wrong_deduced": sum(f["wrong_deduced"] for f in funnel.values()),
        "notable_failures": {c: v for c, v in notable.items() if v},
        "config": dataclasses.asdict(cfg),
    }
    write_json(out.with_name(out.name + ".stats.json"), summary)
    if not cfg.keep_shards:
        for f in shard_dir.iterdir():
            f.unlink()
        shard_dir.rmdir()
    return summary


def drill_component(n: int, seed: int) -> list[dict]:
    """``n`` SFT rows that teach what traces recall: the cipher word list by length (one row a length, first:
    9 rows) and the cryptarithm catalog (signature -> candidates) for the rest. Rows carry feature
    ``drill`` (family "drill"); the completion is the recalled entry, boxed like any row (the answer is its
    count)."""
    if n <= 0:
        return []
    from puzzles import cipher, cryptarithm

    words = cipher.drill_rows()[:n]
    rows = []
    for category, (prompt, body, answer) in [*(("cipher", d) for d in words), *(
            ("equations", d) for d in cryptarithm.drill_rows(n - len(words), seed))]:
        puzzle = Puzzle(id=f"drill-{prompt_key(prompt)[:12]}", category=category, prompt=prompt,
                        examples=[], query=None, answer=answer, features={"family": "drill"})
        rows.append(sft_row(puzzle, completion(body, answer), "solver", "deduced", drill=True))
    return rows


def drill_stats(drills: list[dict], rows: list[dict]) -> dict:
    """Drill rows, the catalog's size, and the drills' share of the mix's completion tokens (chars / 4)."""
    if not drills:
        return {"rows": 0}
    from puzzles import cryptarithm

    cat = cryptarithm.catalog()
    total = sum(len(r["completion"]) for r in rows) or 1
    return {"rows": len(drills), "catalog_signatures": len(cat),
            "catalog_candidates": sum(len(v) for v in cat.values()),
            "token_share": round(sum(len(r["completion"]) for r in drills) / total, 4)}


class _RateProgress:
    """Progress proxy that keeps the rows/s field current as shards finish."""

    def __init__(self, progress, t0: float):
        self.progress, self.t0 = progress, t0

    def advance(self, task, n: int) -> None:
        self.progress.advance(task, n)
        done = self.progress.tasks[0].completed
        self.progress.update(task, rate=done / max(1e-9, time.time() - self.t0))
