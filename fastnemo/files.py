"""The one I/O layer: every file fastnemo and puzzles write goes through here.

- Whole files (``write_atomic``, ``atomic_open``, ``write_json``) and folders (``atomic_dir``): written to a
  temp name beside the target, fsynced, then renamed; nothing half-written ever sits at a final path, and
  ``atomic_dir`` never overwrites a finished artifact. Disk full (ENOSPC) mid-write leaves the target as it
  was and removes the temp copy.
- Append-only logs and caches (``append_jsonl``, ``read_jsonl``): records appended in one write and fsynced;
  a kill leaves at most one torn last line, which readers skip and the next append cuts off first.

Standard library only: ``puzzles`` (no torch) uses it too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

# Power loss mid-write, for the crash tests: a process whose FASTNEMO_CRASH_AT names a file kills itself
# with SIGKILL after writing that file's temp copy and before the rename that would publish it.
CRASH_AT = "FASTNEMO_CRASH_AT"


def _maybe_crash(final: Path) -> None:
    if os.environ.get(CRASH_AT) and os.environ[CRASH_AT] == final.name:
        os.kill(os.getpid(), signal.SIGKILL)


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
        _maybe_crash(path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


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
        _maybe_crash(final)
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


def append_jsonl(path: str | Path, records: list[dict]) -> None:
    """Append ``records`` as JSONL lines in one write and fsync them: a kill leaves at most one torn last line,
    which is cut first here (else it would swallow the first record appended) and by ``read_jsonl``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    drop_torn_tail(path)
    with open(path, "a") as f:
        f.write("".join(json.dumps(r, default=float) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of an append-only JSONL file (``append_jsonl``); an absent file has none. A line that is
    no JSON is skipped: the last one is a record whose append a kill cut short (it is redone), and
    ``append_jsonl`` cuts such a line before appending, so no other line can be torn."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


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
