"""The run directory: one per recipe run, holding everything it made.

    run_dir/
      recipe.toml        the recipe as given;  config.json  the resolved config
      manifest.json      finished stages -> their artifacts (paths + sha256) and summary metrics
      metrics.jsonl      one JSON object per logged step / evaluation, appended as they happen
      .lock              held while a process works on this run (a second one refuses)
      <stage dirs>       r1-sft/adapter, r1-eval/results.jsonl, ... (named by round and stage)

A stage is finished exactly when its manifest entry exists; the entry is written (atomically) only after
all its artifacts are in place, so an interrupted stage has no entry and restarts cleanly.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import time
from pathlib import Path

from puzzles.files import append_jsonl, read_jsonl, sha256, write_atomic, write_json


class RunLocked(RuntimeError):
    pass


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_fd = None
        self.tracker = None  # fastnemo.tracking.Tracker: report.to gets every record log() appends

    # -- locking -----------------------------------------------------------------------------------------
    def lock(self) -> RunDir:
        """Take the run's lock (released when the process exits, however it exits)."""
        try:  # never through a symlink: truncating it would clobber whatever file it points to
            fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            raise RunLocked(f"{self.path / '.lock'} is a symlink; remove it (fastnemo writes the lock itself)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = (self.path / ".lock").read_text().strip() or "another process"
            raise RunLocked(f"run directory {self.path} is in use by {holder}; wait for it or stop it") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        self._lock_fd = fd
        return self

    def unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- manifest ----------------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def manifest(self) -> dict:
        if not self.manifest_path.exists():
            return {"stages": {}}
        return json.loads(self.manifest_path.read_text())

    def done(self, key: str) -> dict | None:
        """The manifest entry of a finished stage, None when it has none; raises when one of its artifacts is
        missing or changed (silently redoing a stage would overwrite what later stages were built on)."""
        entry = self.manifest()["stages"].get(key)
        if entry is None:
            return None
        for name, art in entry["artifacts"].items():
            p = self.path / art["path"]
            if not p.exists() or sha256(p) != art["sha256"]:
                raise RuntimeError(
                    f"{self.path}: artifact {name!r} of finished stage {key!r} is missing or changed "
                    f"({p}); restore it or remove the stage from manifest.json to redo it"
                )
        return entry

    def finish(self, key: str, artifacts: dict[str, Path], summary: dict | None = None) -> dict:
        """Record a finished stage: hash its artifacts, then write the manifest atomically."""
        manifest = self.manifest()
        entry = {
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "artifacts": {
                name: {"path": str(Path(p).resolve().relative_to(self.path.resolve())), "sha256": sha256(p)}
                for name, p in artifacts.items()
            },
            "summary": summary or {},
        }
        manifest["stages"][key] = entry
        # not write_json: its sorted keys would put "pack" first and "r10-" before "r2-"; the stages stay in
        # the order they finished (the ledger's tie-break and the "newest stage" lookups read that order)
        write_atomic(self.manifest_path, json.dumps(manifest, indent=2, default=str) + "\n")
        return entry

    def stage_dir(self, key: str) -> Path:
        """A clean working folder for an unfinished stage (left-overs of an interrupted try are removed)."""
        if key in self.manifest()["stages"]:
            raise RuntimeError(f"stage {key!r} is already finished in {self.path}")
        d = self.path / key
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        return d

    def artifact(self, key: str, name: str) -> Path:
        entry = self.manifest()["stages"][key]
        return self.path / entry["artifacts"][name]["path"]

    # -- metrics -----------------------------------------------------------------------------------------
    def log(self, record: dict) -> None:
        """Append one metrics record (a line is either whole or, after a crash, dropped by read_metrics)."""
        append_jsonl(self.path / "metrics.jsonl", [{"time": time.time(), **record}])
        if self.tracker is not None:
            self.tracker.log(record)

    def read_metrics(self) -> list[dict]:
        return read_jsonl(self.path / "metrics.jsonl")

    def write_config(self, recipe_source: str, resolved: dict) -> None:
        src = Path(recipe_source)
        target = self.path / "recipe.toml"
        text = src.read_text()
        if target.exists() and target.read_text() != text:
            prior = self.path / f"recipe.{int(time.time())}.toml"
            shutil.copy2(target, prior)  # keep what the earlier stages ran with
        write_atomic(target, text)
        write_json(self.path / "config.json", resolved)
