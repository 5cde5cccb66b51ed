"""The one I/O layer: every file puzzles and fastnemo write goes through here.

- Whole files (``write_atomic``, ``atomic_open``, ``write_json``) and folders (``atomic_dir``): written to a
  temp name beside the target, fsynced, then renamed; nothing half-written ever sits at a final path, and
  ``atomic_dir`` never overwrites a finished artifact. Disk full (ENOSPC) mid-write leaves the target as it
  was and removes the temp copy.
- JSONL: ``write_jsonl`` (a whole file, atomic), ``append_jsonl`` (logs and caches: records appended in one
  write and fsynced; a kill leaves at most one torn last line, which ``read_jsonl`` skips and the next
  append cuts off first), ``read_jsonl`` (``strict`` for data files: every line must be a JSON object).

Standard library only, in puzzles (the torch-free foundation) so that the arrow fastnemo -> puzzles points
down: fastnemo, bench and the tests import it from here.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterable
from pathlib import Path

# Power loss mid-write, for the crash tests: a process whose FASTNEMO_CRASH_AT names a file kills itself
# with SIGKILL after writing that file's temp copy and before the rename that would publish it (an appended
# log: after writing half of the records, a torn last line; a trainer checkpoint-N: once it is saved).
# NAME@K kills at the K-th such write of NAME in the process (manifest.json@3: the third stage's entry).
CRASH_AT = "FASTNEMO_CRASH_AT"
_crash_counts: dict[str, int] = {}


def crashing_at(final: Path) -> bool:
    """True when this write of ``final`` is the one FASTNEMO_CRASH_AT names (counts the writes of it)."""
    name, _, nth = os.environ.get(CRASH_AT, "").partition("@")
    if not name or name != Path(final).name:
        return False
    _crash_counts[name] = _crash_counts.get(name, 0) + 1
    return _crash_counts[name] == int(nth or 1)


def maybe_crash(final: Path) -> None:
    if crashing_at(final):
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder``, then the folder and its parent (its entry)."""
    for f in Path(folder).rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(folder)
    fsync_dir(Path(folder).parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _clear_leftovers(final: Path) -> None:
    """Remove temp copies of ``final`` left by a process killed mid-write (the run lock makes us the only
    writer)."""
    for stale in final.parent.glob(f".{final.name}.*"):
        if len(stale.name) == len(final.name) + 10:  # tempfile's 8 random characters: ours, not a sibling's
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", newline: str | None = None):
    """A file to write ``path`` through (``mode`` "w" or "wb"): a temp file in the same folder, fsynced and
    renamed to ``path`` when the block ends without error; on any error (ENOSPC included) it is removed and
    ``path`` keeps its old content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        maybe_crash(path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def is_disk_full(e: BaseException) -> bool:
    """ENOSPC, raised as an OSError or inside another library's error (safetensors' SafetensorError carries
    only the text)."""
    return (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left on device" in str(e)


@contextlib.contextmanager
def disk_full_at(path: str | Path):
    """Turn a full disk while writing ``path`` into one OSError(ENOSPC) naming it, whatever library raised."""
    try:
        yield
    except Exception as e:
        if not is_disk_full(e):
            raise
        raise OSError(errno.ENOSPC, f"disk full at {path}: free some space and rerun") from None


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder, fsync, then rename."""
    with atomic_open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return Path(path)


def write_json(path: str | Path, obj) -> Path:
    return write_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(final: str | Path):
    """Yield a temp folder beside ``final``; on success rename it to ``final``. An existing ``final`` is an
    error: a finished artifact is never overwritten."""
    final = Path(final)
    if final.exists():
        raise FileExistsError(f"{final} exists; refusing to overwrite it")
    final.parent.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        maybe_crash(final)
        tmp.rename(final)
        fsync_dir(final.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def drop_torn_tail(path: str | Path) -> None:
    """Cut a JSONL file back to its last complete line: a line a crash cut short would otherwise swallow
    the next appended record (no newline between them)."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        f.truncate(f.read().rfind(b"\n") + 1)


def _jsonable(o):
    """What ``json`` cannot write itself: a number-like (numpy or torch scalar, one-element tensor) as its
    float, anything else (a Path, a solver's small object) as its text, so a record never fails to write."""
    try:
        return float(o)
    except (TypeError, ValueError, RuntimeError):
        return str(o)


def jsonl_line(record: dict) -> str:
    """One JSONL line, as every writer here writes it (so a file appended record by record and one written
    whole are byte for byte the same)."""
    return json.dumps(record, ensure_ascii=False, default=_jsonable) + "\n"


def write_jsonl(path: str | Path, records: Iterable[dict]) -> int:
    """Write ``records`` as a whole JSONL file, atomically; returns how many were written."""
    n = 0
    with atomic_open(path) as f:
        for r in records:
            f.write(jsonl_line(r))
            n += 1
    return n


def append_jsonl(path: str | Path, records: list[dict]) -> None:
    """Append ``records`` as JSONL lines in one write and fsync them: a kill leaves at most one torn last line,
    which is cut first here (else it would swallow the first record appended) and by ``read_jsonl``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    drop_torn_tail(path)
    text = "".join(jsonl_line(r) for r in records)
    with open(path, "a", encoding="utf-8") as f:
        if crashing_at(path):  # power loss mid-append: half the bytes reach the disk
            f.write(text[: len(text) // 2])
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


class InputError(ValueError):
    """Input that cannot be used (a file, a row, a key): the message names it and says what is wrong in one
    line. Every reader's error derives from it, and the CLI prints it without a traceback."""


class JsonlError(InputError):
    """A JSONL file that cannot be read: named with the line at fault."""


def read_jsonl(path: str | Path, *, strict: bool = False) -> list[dict]:
    """The records (JSON objects, one a line) of a JSONL file; blank lines are skipped.

    - Default, for append-only logs and caches (``append_jsonl``): an absent file has none, and a last line
      that is no JSON is skipped: a record whose append a kill cut short (it is redone).
    - ``strict``, for data files written whole (``write_jsonl``, or a user's SFT file): an absent file and a
      bad last line are errors too.

    Any other bad line raises ``JsonlError`` naming the file and line: ``append_jsonl`` cuts a torn line
    before it appends, so a kill cannot leave one anywhere but at the end."""
    path = Path(path)
    if not path.exists():
        if strict:
            raise JsonlError(f"{path}: no such file")
        return []
    lines = path.read_bytes().split(b"\n")
    if lines and not lines[-1]:
        lines.pop()  # the newline that ends the last line
    out = []
    for i, raw in enumerate(lines, start=1):
        try:  # line by line, from bytes: a kill can cut the last line inside a multi-byte character
            line = raw.decode("utf-8")
            if not line.strip():
                continue
            rec = json.loads(line)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
            if not strict and i == len(lines):
                break
            why = f"not UTF-8 ({e.reason})" if isinstance(e, UnicodeDecodeError) else (
                f"not valid JSON ({e.msg if isinstance(e, json.JSONDecodeError) else type(e).__name__})")
            raise JsonlError(f"{path}: line {i}: {why}") from None
        if not isinstance(rec, dict):
            raise JsonlError(f"{path}: line {i}: expected a JSON object, got {type(rec).__name__}")
        out.append(rec)
    return out


BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def read_text(path: str | Path) -> str:
    """A text file a user made (a CSV from a spreadsheet): UTF-8, or UTF-8/16/32 with its byte-order mark.
    Anything else (latin-1, binary) is an InputError naming the file, the line and the fix: without a mark
    an encoding cannot be told apart reliably, and a guess would silently change the puzzles' text."""
    path = Path(path)
    data = path.read_bytes()
    encoding = next((enc for bom, enc in BOMS if data.startswith(bom)), "utf-8")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InputError(f"{path}: line {line}: not {encoding.upper().removesuffix('-SIG')} (byte "
                         f"{data[e.start:e.start + 1].hex()} at offset {e.start}); save it as UTF-8") from None
    if "\0" in text:
        raise InputError(f"{path}: line {text[: text.index(chr(0))].count(chr(10)) + 1}: a NUL byte: a binary "
                         "file, not text")
    return text


def move_into_place(src: str | Path, final: str | Path) -> Path:
    """Publish a finished file (a log whose last record is in) under its final name: rename, fsync the
    folder."""
    os.replace(src, final)
    fsync_dir(Path(final).parent)
    return Path(final)


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
