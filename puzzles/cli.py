"""``data``: the Click group for puzzle data (mounted by the lead as ``fastnemo data``).

    data build --n 100000 --like train.csv --floor 5000 --out data/sft.jsonl
    data solve test.csv --out predictions.csv [--traces traces.jsonl]
    data audit data/sft.jsonl --out reports/audit [--tokenizer MODEL_DIR]
    data analyze train.csv --out reports/train
    data teacher train.csv --out data/teacher.jsonl --base-url https://host/v1 --model NAME
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from puzzles.base import CATEGORIES

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def _console():
    from puzzles.analyze import _console

    return _console()


def _load(path: Path, require_answer: bool = False, skip_bad: bool = False):
    from puzzles.dataset import DatasetError, read_csv

    try:
        load = read_csv(path, require_answer=require_answer, skip_bad=skip_bad)
    except DatasetError as e:
        raise click.ClickException(str(e)) from None
    if load.skipped:
        click.echo(f"skipped {len(load.skipped)} bad row(s) of {path}: {load.skipped_by_reason()}", err=True)
    if not load.puzzles:
        raise click.ClickException(f"{path}: no usable rows")
    return load.puzzles


@click.group("data")
def data() -> None:
    """Puzzle data: build SFT mixes, solve CSVs, analyze files, collect teacher traces."""


@data.command()
@click.option("--n", "n", type=click.IntRange(min=1), required=True, help="Rows in the mix.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Output JSONL (SFT rows); OUT.stats.json is written beside it.")
@click.option("--like", type=_FILE, default=None,
              help="Reference CSV (e.g. train.csv) whose category shares and difficulty features to match; "
                   "its prompts are kept out of the mix. Default: equal shares, generator defaults.")
@click.option("--floor", type=click.IntRange(min=0), default=0, show_default=True,
              help="Minimum rows per category.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Processes.")
@click.option("--include-guessed", is_flag=True,
              help="Also keep rows the solver only guessed (right). Default: deduced rows only.")
@click.option("--keep-guessed", "keep_guessed", multiple=True, type=click.Choice(CATEGORIES),
              help="Categories whose guessed rows are kept when exactly right (repeatable). Default: "
                   "unit_conversion and gravity, whose guesses only leave the last digit open.")
@click.option("--category", "categories", multiple=True, type=click.Choice(CATEGORIES),
              help="Build only these categories (repeatable). Default: all six.")
@click.option("--shard-size", type=click.IntRange(min=1), default=500, show_default=True,
              help="Rows per work unit; an interrupted build rerun with the same arguments resumes per shard.")
@click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Wall-clock budget: stop generating then and write what is done (reported as short).")
def build(n, out, like, floor, seed, workers, include_guessed, keep_guessed, categories, shard_size,
          max_minutes) -> None:
    """Generate, solve and trace N puzzles into an SFT JSONL mix.

    Each generated prompt is parsed back from its text and solved like a real puzzle; rows the solver
    abstains on or gets wrong are dropped and counted (see OUT.stats.json)."""
    from puzzles.mix import KEEP_GUESSED, MixConfig, build_mix

    cats = tuple(categories) or CATEGORIES
    if floor * len(cats) > n:
        raise click.ClickException(f"--floor {floor} x {len(cats)} categories exceeds --n {n}")
    cfg = MixConfig(n=n, out=str(out), like=str(like) if like else None, floor=floor, seed=seed,
                    workers=workers, statuses=("deduced", "guessed") if include_guessed else ("deduced",),
                    keep_guessed=tuple(keep_guessed) or KEEP_GUESSED,
                    categories=cats, shard_size=shard_size, max_minutes=max_minutes,
                    progress=sys.stderr.isatty())
    try:
        summary = build_mix(cfg)
    except (ValueError, OSError) as e:
        raise click.ClickException(str(e)) from None
    _print_build(summary)
    if summary["short"]:
        raise click.ClickException(f"mix came short of its quotas: {summary['short']} (see {out}.stats.json)")


def _print_build(s: dict) -> None:
    from rich.table import Table

    t = Table(title=f"{s['out']}: {s['rows']} rows in {s['seconds']:.1f} s ({s['rows_per_second']} rows/s, "
                    f"{s['workers']} workers)")
    for col in ("category", "quota", "kept", "generated", "abstained", "wrong", "guessed dropped", "other"):
        t.add_column(col, justify="left" if col == "category" else "right")
    for cat, quota in s["quotas"].items():
        f = dict(s["funnel"].get(cat, {}))
        wrong = f.pop("wrong_deduced", 0) + f.pop("wrong_guessed", 0)
        row = [cat, str(quota), str(s["kept"][cat]), str(f.pop("generated", 0)), str(f.pop("abstained", 0)),
               str(wrong), str(f.pop("dropped_guessed", 0))]
        f.pop("kept", None)
        row.append(", ".join(f"{k}={v}" for k, v in f.items()))
        t.add_row(*row)
    console = _console()
    console.print(t)
    if s["wrong_deduced"]:
        console.print(f"[bold red]{s['wrong_deduced']} generated puzzle(s) were DEDUCED wrongly by a solver "
                      f"(dropped; examples under notable_failures in the stats file)[/]")


@data.command()
@click.argument("in_csv", type=_FILE)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Output CSV with columns id,prediction (empty where the solver abstains).")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--skip-bad", is_flag=True,
              help="Give unparseable prompts an empty prediction instead of failing.")
@click.option("--traces", "traces_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write, for each puzzle the solver deduces, the SFT row (trace) it would train on "
                   "(JSONL; answer = the gold where IN_CSV has one), for `data audit` and `traces score`.")
def solve(in_csv, out, workers, skip_bad, traces_out) -> None:
    """Run the rule solvers on IN_CSV (id,prompt[,answer]) and write their predictions.

    When IN_CSV has answers, also prints the solver outcome table."""
    from fastnemo.files import write_jsonl
    from puzzles.analyze import print_solver_table, solve_all, solver_table
    from puzzles.dataset import DatasetError, read_csv, write_csv

    try:
        raw = read_csv(in_csv, parse=False).puzzles  # every id, in order, parsed one by one below
    except DatasetError as e:
        raise click.ClickException(str(e)) from None
    parsed = {p.id: p for p in _load(in_csv, skip_bad=skip_bad)}
    if traces_out is None:
        records = solve_all(list(parsed.values()), workers=workers, progress=True, label="solving")
    else:
        records, rows = _solve_traced(list(parsed.values()), workers)
    pred = {r["id"]: r["prediction"] or "" for r in records}
    write_csv(out, ["id", "prediction"], [(p.id, pred.get(p.id, "")) for p in raw])
    if traces_out is not None:
        write_jsonl(traces_out, rows)
        skipped = sum(1 for r in records if r.get("not_teachable"))
        click.echo(f"wrote {traces_out}: {len(rows)} traces of deduced puzzles ({skipped} deduced cryptarithms "
                   f"skipped: no recall-and-verify trace reaches them, and the search is never a trace)", err=True)
    answered = sum(1 for v in pred.values() if v)
    click.echo(f"wrote {out}: {len(raw)} rows, {answered} answered, {len(raw) - answered} empty", err=True)
    if any(p.answer for p in parsed.values()):
        print_solver_table(solver_table(records), _console(), title=f"solvers on {in_csv}")


def _solve_traced(puzzles: list, workers: int) -> tuple[list[dict], list[dict]]:
    import multiprocessing

    from rich.progress import track

    from puzzles.analyze import solve_traced

    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pairs = list(track(pool.imap(solve_traced, puzzles, chunksize=8), total=len(puzzles),
                           description="solving + tracing", disable=not sys.stderr.isatty()))
    return [rec for rec, _ in pairs], [row for _, row in pairs if row is not None]


@data.command()
@click.argument("path", type=_FILE)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory for report.json and report.png (default: print only).")
@click.option("--no-solve", is_flag=True, help="Skip running the solvers (features and quirks only).")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
def analyze(path, out_dir, no_solve, workers) -> None:
    """Report on a competition CSV or an SFT JSONL: rows per category, difficulty features, answer-format
    quirks and, where answers exist, solver outcomes (deduced/guessed right or wrong, abstained)."""
    from fastnemo.files import JsonlError
    from puzzles import analyze as an
    from puzzles.dataset import DatasetError

    try:
        report = an.analyze(path, out_dir, solve=not no_solve, workers=workers, progress=True)
    except (DatasetError, JsonlError, KeyError) as e:
        raise click.ClickException(f"{path}: {e}") from None
    an.print_report(report)
    if out_dir:
        click.echo(f"wrote {out_dir / 'report.json'} and {out_dir / 'report.png'}", err=True)


@data.command()
@click.argument("in_csv", type=_FILE)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Output JSONL of teacher SFT rows (only replies whose answer passes the metric).")
@click.option("--base-url", required=True, help="API root with version, e.g. https://host/v1.")
@click.option("--model", required=True, help="Model name the endpoint serves.")
@click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True,
              help="Environment variable holding the API key (may be unset for local servers).")
@click.option("--cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Resumable reply cache (JSONL). Default: OUT with .cache.jsonl.")
@click.option("--only-unsolved", is_flag=True, help="Only puzzles the rule solvers do not deduce.")
@click.option("--category", "categories", multiple=True, type=click.Choice(CATEGORIES),
              help="Only these categories (repeatable).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many puzzles.")
@click.option("--samples", type=click.IntRange(min=1), default=1, show_default=True,
              help="Replies tried per puzzle until one is right.")
@click.option("--rps", type=float, default=2.0, show_default=True, help="Requests per second.")
@click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--max-tokens", type=click.IntRange(min=1), default=7680, show_default=True)
@click.option("--temperature", type=float, default=0.6, show_default=True)
@click.option("--price-in", type=float, default=0.0, show_default=True, help="USD per 1M prompt tokens.")
@click.option("--price-out", type=float, default=0.0, show_default=True, help="USD per 1M completion tokens.")
def teacher(in_csv, out, base_url, model, api_key_env, cache, only_unsolved, categories, limit, samples, rps,
            concurrency, max_tokens, temperature, price_in, price_out) -> None:
    """Collect teacher reasoning for IN_CSV (id,prompt,answer) from an OpenAI-compatible endpoint.

    Replies are cached as they arrive; rerunning the same command resumes without paying twice."""
    from fastnemo.files import write_jsonl
    from puzzles import teacher as tm

    puzzles = _load(in_csv, require_answer=True)
    if categories:
        puzzles = [p for p in puzzles if p.category in categories]
    if only_unsolved:
        from puzzles.analyze import solve_all

        recs = solve_all(puzzles, workers=2, progress=True, label="finding unsolved")
        puzzles = [p for p, r in zip(puzzles, recs) if r["outcome"] != "deduced_right"]
    puzzles = puzzles[:limit] if limit else puzzles
    cfg = tm.TeacherConfig(base_url=base_url, model=model, api_key_env=api_key_env, max_tokens=max_tokens,
                           temperature=temperature, samples=samples, rps=rps, concurrency=concurrency,
                           price_in_per_m=price_in, price_out_per_m=price_out)
    cache = cache or out.with_name(out.stem + ".cache.jsonl")
    try:
        rows, stats = tm.fill(puzzles, cfg, cache, progress=True)
    except tm.TeacherError as e:
        raise click.ClickException(f"{e} (replies so far are cached in {cache})") from None
    write_jsonl(out, rows)
    click.echo(json.dumps(stats, indent=1), err=True)
    click.echo(f"wrote {out}: {len(rows)} of {len(puzzles)} puzzles kept", err=True)


@data.command()
@click.argument("sft", type=_FILE)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory for audit.json and audit.png (default: print only).")
@click.option("--tokenizer", default=None,
              help="Tokenizer (folder or hub name) to count tokens with, e.g. the tiny model's folder.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
def audit(sft, out_dir, tokenizer, workers) -> None:
    """Static audit of SFT traces: official-metric check, leaps (lines no rule re-derives) by category and
    step kind, numbers used before stated, and token length per category against the 7,680 budget."""
    from puzzles import audit as au

    tok = None
    if tokenizer:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(tokenizer)
        except Exception as e:  # noqa: BLE001 -- any loader failure is the user's path or name
            raise click.ClickException(f"cannot load tokenizer {tokenizer}: {e}") from None
    try:
        summary = au.audit_file(sft, tok, progress=sys.stderr.isatty(), workers=workers)
    except au.AuditError as e:
        raise click.ClickException(str(e)) from None
    au.print_table(summary, _console())
    if out_dir:
        from fastnemo.files import write_json

        write_json(out_dir / "audit.json", summary)
        au.plot(summary, out_dir / "audit.png")
        click.echo(f"wrote {out_dir / 'audit.json'} and {out_dir / 'audit.png'}", err=True)


def main() -> None:  # ``python -m puzzles.cli`` for use before the lead mounts the group
    data()


if __name__ == "__main__":
    main()
