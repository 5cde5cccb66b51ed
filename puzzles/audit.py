"""Static audit of SFT traces: what code can check about whether a trace is learnable.

For each row of an SFT JSONL:

- metric: the completion scores correct under the official metric (``puzzles.metric.score``);
- no hidden computation: every line is an ``AuditStep``. The generic checks re-compute arithmetic chains
  (``a op b = c = ...``, each ``=``-separated segment that is pure arithmetic must agree with the next one to
  the precision the right side is written in) and roundings (``6.689088 -> 6.69``). A category module may
  add ``audit(puzzle, reasoning) -> list[AuditStep]`` for its own step kinds (table lookups, substitutions,
  bit operations); its verdict on a line replaces the generic one. A line that states something (has ``=``
  or ``->``) that nobody re-derived is a leap, counted by category and kind;
- referential integrity: each number a line uses on the left of its first ``=`` appears in the prompt or an
  earlier line (or is a place-value part of one: ``17.83`` licenses ``17`` and ``0.83``);
- length: tokens per category (p50/p95/p99/max) with a given tokenizer and an estimate of the real one.

The real Nemotron tokenizer is not available offline; ``estimate_real_tokens`` counts one token per digit,
per letter run, per other symbol and per newline (single-digit splitting, whole common words): an upper-
leaning estimate for digit-heavy traces, stated as such in the report.
"""

from __future__ import annotations

import ast
import collections
import itertools
import math
import operator
import re
from pathlib import Path
from typing import Any

from fastnemo.files import InputError
from puzzles.base import AuditStep, Puzzle
from puzzles.metric import extract_answer, score
from puzzles.traces import THINK_CLOSE

BUDGET = 7680  # max_tokens of the competition's sampling
_NUM = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w])")
_ARITH = re.compile(r"^[\d.\s+\-*/()^]+$")
_ROUND = re.compile(r"(-?\d+\.\d+)\s*->\s*(-?\d+(?:\.\d+)?)\b")
_SMALL = {str(i) for i in range(11)} | {"0.5"}


class AuditError(InputError):
    """An SFT file the audit cannot read: names the file and row."""


# ------------------------------------------------------------------------------------------ arithmetic


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow}
MAX_EXPR = 200  # characters: an arithmetic claim in a trace is short; model outputs can be anything


def _value(node: ast.AST) -> float:
    """An arithmetic tree in floats: ``9^9^9`` overflows at once (OverflowError) instead of building a
    369-million-digit integer, and nothing but numbers and + - * / ^ is evaluated."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        v = _value(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_value(node.left), _value(node.right))
    raise ValueError("not arithmetic")


def _eval(expr: str) -> float | None:
    """Value of a pure arithmetic segment (numbers, + - * / ^, parentheses), else None."""
    e = expr.strip()
    if not e or len(e) > MAX_EXPR or not _ARITH.match(e) or not re.search(r"\d", e):
        return None
    try:
        v = _value(ast.parse(e.replace("^", "**"), mode="eval").body)
    except Exception:  # noqa: BLE001 -- "2 3", "1/0", an overflow: not a claim the auditor can read
        return None
    return v if isinstance(v, float) and math.isfinite(v) else None


def _decimals(s: str) -> int:
    m = re.search(r"\.(\d+)\s*$", s.strip())
    return len(m.group(1)) if m else 0


def _agree(left: float, right_text: str, right: float) -> bool:
    """``left`` written to ``right_text``'s precision: within half a unit of its last digit (rounded or cut)."""
    unit = 10.0 ** -_decimals(right_text)
    return abs(left - right) <= unit + 1e-9 * max(1.0, abs(right))


def arithmetic_claims(line: str) -> list[bool] | None:
    """Verdicts of each arithmetic claim a line makes (equality chains and roundings); None: it makes none."""
    verdicts = []
    for chunk in re.split(r"[;,]|:\s", line):  # "11:92" is an equations operator, not a label
        segs = re.split(r"(?<![<>!])=(?!=)", chunk.split("->")[0])
        vals = [(s, _eval(s)) for s in segs]
        for (_, a), (bt, b) in itertools.pairwise(vals):
            if a is not None and b is not None:
                verdicts.append(_agree(a, bt, b) or _agree(b, bt, a))
    for x, y in _ROUND.findall(line):
        verdicts.append(abs(float(x) - float(y)) <= 0.5 * 10.0 ** -_decimals(y) + 1e-9)
    return verdicts or None


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
    ok = _licensed(set(_NUM.findall(prompt)))
    bad = []
    for i, line in enumerate(lines):
        left = re.split(r"=|->", line, maxsplit=1)[0] if ("=" in line or "->" in line) else ""
        bad += [(i, n) for n in _NUM.findall(left) if n not in ok and i not in rederived]
        ok |= _licensed(set(_NUM.findall(line)))
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


def estimate_real_tokens(text: str) -> int:
    """Estimated real-tokenizer length (see the module doc): digits, letter runs, symbols, newlines."""
    return len(re.findall(r"\d|[A-Za-z]+|[^\sA-Za-z\d]|\n", text))


# ------------------------------------------------------------------------------------------ a file


def read_rows(path: str | Path) -> list[dict]:
    """SFT rows with the fields the audit needs; AuditError naming the file and row otherwise."""
    from fastnemo.files import JsonlError, read_jsonl

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
            raise AuditError(f"{path}: row {n} ({row['id']}): completion has no {THINK_CLOSE} final answer line")
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


# ------------------------------------------------------------------------------------------ shared by units/gravity

_CHOICE = re.compile(r"\b(f|g) = (-?\d+(?:\.\d+)?) fits every example after rounding(?:, so 0\.5 \* g = (\d+(?:\.\d+)?))?")
_GIVEN = re.compile(r"-> (-?\d+\.\d+), given (-?\d+(?:\.\d+)?), matches\.$")
_ROUNDED = re.compile(r"^Rounded to 2 decimals: (-?\d+(?:\.\d+)?)$")


def _rounds_to(exact: str, rounded: str) -> bool:
    """``exact`` rounds to ``rounded`` at 2 decimals under EVERY rounding convention: strictly within half a
    cent. A product exactly on a half cent is a tie that the convention decides (ours half-up, the
    generator's binary float ``round``), so a trace that claims a match there states what may be false."""
    from decimal import Decimal

    return abs(Decimal(exact) - Decimal(rounded)) < Decimal("0.005")


def fit_steps(lines: list[str], examples: list[tuple[str, str]], product) -> list[AuditStep]:
    """Steps of a fitted-constant trace: the constant's choice (re-checked on every example: the exact
    ``product(constant, x)`` must round to its output, ties excluded), each "P -> R, given Y, matches" (R must
    be Y, Y that example's output in the prompt, and P must round to R: no tie) and the final rounding (of the
    previous line's last number, no tie)."""
    from decimal import Decimal

    outputs = [str(y) for _, y in examples]
    steps = []
    for i, line in enumerate(lines):
        if m := _CHOICE.search(line):
            c = Decimal(m.group(2))
            ok = all(_rounds_to(str(product(c, Decimal(str(x)))), y) for x, y in examples)
            if m.group(3) is not None:
                ok = ok and Decimal(m.group(3)) == c / 2
            steps.append(AuditStep(i, "choice", ok, line))
        elif m := _GIVEN.search(line):
            claims = arithmetic_claims(line) or [True]
            stated = _NUM.findall(line.split("->")[0])
            ok = (all(claims) and m.group(1) == m.group(2) and m.group(2) in outputs and bool(stated)
                  and _rounds_to(stated[-1], m.group(1)))
            steps.append(AuditStep(i, "verify", ok, line))
        elif (m := _ROUNDED.match(line)) and i > 0:
            prev = _NUM.findall(lines[i - 1])
            ok = bool(prev) and _rounds_to(prev[-1], m.group(1))
            steps.append(AuditStep(i, "rounding", ok, line))
    return steps


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
