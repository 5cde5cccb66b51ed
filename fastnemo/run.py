"""The run directory: one per recipe run, holding everything it made.

    run_dir/
      recipe.toml        the recipe as given;  config.json  the resolved config
      manifest.json      finished stages -> their artifacts (paths + sha256) and summary metrics
      metrics.jsonl      one JSON object per logged step / evaluation, appended as they happen
      .lock              held while a process works on this run (a second one refuses)
      <stage dirs>       r1-sft/adapter, r1-eval/results.jsonl, ... (named by round and stage)

A stage is finished exactly when its manifest entry exists; the entry is written (atomically) only after
all its artifacts are in place, so an interrupted stage has no entry and restarts cleanly.
Each entry and each started stage's folder (provenance.json) records the recipe keys the stage ran with
(``fastnemo.provenance``); stages redone with ``--redo`` or restarted with other keys move to
``redone-<time>/`` with their manifest entries and metrics, so config.json always describes what is beside it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import time
from pathlib import Path

from puzzles.files import append_jsonl, fsync_dir, read_jsonl, sha256, write_atomic, write_json, write_jsonl


class RunLocked(RuntimeError):
    pass


class ManifestError(RuntimeError):
    """manifest.json cannot be read: named, with what to do."""


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
        """The manifest; one that does not read as {"stages": {...}} raises ManifestError naming it (it is
        written atomically, so only outside damage tears it)."""
        if not self.manifest_path.exists():
            return {"stages": {}}
        try:
            manifest = json.loads(self.manifest_path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ManifestError(f"{self.manifest_path}: unreadable ({e}); restore it from a backup, or move it "
                                "aside to redo every stage") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("stages"), dict) or not all(
                isinstance(e, dict) and isinstance(e.get("artifacts"), dict) for e in manifest["stages"].values()):
            raise ManifestError(f"{self.manifest_path}: not a fastnemo manifest (no \"stages\" table of entries "
                                "with artifacts); restore it from a backup, or move it aside to redo every stage")
        return manifest

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

    def finish(self, key: str, artifacts: dict[str, Path], summary: dict | None = None,
               provenance: dict | None = None) -> dict:
        """Record a finished stage: hash its artifacts, then write the manifest atomically. ``provenance``
        (``fastnemo.recipe.provenance``): the recipe keys it ran with and their fingerprint."""
        manifest = self.manifest()
        entry = {
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **(provenance or {}),
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

    def forget_metrics(self, stage: str, after_step: int | None = None, into: Path | None = None) -> None:
        """Drop the records of ``stage`` (those past ``after_step`` when given) from metrics.jsonl: what a killed
        try logged after the checkpoint its rerun resumes from, which the rerun logs again. Rewritten atomically;
        the dropped records go to ``into`` (a redone stage's moved-aside folder) when given."""
        def dropped(rec):
            return rec.get("stage") == stage and (after_step is None or rec.get("step", after_step + 1) > after_step)

        records = self.read_metrics()
        gone = [r for r in records if dropped(r)]
        if gone:
            if into is not None:
                append_jsonl(Path(into) / "metrics.jsonl", gone)
            write_jsonl(self.path / "metrics.jsonl", [r for r in records if not dropped(r)])

    def move_aside(self, keys: list[str]) -> Path | None:
        """Take finished (or started) stages out of the run to redo them: their folders, manifest entries
        and metrics move to redone-<time>/ (kept, never overwritten); returns that folder."""
        manifest = self.manifest()
        present = [k for k in keys if k in manifest["stages"] or (self.path / k).exists()]
        if not present:
            return None
        aside = self.path / time.strftime("redone-%Y%m%dT%H%M%S")
        n = 1
        while aside.exists():  # two redos within a second
            aside, n = self.path / f"{time.strftime('redone-%Y%m%dT%H%M%S')}-{n}", n + 1
        aside.mkdir()
        write_json(aside / "manifest.json", {"stages": {k: manifest["stages"][k] for k in present
                                                         if k in manifest["stages"]}})
        for k in present:
            self.forget_metrics(k, into=aside)
            if (self.path / k).exists():
                os.replace(self.path / k, aside / k)
            manifest["stages"].pop(k, None)
        write_atomic(self.manifest_path, json.dumps(manifest, indent=2, default=str) + "\n")
        fsync_dir(self.path)
        return aside

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
