"""Which file versions each file-triggered job has had its run for, kept across agent restarts.

watchdog reports only what happens while the agent watches: a file that arrived while the
agent was down (killed, restarting, upgraded) or had not settled when it stopped was never
run. So the versions (size, mtime) a job ran for are kept in SQLite (``files.sqlite`` beside
the cache), and when the agent (re)starts watching a directory it scans it: a matching file
whose version it has not run is a candidate as if it had just appeared. The first time a job
watches a directory, what is there already is its *baseline* (recorded, not run): a new job
does not run for every old file, and neither does a job that is enabled again (a disabled or
deleted job's records are dropped, as a mirror job has no backlog after that).

A version is recorded right before its run is launched: an agent killed in between skips
that version (at most one per job), it never runs one twice.
"""

from __future__ import annotations

import fnmatch
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from natsched.errors import NotOpenError
from natsched.triggers.file import FileTrigger

_SCHEMA = """
CREATE TABLE IF NOT EXISTS file_versions (
    job      TEXT NOT NULL,
    path     TEXT NOT NULL,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    PRIMARY KEY (job, path)
);
CREATE INDEX IF NOT EXISTS file_versions_path ON file_versions (path);
CREATE TABLE IF NOT EXISTS file_baselines (
    job   TEXT NOT NULL,
    watch TEXT NOT NULL,
    PRIMARY KEY (job, watch)
);
"""
Version = tuple[int, int]  # (size, mtime_ns)


def matching_files(trigger: FileTrigger) -> dict[str, Version]:
    """The files in ``trigger``'s directory that its patterns match, with their versions (blocking)."""
    found: dict[str, Version] = {}
    if trigger.recursive:
        walk: Iterable[tuple[str, list[str], list[str]]] = os.walk(trigger.watch)
    else:
        try:
            names = [e.name for e in os.scandir(trigger.watch) if e.is_file()]
        except OSError:
            return found
        walk = [(trigger.watch, [], names)]
    for directory, _, names in walk:
        for name in names:
            if not any(fnmatch.fnmatch(name, pattern) for pattern in trigger.patterns):
                continue
            path = os.path.join(directory, name)
            try:
                stat = os.stat(path)
            except OSError:
                continue  # gone meanwhile
            found[path] = (stat.st_size, stat.st_mtime_ns)
    return found


class FileVersions:
    """The records; plain sqlite3 in the loop's thread (a few small writes per file run)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None

    def open(self) -> None:
        self._conn = sqlite3.connect(self._path, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise NotOpenError("FileVersions is not open")
        return self._conn

    def ran(self, job: str, path: str) -> Version | None:
        row = self._db.execute(
            "SELECT size, mtime_ns FROM file_versions WHERE job = ? AND path = ?", (job, path)
        ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def note(self, job: str, path: str, version: Version) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO file_versions (job, path, size, mtime_ns) VALUES (?, ?, ?, ?)",
            (job, path, *version),
        )

    def forget(self, path: str) -> None:
        if self._conn is not None:  # a late watchdog event after the agent closed us: nothing to do
            self._conn.execute("DELETE FROM file_versions WHERE path = ?", (path,))

    def unrun(self, job: str, trigger: FileTrigger, files: dict[str, Version]) -> list[str]:
        """Files of ``job`` (now in ``trigger``'s directory) whose version did not run, to run now.

        The first scan of a directory for a job takes its baseline instead (returns nothing);
        records of files no longer there are dropped.
        """
        db = self._db
        known = {
            str(path): (int(size), int(mtime))
            for path, size, mtime in db.execute(
                "SELECT path, size, mtime_ns FROM file_versions WHERE job = ?", (job,)
            )
        }
        inside = [p for p in known if _under(p, trigger)]
        db.execute("BEGIN")
        try:
            db.executemany(
                "DELETE FROM file_versions WHERE job = ? AND path = ?",
                [(job, p) for p in inside if p not in files],
            )
            baseline = db.execute(
                "SELECT 1 FROM file_baselines WHERE job = ? AND watch = ?", (job, scope(trigger))
            ).fetchone()
            if baseline is None:
                db.execute("INSERT INTO file_baselines (job, watch) VALUES (?, ?)", (job, scope(trigger)))
                db.executemany(
                    "INSERT OR REPLACE INTO file_versions (job, path, size, mtime_ns) VALUES (?, ?, ?, ?)",
                    [(job, p, *v) for p, v in files.items()],
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if baseline is None:
            return []
        appeared = "created" in trigger.events or "moved" in trigger.events
        changed = "modified" in trigger.events
        return sorted(
            path
            for path, version in files.items()
            if (path not in known and appeared) or (path in known and known[path] != version and changed)
        )

    def keep_only(self, watched: Iterable[tuple[str, str]]) -> None:
        """Drop the records of jobs (and scopes) no longer watched here: a job deleted, disabled,
        pointed elsewhere or given other patterns starts from a new baseline when it watches
        again. ``watched``: (job, :func:`scope`) pairs."""
        pairs = set(watched)
        jobs = {job for job, _ in pairs}
        db = self._db
        baselines = db.execute("SELECT job, watch FROM file_baselines").fetchall()
        db.executemany(
            "DELETE FROM file_baselines WHERE job = ? AND watch = ?",
            [(job, watch) for job, watch in baselines if (job, watch) not in pairs],
        )
        versions = [row[0] for row in db.execute("SELECT DISTINCT job FROM file_versions")]
        db.executemany("DELETE FROM file_versions WHERE job = ?", [(j,) for j in versions if j not in jobs])


def scope(trigger: FileTrigger) -> str:
    """What a baseline covers: the directory, recursion and patterns (widened patterns take a new
    baseline, so the files they now match but were there before are not run)."""
    return "\n".join([trigger.watch, "recursive" if trigger.recursive else "flat", *sorted(trigger.patterns)])


def _under(path: str, trigger: FileTrigger) -> bool:
    directory = os.path.dirname(path)
    return directory == trigger.watch or (trigger.recursive and directory.startswith(trigger.watch + "/"))
