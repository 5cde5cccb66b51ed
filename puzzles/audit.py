"""Static audit of SFT traces: what code can check about whether a trace is learnable.

For each row of an SFT JSONL:

- metric: the completion scores correct under the official metric (``puzzles.metric.score``);
- no hidden computation: every line is an ``AuditStep``. The generic checks (``puzzles.claims``) re-compute
  arithmetic chains (``a op b = c = ...``, each ``=``-separated segment that is pure arithmetic must agree with
  the next one to the precision the right side is written in) and roundings (``6.689088 -> 6.69``). A
  category module may add ``audit(puzzle, reasoning) -> list[AuditStep]`` for its own step kinds (table
  lookups, substitutions, bit operations); its verdict on a line replaces the generic one. A line that states something (has ``=``
  or ``->``) that nobody re-derived is a leap, counted by category and kind;
- referential integrity: each number a line uses on the left of its first ``=`` appears in the prompt or an
  earlier line (or is a place-value part of one: ``17.83`` licenses ``17`` and ``0.83``);
- length: tokens per category (p50/p95/p99/max) with a given tokenizer and an estimate of the real one
  (``puzzles.traces.estimate_real_tokens``: an upper-leaning estimate for digit-heavy traces, stated as such
  in the report).
"""

from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Any

from puzzles.base import AuditStep, Puzzle
from puzzles.claims import NUMBER, arithmetic_claims
from puzzles.files import InputError
from puzzles.metric import extract_answer, score
from puzzles.traces import THINK_CLOSE, estimate_real_tokens

BUDGET = 7680  # max_tokens of the competition's sampling
_SMALL = {str(i) for i in range(11)} | {"0.5"}


class AuditError(InputError):
    """An SFT file the audit cannot read: names the file and row."""


# ------------------------------------------------------------------------------------------ references


def _licensed(known: set[str]) -> set[str]:
    out = set(known) | _SMALL
    for k in known:
        if "." in k:
            whole, frac = k.lstrip("-").split(".")
            out |= {whole, "0." + frac, "-" + whole}
    return out


def unreferenced(prompt: str, lines: list[str], rederived: set[int] = frozenset()) -> list[tuple[int, str]]:
    """(line number, number) pairs a line uses (left of its first ``=`` or ``->``) before anything stated it.
    Lines in ``rederived`` are skipped: a category's own audit rebuilt them whole from earlier lines (a
    cryptarithm query "15-08" is its symbols read through the stated digit table, not a number from nowhere)."""
    ok = _licensed(set(NUMBER.findall(prompt)))
    bad = []
    for i, line in enumerate(lines):
        left = re.split(r"=|->", line, maxsplit=1)[0] if ("=" in line or "->" in line) else ""
        bad += [(i, n) for n in NUMBER.findall(left) if n not in ok and i not in rederived]
        ok |= _licensed(set(NUMBER.findall(line)))
    return bad


# ------------------------------------------------------------------------------------------ one row


def reasoning_of(completion: str) -> str:
    return completion.split(THINK_CLOSE)[0]


def category_steps(puzzle: Puzzle, reasoning: str) -> list[AuditStep]:
    """The category module's own verdicts (``audit(puzzle, reasoning)``), or none where it has no auditor."""
    from puzzles import categories

    own = getattr(categories.module(puzzle.category), "audit", None)
    return own(puzzle, reasoning) if own is not None else []


def audit_steps(puzzle: Puzzle, reasoning: str, own: list[AuditStep]) -> list[AuditStep]:
    """Generic verdicts per line, replaced line by line by the category module's own (``category_steps``)."""
    lines = reasoning.split("\n")
    steps: dict[int, AuditStep] = {}
    for i, line in enumerate(lines):
        verdicts = arithmetic_claims(line)
        if verdicts is not None and not all(verdicts) and _restates(puzzle.prompt, line):
            steps[i] = AuditStep(i, "restated", True, line)  # the prompt's own (alien) equations, quoted
        elif verdicts is not None:
            steps[i] = AuditStep(i, "arithmetic" if all(verdicts) else "arithmetic_wrong", all(verdicts), line)
        elif "=" in line or "->" in line:
            steps[i] = AuditStep(i, "unchecked", False, line)
    for s in own:
        s.text = s.text or (lines[s.line] if 0 <= s.line < len(lines) else "")
        steps[s.line] = s
    return [steps[i] for i in sorted(steps)]


def _restates(prompt: str, line: str) -> bool:
    """Every ``a op b = c`` on the line is quoted from the prompt (an equations example, not our arithmetic)."""
    claims = [c.strip("(;,.") for c in re.findall(r"\S+ ?= ?\S+", line.split("': ", 1)[-1])]
    flat = prompt.replace(" ", "")
    return bool(claims) and all(c.replace(" ", "") in flat for c in claims)


def audit_row(row: dict, tokenize=None) -> dict[str, Any]:
    """The audit record of one SFT row."""
    from puzzles import categories

    puzzle = categories.parse(row["prompt"])
    puzzle.answer = row["answer"]
    reasoning = reasoning_of(row["completion"])
    own = category_steps(puzzle, reasoning)
    steps = audit_steps(puzzle, reasoning, own)
    text = row["completion"]
    return {
        "id": row["id"],
        "category": row["category"],
        "metric_ok": score(text, row["answer"]),
        "read": extract_answer(text),
        "steps": len(steps),
        "leaps": [(s.kind, s.line, s.text[:160]) for s in steps if not s.derived],
        "derived": collections.Counter(s.kind for s in steps if s.derived),
        "unreferenced": unreferenced(row["prompt"], reasoning.split("\n"), {s.line for s in own if s.derived}),
        "tokens": len(tokenize(text)) if tokenize else None,
        "est_tokens": estimate_real_tokens(text),
    }


# ------------------------------------------------------------------------------------------ a file


def read_rows(path: str | Path) -> list[dict]:
    """SFT rows with the fields the audit needs; AuditError naming the file and row otherwise."""
    from puzzles.files import JsonlError, read_jsonl

    try:
        rows = read_jsonl(path, strict=True)
    except JsonlError as e:
        raise AuditError(str(e)) from None
    for n, row in enumerate(rows, 1):
        missing = [k for k in ("id", "category", "prompt", "answer", "completion") if not row.get(k)]
        if missing:
            raise AuditError(f"{path}: row {n}: missing or empty {missing}")
        not_text = [k for k in ("id", "category", "prompt", "answer", "completion") if not isinstance(row[k], str)]
        if not_text:
            raise AuditError(f"{path}: row {n}: {not_text} must be strings")
        if THINK_CLOSE not in row["completion"]:
            raise AuditError(f"{path}: row {n} ({row['id']!r}): completion has no {THINK_CLOSE} final answer line")
    if not rows:
        raise AuditError(f"{path}: no rows")
    return rows


def _pct(xs: list[int], q: float) -> int:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else 0


def summarize(records: list[dict], tokenizer_name: str | None) -> dict[str, Any]:
    """Per category: rows, metric failures, steps, leaps by kind, unreferenced numbers, token percentiles."""
    by = collections.defaultdict(list)
    for r in records:
        by[r["category"]].append(r)
        by["all"].append(r)
    out: dict[str, Any] = {"tokenizer": tokenizer_name, "budget": BUDGET, "categories": {}}
    for cat in sorted(set(by) - {"all"}) + ["all"]:
        rs = by[cat]
        leaps = collections.Counter(k for r in rs for k, *_ in r["leaps"])
        derived = collections.Counter()
        for r in rs:
            derived.update(r["derived"])
        worst = sorted((x for r in rs for x in r["leaps"]), key=lambda x: x[0])
        entry = {
            "rows": len(rs),
            "metric_fail": sum(not r["metric_ok"] for r in rs),
            "steps": sum(r["steps"] for r in rs),
            "derived": dict(derived),
            "leaps": dict(leaps),
            "leap_rows": sum(bool(r["leaps"]) for r in rs),
            "unreferenced": sum(len(r["unreferenced"]) for r in rs),
            "examples": [{"id": r["id"], "read": r["read"]} for r in rs if not r["metric_ok"]][:5],
            "leap_examples": [list(x) for x in worst[:5]],
        }
        for key in ("tokens", "est_tokens"):
            xs = [r[key] for r in rs if r[key] is not None]
            if xs:
                entry[key] = {"p50": _pct(xs, 0.5), "p95": _pct(xs, 0.95), "p99": _pct(xs, 0.99), "max": max(xs),
                              "over_budget": sum(x > BUDGET for x in xs)}
        out["categories"][cat] = entry
    return out


_TOKENIZE = None  # set before forking the workers: a tokenizer is not cheap to pickle


def _audit_one(row: dict) -> tuple[dict | None, dict | None]:
    try:
        return audit_row(row, _TOKENIZE), None
    except Exception as e:  # noqa: BLE001 -- a row the parser rejects is a finding, listed by id
        return None, {"id": row["id"], "error": f"{type(e).__name__}: {e}"[:200]}


def audit_file(path: str | Path, tokenizer=None, progress: bool = False, workers: int = 1) -> dict[str, Any]:
    """Audit every row of an SFT JSONL (rows that fail to parse are reported by id, not fatal)."""
    import multiprocessing

    from rich.progress import track

    global _TOKENIZE
    rows = read_rows(path)
    _TOKENIZE = (lambda t: tokenizer(t, add_special_tokens=False)["input_ids"]) if tokenizer is not None else None
    if workers > 1:
        # One row of each category first, here: its lazy tables (the cryptarithm catalog takes minutes) are then
        # built once and inherited by every forked worker, not rebuilt in each.
        for row in {r["category"]: r for r in reversed(rows)}.values():
            _audit_one(row)
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            pairs = list(track(pool.imap(_audit_one, rows, chunksize=32), total=len(rows), description="auditing",
                               disable=not progress))
    else:
        pairs = [_audit_one(r) for r in track(rows, description="auditing", disable=not progress)]
    records = [r for r, _ in pairs if r is not None]
    summary = summarize(records, getattr(tokenizer, "name_or_path", None))
    summary["file"], summary["unparsed"] = str(path), [e for _, e in pairs if e is not None]
    return summary


# ------------------------------------------------------------------------------------------ report


def print_table(summary: dict[str, Any], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"trace audit of {summary['file']}" + (f" ({len(summary['unparsed'])} rows unparsed)"
                                                          if summary["unparsed"] else ""))
    for col in ("category", "rows", "metric fail", "steps", "derived", "leaps (by kind)", "leap rows",
                "unreferenced", "tokens p50/p95/p99/max", "est. real p50/p95/p99/max", "over 7680"):
        t.add_column(col, justify="left" if col in ("category", "leaps (by kind)") else "right")
    for cat, e in summary["categories"].items():
        def pct(key, e=e):
            q = e.get(key)
            return "/".join(str(q[k]) for k in ("p50", "p95", "p99", "max")) if q else "-"
        over = (e.get("tokens") or e.get("est_tokens") or {}).get("over_budget", 0)
        t.add_row(cat, str(e["rows"]), str(e["metric_fail"]), str(e["steps"]), str(sum(e["derived"].values())),
                  ", ".join(f"{k}={v}" for k, v in sorted(e["leaps"].items())) or "0", str(e["leap_rows"]),
                  str(e["unreferenced"]), pct("tokens"), pct("est_tokens"), str(over))
    (console or Console()).print(t)


def plot(summary: dict[str, Any], path: Path) -> None:
    """Derived vs leap steps per category (left) and token p50/p95/p99 against the budget (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = [c for c in summary["categories"] if c != "all"]
    e = summary["categories"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    derived = [sum(e[c]["derived"].values()) for c in cats]
    leaps = [sum(e[c]["leaps"].values()) for c in cats]
    a.barh(cats, derived, label="derived", color="tab:green")
    a.barh(cats, leaps, left=derived, label="leap", color="tab:red")
    a.set_title("trace steps per category")
    a.legend()
    key = "tokens" if any("tokens" in e[c] for c in cats) else "est_tokens"
    for i, q in enumerate(("p50", "p95", "p99")):
        b.barh([j + 0.25 * i for j in range(len(cats))], [e[c].get(key, {}).get(q, 0) for c in cats], height=0.25,
               label=q)
    b.axvline(BUDGET, color="k", ls="--", label=f"budget {BUDGET}")
    b.set_yticks(range(len(cats)), cats)
    b.set_title(f"completion length ({key})")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
