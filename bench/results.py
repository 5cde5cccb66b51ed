"""Device measurements as records: one JSON object a line in bench/results/<bench>.jsonl.

Every figure a table in bench/README.md or a rate in ``fastnemo.plan.RATES`` quotes is one of these records
(``python bench/results.py readme`` regenerates the README's results section from them;
tests/bench/test_results.py checks that it is current). Fields (``FIELDS``; extra keys are kept):
bench, variant, engine, backend, layers, gpu, memory_cap_gib, batch, prompt_len, new_tokens, tok_s,
peak_gib, date, plus ``id`` (what a RATES entry cites) and ``source`` (where a seeded figure came from).
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

from puzzles import files

RESULTS = Path(__file__).resolve().parent / "results"
FIELDS = ("bench", "variant", "engine", "backend", "layers", "gpu", "memory_cap_gib", "batch", "prompt_len",
          "new_tokens", "tok_s", "peak_gib", "date")


def record(bench: str, **fields) -> dict:
    """A record with every FIELDS key (None where it does not apply) and today's date unless given."""
    rec = {k: fields.pop(k, None) for k in FIELDS if k != "bench"}
    rec = {"bench": bench, **rec, **fields}
    rec["date"] = rec["date"] or datetime.date.today().isoformat()
    return rec


def append(path: str | Path, rec: dict) -> None:
    """Append one record (a line) to ``path``: a crash later in a run keeps what was measured."""
    missing = [k for k in FIELDS if k not in rec]
    if missing:
        raise ValueError(f"{path}: record lacks {missing}: {rec}")
    files.append_jsonl(path, [rec])


def load(root: str | Path = RESULTS) -> list[dict]:
    """Every record under ``root``, file by file, line by line; a bad line names its file and line."""
    out = []
    for path in sorted(Path(root).glob("*.jsonl")):
        for n, rec in enumerate(files.read_jsonl(path, strict=True), 1):  # a bad line: JsonlError names it
            missing = [k for k in FIELDS if k not in rec]
            if missing:
                raise ValueError(f"{path}:{n}: record lacks {missing}")
            out.append(rec)
    return out


def find(records: list[dict], rec_id: str) -> dict:
    hits = [r for r in records if r.get("id") == rec_id]
    if len(hits) != 1:
        raise KeyError(f"bench/results: {len(hits)} records with id {rec_id!r} (expected one)")
    return hits[0]


# ------------------------------------------------------------------------------------------ README tables

BEGIN, END = "<!-- results:begin (python bench/results.py readme) -->", "<!-- results:end -->"
COLUMNS = ("variant", "engine", "backend", "layers", "batch", "prompt_len", "new_tokens", "tok_s", "peak_gib",
           "sleep_s", "wake_s", "freed_gib",
           "memory_cap_gib", "date", "source")


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v).replace("|", "/")


def tables(records: list[dict]) -> str:
    """One markdown table per bench, in the records' order, with each record's ratio to its group's
    baseline (``baseline_of``: the id of the record it is compared with) where it names one."""
    by_id = {r["id"]: r for r in records if r.get("id")}
    parts = []
    for bench in dict.fromkeys(r["bench"] for r in records):
        rows = [r for r in records if r["bench"] == bench]
        cols = [c for c in COLUMNS if any(r.get(c) is not None for r in rows)] + ["vs baseline", "note"]
        parts.append(f"### {bench}\n")
        parts.append("| " + " | ".join(cols) + " |")
        parts.append("|" + "---|" * len(cols))
        for r in rows:
            base = by_id.get(r.get("baseline_of") or "")
            ratio = f"{r['tok_s'] / base['tok_s']:.2f}x" if base and r.get("tok_s") and base.get("tok_s") else "-"
            cells = [_cell(r.get(c)) for c in cols[:-2]] + [ratio, _cell(r.get("note"))]
            parts.append("| " + " | ".join(cells) + " |")
        parts.append("")
    return "\n".join(parts)


def render_readme(readme: str, records: list[dict]) -> str:
    if BEGIN not in readme or END not in readme:
        raise ValueError(f"bench/README.md: markers {BEGIN!r} ... {END!r} not found")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + BEGIN + "\n\n" + tables(records) + "\n" + END + tail


def main(argv: list[str]) -> int:
    if argv[:1] == ["readme"]:
        path = Path(__file__).resolve().parent / "README.md"
        path.write_text(render_readme(path.read_text(), load()))
        print(f"wrote {path}")
        return 0
    if argv[:1] == ["merge"] and len(argv) == 2:  # device records (lane dir) -> bench/results/<bench>.jsonl
        for rec in load(argv[1]):
            append(RESULTS / f"{rec['bench']}.jsonl", rec)
        return 0
    print("usage: python bench/results.py readme | merge DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
