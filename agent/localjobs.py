"""Jobs an agent defines itself: job files in its ``jobs_dir``, run in mirror mode here only.

Each ``*.toml`` / ``*.json`` file of the directory is a job file as ``natsched apply``
takes it; the agent checks the directory every ``local_scan_interval`` seconds (a stat
per file; a changed file is parsed again). Its jobs:

- run in mirror mode on this agent only (``targets`` is this agent, whatever the file
  says; another ``mode`` is refused), from the SQLite cache, so they survive master and
  NATS outages and full resyncs (the sync never touches them);
- carry their origin (this agent, the file) and the file's modification time;
- meet the master's definitions by their group's replication mode (``natsched_settings``
  ``group.<group>``): ``strict`` refuses them (logged, and reported in ``natsched agents``
  and ``natsched jobs list``), ``easy`` (the default) keeps them, and a master definition
  of the same key wins only when the master wrote it after the file was modified.

A file that does not parse is reported and its previous jobs are kept (a half-written
file must not stop jobs); a deleted file drops its jobs.

Like cron, the agent (root, as deployed) reads only a file that root or its own user owns
and that neither group nor others may write, in a directory of the same kind: otherwise
any local user who may write the file, or add or swap one in the directory, would run
anything as root. Such a file (or every file of such a directory) is reported and its jobs
dropped, since its content can no longer be trusted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.cache import CachedJob, JobCache, effective
from natsched import codec
from natsched.errors import SpecError
from natsched.groupsettings import Replication
from natsched.jobspec import job_to_dict, parse_job
from natsched.models import JobSpec, Mode

log = logging.getLogger(__name__)
SCAN_INTERVAL = 1.0
SUFFIXES = (".toml", ".json")


@dataclass(frozen=True, slots=True)
class _FileJobs:
    stamp: tuple[int, int]  # (mtime_ns, size) when parsed
    modified: float
    jobs: tuple[JobSpec, ...]


def untrusted(status: os.stat_result, what: str) -> str:
    """Why a local job file or its directory may not be trusted ("" when it may)."""
    if status.st_uid not in (0, os.geteuid()):
        return f"{what} is owned by uid {status.st_uid}, not by root or the agent's user"
    if status.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{what} is writable by group or others (mode {stat.S_IMODE(status.st_mode):04o}; chmod go-w)"
    return ""


def parse_local_file(path: Path, agent: str) -> tuple[JobSpec, ...]:
    """The jobs of one local job file, targeted at ``agent``; SpecError listing what is wrong."""
    text = path.read_text(encoding="utf-8")
    try:
        doc = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise SpecError(f"not valid {path.suffix[1:].upper()}: {exc}", source=str(path)) from None
    if not isinstance(doc, dict) or set(doc) - {"group", "jobs"} or not isinstance(doc.get("jobs", []), list):
        raise SpecError("expected a top-level 'group' and a [[jobs]] list", source=str(path))
    jobs: list[JobSpec] = []
    errors: list[str] = []
    for index, entry in enumerate(doc.get("jobs", []), start=1):
        if not isinstance(entry, dict):
            errors.append(f"job #{index}: not a table")
            continue
        if entry.get("mode", Mode.MIRROR.value) != Mode.MIRROR.value:
            errors.append(f"job {entry.get('name', index)!r}: local jobs run in mirror mode on this agent")
            continue
        try:
            jobs.append(
                parse_job(
                    {**entry, "targets": {"agents": [agent]}},
                    default_group=doc.get("group"),
                    source=str(path),
                )
            )
        except SpecError as exc:
            errors.append(str(exc))
    keys = [spec.key for spec in jobs]
    errors += [f"job {key!r} defined twice" for key in sorted({k for k in keys if keys.count(k) > 1})]
    if errors:
        raise SpecError("; ".join(errors), source=str(path))
    return tuple(jobs)


class LocalJobs:
    def __init__(
        self,
        cache: JobCache,
        directory: Path | None,
        *,
        agent: str,
        replication: Callable[[str], Replication],
        interval: float = SCAN_INTERVAL,
    ) -> None:
        self._cache = cache
        self._dir = directory
        self._agent = agent
        self._replication = replication
        self._interval = interval
        self._files: dict[Path, _FileJobs] = {}
        self.errors: dict[str, str] = {}  # file -> why it is not (or no longer) read
        self.listeners: list[Callable[[set[str]], None]] = []
        self._refused: set[str] = set()  # keys reported refused (logged once)

    async def load(self) -> None:
        """At start: what the cache kept from the last run (the directory is read by ``run``)."""
        for job in await self._cache.local_all():
            path = Path(job.origin)
            previous = self._files.get(path)
            specs = (*(previous.jobs if previous else ()), job.spec())
            self._files[path] = _FileJobs((0, -1), job.modified, specs)

    async def run(self) -> None:
        while True:
            try:
                await self.scan()
            except Exception:  # noqa: BLE001 - a scan bug must not stop the agent's other work
                log.exception("local jobs: scan of %s failed", self._dir)
            await asyncio.sleep(self._interval)

    async def scan(self) -> None:
        if self._dir is None:
            return
        try:
            why = untrusted(self._dir.stat(), "the directory")
            paths = (
                [] if why else sorted(p for p in self._dir.iterdir() if p.suffix in SUFFIXES and p.is_file())
            )
        except OSError as exc:
            self.errors[str(self._dir)] = f"cannot read the directory: {exc.strerror}"
            return
        if why:
            if self.errors.get(str(self._dir)) != why:
                log.error("local jobs: %s not read, its jobs dropped: %s", self._dir, why)
            self.errors[str(self._dir)] = why
        else:
            self.errors.pop(str(self._dir), None)
        changed: set[str] = set()
        for gone in set(self._files) - set(paths):
            changed.update(spec.key for spec in self._files.pop(gone).jobs)
            self.errors.pop(str(gone), None)
            log.info("local jobs: %s removed", gone)
        for path in paths:
            changed |= self._read(path)
        if changed:
            await self._save()
            self._notify(changed)
        await self.check_refused()

    def _read(self, path: Path) -> set[str]:
        try:
            status = path.stat()
        except OSError:
            return set()
        previous = self._files.get(path)
        why = untrusted(status, "the file")
        if why:
            if self.errors.get(str(path)) != why:
                log.error("local jobs: %s not read, its jobs dropped: %s", path, why)
            self.errors[str(path)] = why
            self._files.pop(path, None)
            return {s.key for s in previous.jobs} if previous else set()
        stamp = (status.st_mtime_ns, status.st_size)
        if previous is not None and previous.stamp == stamp:
            return set()
        try:
            specs = parse_local_file(path, self._agent)
        except (SpecError, OSError, UnicodeDecodeError) as exc:
            why = str(exc)
            if self.errors.get(str(path)) != why:
                log.error("local jobs: %s not read (its previous jobs are kept): %s", path, why)
            self.errors[str(path)] = why
            return set()
        self.errors.pop(str(path), None)
        taken = {s.key: p for p, f in self._files.items() if p != path for s in f.jobs}
        clash = [s.key for s in specs if s.key in taken]
        if clash:
            why = f"{', '.join(clash)} already defined in {taken[clash[0]]}"
            log.error("local jobs: %s not read: %s", path, why)
            self.errors[str(path)] = why
            return set()
        self._files[path] = _FileJobs(stamp, status.st_mtime, specs)
        log.info("local jobs: %s: %s", path, ", ".join(s.key for s in specs) or "no jobs")
        return {s.key for s in specs} | {s.key for s in (previous.jobs if previous else ())}

    async def _save(self) -> None:
        rows = [
            CachedJob(spec.key, 0, spec.mode.value, codec.encode_job(spec), entry.modified, str(path))
            for path, entry in self._files.items()
            for spec in entry.jobs
        ]
        await self._cache.replace_local(rows)

    def _notify(self, keys: set[str]) -> None:
        for listener in self.listeners:
            try:
                listener(keys)
            except Exception:  # noqa: BLE001 - a listener bug must not stop the others
                log.exception("local job listener failed")

    def group_changed(self) -> None:
        """Replication modes changed: every local job may be chosen differently now."""
        self._notify({spec.key for entry in self._files.values() for spec in entry.jobs})

    async def check_refused(self) -> None:
        """Log once each local job a strict group refuses (and once when it is taken again)."""
        refused = {
            spec.key
            for entry in self._files.values()
            for spec in entry.jobs
            if self._replication(spec.group) is Replication.STRICT
        }
        for key in sorted(refused - self._refused):
            log.warning(
                "local job %s refused: group %s is strict (the master's jobs only)", key, key.split(".")[0]
            )
        self._refused = refused

    async def report(self) -> dict[str, Any]:
        """Every local job with its origin and state, and the files that could not be read."""
        rows: list[dict[str, Any]] = []
        for job in await self._cache.local_all():
            master = await self._cache.master_get(job.key)
            mode = self._replication(job.group)
            state, reason = _state(job, master, mode)
            spec = job_to_dict(job.spec())
            rows.append(
                {
                    "key": job.key,
                    "file": job.origin,
                    "modified": job.modified,
                    "state": state,
                    "reason": reason,
                    **{k: spec[k] for k in ("command", "triggers", "enabled") if k in spec},
                }
            )
        return {"dir": str(self._dir) if self._dir else None, "jobs": rows, "errors": dict(self.errors)}


def _state(local: CachedJob, master: CachedJob | None, mode: Replication) -> tuple[str, str]:
    if mode is Replication.STRICT:
        return "refused", f"group {local.group} is strict: only the master's definitions run"
    if effective(master, local, mode) is local:
        return "active", "" if master is None else "newer than the master's definition"
    return "overridden", "the master's definition is newer"
