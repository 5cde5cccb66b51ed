"""Crash-safe file writing: nothing half-written ever sits at a final path, and nothing is overwritten."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

from puzzles.dataset import drop_torn_tail

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
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        _maybe_crash(path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


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
    """The records of an append-only JSONL file (``append_jsonl``); an absent file has none, and a last line
    cut short by a kill is skipped (it is the record whose append never finished)."""
    from puzzles.dataset import read_jsonl as read_rows

    return read_rows(path, tolerate_torn_tail=True) if Path(path).exists() else []


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
