"""Self-distillation: sample k answers per puzzle from the session's model, keep the verified ones.

``run(session, recipe, out_dir, seed, log)``:

1. Prompts: new generated puzzles (``puzzles.categories.generate``, round-robin over the categories) or the
   rows of ``recipe.distill.data`` (a competition CSV or a JSONL with id/prompt/answer).
2. ``k`` candidates per prompt with ``session.generate`` (temperature ``recipe.distill.temperature``). Every
   batch's verified rows and counts are appended to ``generations.jsonl`` and fsynced: a killed distill
   resumes where it stopped (a torn last line is cut off first). With N processes each samples its shard
   into ``generations.rank{r}.jsonl``; every cache of the folder counts as done.
3. Verification (``select``): a candidate is *correct* when the strict competition metric accepts it; it is
   a *trace* when it is also complete (ended by the model, not cut by max_tokens) and well formatted
   (reasoning closed once, then exactly one box). The ``keep`` shortest traces per prompt become SFT rows
   whose tail is rewritten canonically (``</think>`` + the gold answer boxed, as solver traces end).
4. Outputs: ``traces.jsonl`` (SFT rows, source "distill", status "verified"), ``passrates.jsonl`` (one row
   per prompt), ``goldilocks.jsonl`` (prompts the model solves between ``goldilocks_low`` and
   ``goldilocks_high`` of the time: the ones with a learning signal for DAPO) and ``passrates.png``.

``mix_next`` builds the next round's SFT set from the traces and part of the previous SFT data.
"""

from __future__ import annotations

import collections
import math
import random
import time
from pathlib import Path

from fastnemo import distributed
from fastnemo.config import Recipe, SamplingConfig
from fastnemo.progress import console, task
from fastnemo.rewards import well_formatted
from fastnemo.seeds import call_seed
from puzzles import CATEGORIES, Puzzle
from puzzles.dataset import sft_row
from puzzles.files import append_jsonl, read_jsonl, write_jsonl
from puzzles.metric import score
from puzzles.mix import prompt_key
from puzzles.traces import THINK_CLOSE
from puzzles.traces import completion as trace_completion

CACHE = "generations.jsonl"
# What a distill stage leaves for the stages after it (SFT rows and DAPO's prompts), by artifact name
ARTIFACTS = {"traces": "traces.jsonl", "goldilocks": "goldilocks.jsonl"}


def artifacts(out_dir: Path) -> dict[str, Path]:
    return {name: out_dir / file for name, file in ARTIFACTS.items()}


# ---------------------------------------------------------------------------------------------- prompts


def load_prompts(recipe: Recipe, seed: int) -> list[Puzzle]:
    """The puzzles to distill on: ``recipe.distill.data`` when set, else ``recipe.distill.prompts`` new ones;
    none is an error."""
    cfg = recipe.distill
    if cfg.data:
        puzzles = read_puzzles(recipe.paths.distill_data)[: cfg.prompts or None]
    else:
        puzzles = generate_puzzles(cfg.prompts, seed)
    if not puzzles:
        raise ValueError("distill: no prompts (distill.prompts is 0 or distill.data is empty)")
    return puzzles


def read_puzzles(path: Path) -> list[Puzzle]:
    """A competition CSV (id,prompt,answer) or a JSONL whose rows carry id, prompt and answer."""
    path = Path(path)
    if path.suffix == ".csv":
        from puzzles.dataset import load_csv

        return load_csv(path, require_answer=True, skip_bad=True)
    from puzzles.base import detect_category

    out = []
    for r in read_jsonl(path, strict=True):
        category = r.get("category") or detect_category(r["prompt"])
        out.append(Puzzle(id=str(r["id"]), category=category, prompt=r["prompt"], examples=[], query=None,
                          answer=str(r["answer"])))
    return out


def generate_puzzles(n: int, seed: int) -> list[Puzzle]:
    """``n`` new puzzles, categories in turn; the same ``seed`` gives the same puzzles (resume relies on it)."""
    from puzzles import categories

    rng = random.Random(f"distill:{seed}")
    out, failures = [], collections.Counter()
    for i in range(n * 3):
        if len(out) == n:
            break
        category = CATEGORIES[i % len(CATEGORIES)]
        try:
            p = categories.generate(category, rng)
        except Exception:  # noqa: BLE001 -- a broken generator must not stop the other categories
            failures[category] += 1
            continue
        p.id = f"distill-{seed}-{len(out):06d}"
        out.append(p)
    if failures:
        console.print(f"[yellow]distill: generator failures {dict(failures)}")
    return out


# ---------------------------------------------------------------------------------------------- verify


def select(puzzle: Puzzle, candidates: list[dict], keep: int) -> tuple[list[dict], dict]:
    """(SFT rows, pass-rate row) for one puzzle's candidates (dicts with text, n_tokens, finish_reason).

    Pass rate counts candidates the strict metric accepts; rows come only from correct candidates that
    stopped on their own and are well formatted, shortest first, distinct reasoning only."""
    correct = [c for c in candidates if score(c["text"], puzzle.answer, strict=True)]
    traces = sorted(
        (c for c in correct if c["finish_reason"] == "stop" and well_formatted(c["text"])),
        key=lambda c: c["n_tokens"],
    )
    rows, seen = [], set()
    for c in traces:
        reasoning = c["text"].split(THINK_CLOSE)[0].strip()
        if not reasoning or reasoning in seen:
            continue
        seen.add(reasoning)
        row = sft_row(puzzle, trace_completion(reasoning, puzzle.answer), "distill", "verified",
                      n_tokens=c["n_tokens"], k=len(candidates), n_correct=len(correct))
        rows.append(row)
        if len(rows) == keep:
            break
    rate = len(correct) / len(candidates) if candidates else 0.0
    stats = {
        "id": puzzle.id, "category": puzzle.category, "prompt": puzzle.prompt, "answer": puzzle.answer,
        "k": len(candidates), "correct": len(correct), "pass_rate": rate, "kept": len(rows),
        "truncated": sum(c["finish_reason"] == "length" for c in candidates),
        "mean_tokens": sum(c["n_tokens"] for c in candidates) / max(1, len(candidates)),
    }
    return rows, stats


def goldilocks(passrates: list[dict], low: float, high: float) -> list[dict]:
    """Prompts solved sometimes but not always: pass rate within [low, high]."""
    eps = 1e-9  # 0.2 stored as 1/5 must pass a 0.2 bound
    return [r for r in passrates if low - eps <= r["pass_rate"] <= high + eps]


# ----------------------------------------------------------------------------------------------- cache


def read_cache(path: Path) -> dict[str, dict]:
    """Cached records (``cache_record``) by puzzle id. A last line cut by a kill is skipped (and cut off before
    the next append), so its puzzle is generated again."""
    return {r["id"]: r for r in read_jsonl(path)}


def cache_path(out_dir: Path) -> Path:
    """This process's cache: ``generations.jsonl``, or ``generations.rank{r}.jsonl`` in a run of N processes."""
    n = distributed.world()
    return Path(out_dir) / (CACHE if n == 1 else f"generations.rank{distributed.rank()}.jsonl")


def read_caches(out_dir: Path) -> dict[str, dict]:
    """Every cache record of ``out_dir`` (one process's and each rank's), by puzzle id, so that a resume with
    another number of processes redoes nothing; a line cut short by a crash is skipped (its owner cuts it off
    before appending)."""
    done = {}
    for f in sorted(Path(out_dir).glob("generations*.jsonl")):
        done.update(read_cache(f))
    return done


# ------------------------------------------------------------------------------------------------- run


def histogram(passrates: list[dict], k: int, out: Path) -> Path:
    """Pass-rate histogram, stacked by category (one bin per possible count of correct candidates)."""
    from fastnemo.plots import pyplot, save_png

    plt = pyplot()
    cats = [c for c in CATEGORIES if any(r["category"] == c for r in passrates)]
    data = [[r["pass_rate"] for r in passrates if r["category"] == c] for c in cats]
    bins = [(i - 0.5) / k for i in range(k + 2)]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    if data:
        ax.hist(data, bins=bins, stacked=True, label=cats)
        ax.legend(fontsize=7)
    ax.set_xlabel(f"pass rate (k = {k})")
    ax.set_ylabel("prompts")
    ax.set_title("self-distillation pass rates")
    fig.tight_layout()
    return save_png(fig, out)


def run(session, recipe: Recipe, out_dir: Path, seed: int = 0, log=None) -> dict:
    """Distill ``session``'s model on the recipe's prompts into ``out_dir`` (resumable); returns a summary. In a
    run of N processes (``fastnemo.distributed``) each samples its round-robin shard into its own cache, and
    rank 0 writes the outputs from all of them (the same files one process writes)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    puzzles = load_prompts(recipe, seed)
    mine = cache_path(out_dir)
    done = read_caches(out_dir)
    distributed.barrier()  # everyone has read before anyone appends
    t0 = time.time()
    sample(session, recipe.distill, distributed.shard(puzzles), done, mine, seed,
           positions={p.id: i for i, p in enumerate(puzzles)}, log=log)
    distributed.barrier()
    return distributed.on_main(lambda: finish(puzzles, read_caches(out_dir), recipe.distill, out_dir,
                                              seconds=time.time() - t0))


def sample(session, cfg, puzzles: list[Puzzle], done: dict[str, dict], cache_path: Path, seed: int,
           positions: dict[str, int] | None = None, log=None) -> None:
    """Sample the ``puzzles`` not in ``done`` (cache records by id), appending each batch to ``cache_path``
    and to ``done``. ``positions``: each puzzle's index in the whole prompt list (default: in ``puzzles``),
    which seeds its batch: a resume, or a shard of the list, samples the same way."""
    position = positions or {p.id: i for i, p in enumerate(puzzles)}
    todo = [p for p in puzzles if p.id not in done]
    # A call is the unit of the cache. The hf engine splits it into batch_size // k prompts itself; vLLM
    # schedules batch_size sequences at a time and wants a deep queue, so stragglers don't idle the batch.
    gen = session.gen_cfg
    per_call = max(1, (8 if gen.engine == "vllm" else 1) * gen.batch_size // cfg.k)
    session.engine.wake()
    t0, tokens, n_done = time.time(), 0, len(puzzles) - len(todo)
    with task("distill", len(puzzles), unit="prompt") as advance:
        advance(n_done)
        for start in range(0, len(todo), per_call):
            batch = todo[start : start + per_call]
            # the seed follows the first puzzle, not the position in todo: a resume samples the same way
            sampling = SamplingConfig(n=cfg.k, temperature=cfg.temperature, top_p=1.0,
                                      max_tokens=cfg.max_tokens, seed=call_seed(seed, position[batch[0].id]))
            outputs = session.generate([p.prompt for p in batch], sampling)
            records = []
            for p, cands in zip(batch, outputs, strict=True):
                cands = [{"text": c.text, "n_tokens": c.n_tokens, "finish_reason": c.finish_reason} for c in cands]
                records.append(cache_record(p, cands, cfg.keep))
                tokens += sum(c["n_tokens"] for c in cands)
            append_jsonl(cache_path, records)  # only then is the batch done: a kill before it redoes it
            done.update((r["id"], r) for r in records)
            n_done += len(batch)
            rate = sum(r["correct"] for r in records) / max(1, sum(r["k"] for r in records))
            advance(len(batch), info=f"batch pass {rate:.0%}")
            if log:
                log({"distill/done": n_done, "distill/batch_pass_rate": rate,
                     "distill/tokens_per_s": tokens / max(1e-9, time.time() - t0)})


def cache_record(puzzle: Puzzle, candidates: list[dict], keep: int) -> dict:
    """What the cache keeps of one puzzle's candidates: the verified rows and the counts, not every text
    (150k prompts x k long candidates would be gigabytes)."""
    rows, stats = select(puzzle, candidates, keep)
    return {"id": puzzle.id, "rows": rows, **{k: stats[k] for k in ("k", "correct", "truncated", "mean_tokens")}}


def finish(puzzles: list[Puzzle], done: dict[str, dict], cfg, out_dir: Path, seconds: float = 0.0) -> dict:
    """Write traces, pass rates, the Goldilocks set and the histogram from the cached records."""
    traces, passrates = [], []
    for p in puzzles:
        r = done[p.id]
        traces += r["rows"]
        passrates.append({"id": p.id, "category": p.category, "prompt": p.prompt, "answer": p.answer,
                          "k": r["k"], "correct": r["correct"], "pass_rate": r["correct"] / max(1, r["k"]),
                          "kept": len(r["rows"]), "truncated": r["truncated"], "mean_tokens": r["mean_tokens"]})
    gold = goldilocks(passrates, cfg.goldilocks_low, cfg.goldilocks_high)
    out = artifacts(out_dir)
    write_jsonl(out["traces"], traces)
    write_jsonl(out_dir / "passrates.jsonl", passrates)
    write_jsonl(out["goldilocks"],
                [{k: r[k] for k in ("id", "category", "prompt", "answer", "pass_rate")} for r in gold])
    histogram(passrates, cfg.k, out_dir / "passrates.png")
    per_cat = collections.defaultdict(list)
    for r in passrates:
        per_cat[r["category"]].append(r["pass_rate"])
    n_cand = sum(r["k"] for r in passrates)
    summary = {
        "prompts": len(puzzles),
        "candidates": n_cand,
        "pass_rate": sum(r["correct"] for r in passrates) / max(1, n_cand),
        "solved_any": sum(r["correct"] > 0 for r in passrates),
        "traces": len(traces),
        "goldilocks": len(gold),
        "truncated_share": sum(r["truncated"] for r in passrates) / max(1, n_cand),
        "per_category": {c: sum(v) / len(v) for c, v in sorted(per_cat.items())},
        "seconds": round(seconds, 1),
    }
    console.print(
        f"distill: {summary['prompts']} prompts, pass rate {summary['pass_rate']:.1%}, "
        f"{summary['traces']} traces kept, {summary['goldilocks']} Goldilocks prompts"
    )
    return summary


# ----------------------------------------------------------------------------------------------- mix


def mix_next(traces_path, prev_sft_path, out_path, carry_share: float, seed: int = 0,
             floor: int | None = None) -> dict:
    """The next round's SFT set: every new trace plus ``carry_share`` of the previous SFT rows.

    Deduplicated by prompt (a new trace wins over a carried row of the same puzzle). Category floors: each
    category of the previous data ends with at least ``floor`` rows when the previous data has them
    (default: half an equal share of the output), topped up from the previous rows not carried, so a
    category the model cannot solve yet does not vanish from training."""
    rng = random.Random(f"mix_next:{seed}")
    new = read_jsonl(traces_path, strict=True)
    prev = read_jsonl(prev_sft_path, strict=True)
    out, seen = [], set()
    for r in new:
        key = prompt_key(r["prompt"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    pool = [r for r in prev if prompt_key(r["prompt"]) not in seen]
    duplicates = len(new) + len(prev) - len(out) - len(pool)
    rng.shuffle(pool)
    n_carry = min(len(pool), round(carry_share * len(prev)))
    carried, rest = pool[:n_carry], pool[n_carry:]
    out += carried
    counts = collections.Counter(r["category"] for r in out)
    cats = sorted({r["category"] for r in prev})
    if floor is None:
        floor = math.ceil(0.5 * len(out) / max(1, len(cats))) if cats else 0
    topped = 0
    for r in rest:
        if counts[r["category"]] < floor and prompt_key(r["prompt"]) not in seen:
            seen.add(prompt_key(r["prompt"]))
            out.append(r)
            counts[r["category"]] += 1
            topped += 1
    rng.shuffle(out)
    write_jsonl(out_path, out)
    return {"rows": len(out), "new": len(new), "carried": len(carried), "topped_up": topped,
            "duplicates": duplicates, "floor": floor, "per_category": dict(sorted(counts.items()))}
