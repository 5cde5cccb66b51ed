"""Reading competition CSVs, writing predictions, and the SFT row contract.

The SFT row format is the contract with fastnemo's trainer (JSONL, one object per line)::

    {"id", "category", "prompt", "answer", "completion", "source", "status", "features"}

``prompt`` is the raw puzzle text WITHOUT ``PROMPT_SUFFIX`` (the trainer adds it); ``completion`` is
``puzzles.traces.completion(trace_text, answer)``; ``source`` is "solver", "teacher" or "distill";
``status`` is "deduced" or "guessed".

SFT files are read and written through ``fastnemo.files`` (``read_jsonl(path, strict=True)``, ``write_jsonl``),
the one I/O layer: every write is atomic, so a killed run never leaves half a file under the final name.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from fastnemo.files import InputError, atomic_open, read_text
from puzzles.base import Puzzle, PuzzleFormatError
from puzzles.metric import extract_answer, score
from puzzles.traces import answer_tail

SFT_FIELDS = ("id", "category", "prompt", "answer", "completion", "source", "status", "features")
SOURCES = ("solver", "teacher", "distill")
STATUSES = ("deduced", "guessed", "verified")  # verified: a model sample checked against gold

# Real prompts are a few hundred characters; the default csv limit (128 KiB) is fine, but a malformed file
# with an unclosed quote swallows the rest of the file into one field, so keep the limit and report it.
csv.field_size_limit(max(csv.field_size_limit(), 1 << 20))


class DatasetError(InputError):
    """A file that cannot be read as asked; the message names the file, the row and the reason."""


@dataclasses.dataclass
class RowError:
    """One rejected CSV row: ``row`` counts data rows from 1 (the header is row 0), ``line`` is the line
    of the file where the row ends (prompts span several lines)."""

    path: str
    row: int
    line: int
    reason: str
    id: str = ""

    def __str__(self) -> str:
        who = f" (id {self.id!r})" if self.id else ""
        return f"{self.path}: row {self.row}{who}, line {self.line}: {self.reason}"


@dataclasses.dataclass
class CsvLoad:
    """What ``read_csv`` found: the parsed puzzles and the rows it skipped (only with ``skip_bad``)."""

    puzzles: list[Puzzle]
    skipped: list[RowError]

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(collections.Counter(e.reason.split(":")[0] for e in self.skipped))


def _parse_prompt(prompt: str) -> Puzzle:
    from puzzles import categories  # late: the registry imports every category module

    return categories.parse(prompt)


def iter_csv_rows(path: str | Path, require_answer: bool = False) -> Iterator[tuple[int, int, dict]]:
    """Yield ``(row_number, line_number, row_dict)`` for each data row after checking the header.
    Raises DatasetError for a missing file or a header without the needed columns."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    needed = ["id", "prompt"] + (["answer"] if require_answer else [])
    try:
        text = read_text(path)
    except InputError as e:
        raise DatasetError(str(e)) from None
    with io.StringIO(text, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in needed if c not in header]
        if missing:
            raise DatasetError(
                f"{path}: header {header} lacks column(s) {missing}; expected id,prompt"
                + (",answer" if require_answer else "[,answer]")
            )
        try:
            for i, row in enumerate(reader, start=1):
                yield i, reader.line_num, row
        except csv.Error as e:
            raise DatasetError(f"{path}: line {reader.line_num}: not valid CSV ({e})") from None


def _check_row(row: dict, require_answer: bool) -> str | None:
    """The reason a raw row is unusable, or None."""
    if None in row:  # DictReader puts surplus fields under the key None
        return f"extra column(s): {len(row[None])} more field(s) than the header"
    for col in ("id", "prompt") + (("answer",) if require_answer else ()):
        if row.get(col) is None:
            return f"missing column: no value for {col!r}"
    if not row["id"].strip():
        return "empty id"
    if not row["prompt"].strip():
        return "empty prompt"
    if require_answer and not row["answer"].strip():
        return "empty answer"
    return None


def read_csv(
    path: str | Path, require_answer: bool = False, skip_bad: bool = False, parse: bool = True
) -> CsvLoad:
    """Read a competition CSV (``id,prompt[,answer]``) into Puzzles.

    A malformed row (missing column, empty id/prompt/answer, duplicate id, a prompt no parser can place)
    raises DatasetError naming file, row and reason; with ``skip_bad`` it is skipped and recorded in
    ``CsvLoad.skipped`` instead. ``parse=False`` skips the category parsers (the puzzle then has category
    "" and no examples), for tools that only pass prompts through."""
    puzzles, skipped, seen = [], [], set()
    for rownum, line, row in iter_csv_rows(path, require_answer):
        reason = _check_row(row, require_answer)
        pid = (row.get("id") or "").strip()
        if reason is None and pid in seen:
            reason = "duplicate id"
        puzzle = None
        if reason is None:
            if parse:
                try:
                    puzzle = _parse_prompt(row["prompt"])
                except PuzzleFormatError as e:
                    reason = f"unparseable prompt: {e}"
            else:
                puzzle = Puzzle(id=pid, category="", prompt=row["prompt"], examples=[], query=None)
        if reason is not None:
            err = RowError(str(path), rownum, line, reason, pid)
            if not skip_bad:
                raise DatasetError(
                    str(err) + ("" if "unparseable" not in reason else " (use skip_bad to skip)")
                )
            skipped.append(err)
            continue
        seen.add(pid)
        puzzle.id = pid
        puzzle.prompt = row["prompt"]  # keep the exact text; parsers may normalise
        answer = row.get("answer")
        puzzle.answer = answer.strip() if answer and answer.strip() else None
        puzzles.append(puzzle)
    return CsvLoad(puzzles, skipped)


def load_csv(path: str | Path, require_answer: bool = False, skip_bad: bool = False) -> list[Puzzle]:
    """The puzzles of a competition CSV; see ``read_csv``. Skipped rows (``skip_bad``) are counted on
    stderr so they never vanish silently."""
    load = read_csv(path, require_answer=require_answer, skip_bad=skip_bad)
    if load.skipped:
        print(f"{path}: skipped {len(load.skipped)} bad row(s): {load.skipped_by_reason()}", file=sys.stderr)
    return load.puzzles


# ---------------------------------------------------------------------------------------------- writing


def write_csv(path: str | Path, header: list[str], rows: Iterable[Iterable[Any]]) -> None:
    """Write a CSV atomically (predictions, submissions)."""

    with atomic_open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def check_sft_row(row: dict) -> str | None:
    """The reason a row breaks the SFT contract, or None. Used by the writers' tests and by the trainer."""
    missing = [k for k in SFT_FIELDS if k not in row]
    if missing:
        return f"missing field(s) {missing}"
    if row["source"] not in SOURCES:
        return f"source {row['source']!r} not in {SOURCES}"
    if row["status"] not in STATUSES:
        return f"status {row['status']!r} not in {STATUSES}"
    if not isinstance(row["features"], dict):
        return "features is not an object"
    if not str(row["completion"]).endswith(answer_tail(str(row["answer"]))):
        return f"completion does not end with {answer_tail(str(row['answer']))!r}"
    if "Please put your final answer" in row["prompt"]:
        return "prompt carries PROMPT_SUFFIX (the trainer adds it)"
    if not score(str(row["completion"]), str(row["answer"])):
        return f"completion does not score correct under the official metric (reads {extract_answer(row['completion'])!r})"
    return None


def sft_row(puzzle: Puzzle, completion: str, source: str, status: str, **features: Any) -> dict:
    """One SFT row in the contract's field order."""
    return {
        "id": puzzle.id,
        "category": puzzle.category,
        "prompt": puzzle.prompt,
        "answer": puzzle.answer,
        "completion": completion,
        "source": source,
        "status": status,
        "features": {**puzzle.features, **features},
    }
