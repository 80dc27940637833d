"""File triggers: mirror jobs that run once per file that appeared in a directory.

watchdog reports file system events from its own thread; they are handed to the event
loop and a file is fired on only once it is *stable*: its size and mtime did not change
for the trigger's settle time (a file still being written is not picked up half-way).
Each stable file version fires one run with ``NATSCHED_FILE`` set to its path; runs of a
job are bounded (``FILE_CONCURRENCY``), the rest wait their turn. The versions that ran are
kept across restarts, and a directory is scanned when watching starts, so a file that arrived
while the agent was down runs then, and none runs twice (``fileversions.py``).
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
import time
from dataclasses import dataclass, field

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from agent.cache import CachedJob, JobCache
from agent.executor import JobExecutor
from agent.fileversions import FileVersions, matching_files, scope
from natsched.errors import CodecError
from natsched.models import JobSpec, Mode
from natsched.triggers.file import FileTrigger
from natsched.vocab import RunTrigger

log = logging.getLogger(__name__)

FILE_CONCURRENCY = 4
_EVENT_KINDS = {"created": "created", "modified": "modified", "moved": "moved"}
# watchdog's only sign that the kernel dropped events (its inotify queue, 16384 by default, was
# full: ~20k files arriving at once): a warning on this logger. Nothing reaches our handler, and
# the files whose events were lost never ran (measured: 9,614 runs for 20,000 files).
_WATCHDOG_LOGGER = "watchdog.observers.inotify_c"
_OVERFLOW = "Inotify queue overflowed"


class _OverflowSpotter(logging.Filter):
    """Tells the event loop when watchdog reports lost events; the record is logged as usual."""

    def __init__(self, watcher: FileWatcher) -> None:
        super().__init__()
        self._watcher = watcher

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(_OVERFLOW):
            self._watcher.loop.call_soon_threadsafe(self._watcher.overflowed)
        return True


@dataclass(slots=True)
class _Candidate:
    path: str
    key: str
    trigger: FileTrigger
    signature: tuple[int, int] = (-1, -1)  # (size, mtime_ns)
    stable_since: float = field(default_factory=time.monotonic)


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: FileWatcher) -> None:
        self._watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        if event.event_type in ("deleted", "moved"):  # its records go (they would pile up)
            self._watcher.loop.call_soon_threadsafe(self._watcher.gone, str(event.src_path))
        if event.event_type not in _EVENT_KINDS:
            return
        path = event.dest_path if event.event_type == "moved" else event.src_path
        self._watcher.loop.call_soon_threadsafe(self._watcher.notice, str(path), event.event_type)


class FileWatcher:
    def __init__(self, cache: JobCache, executor: JobExecutor, versions: FileVersions) -> None:
        self._cache = cache
        self._executor = executor
        self._versions = versions
        self.loop = asyncio.get_running_loop()
        self._jobs: dict[str, JobSpec] = {}
        self._candidates: dict[tuple[str, str], _Candidate] = {}
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._observer: Observer | None = None  # type: ignore[valid-type]
        self._changed: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.fired = 0
        self._rescan = False  # events were lost: the watched directories are scanned again
        self._spotter = _OverflowSpotter(self)

    def on_change(self, keys: set[str]) -> None:
        self._changed |= keys

    def _triggers(self) -> list[tuple[str, FileTrigger]]:
        return [
            (key, t) for key, spec in self._jobs.items() for t in spec.triggers if isinstance(t, FileTrigger)
        ]

    @staticmethod
    def _file_job(cached: CachedJob | None) -> JobSpec | None:
        # Cheap test on the raw bytes first: decoding every job would cost ~40 us each.
        if cached is None or cached.mode != Mode.MIRROR.value or FileTrigger.key.encode() not in cached.value:
            return None
        try:
            spec = cached.spec()
        except CodecError:
            return None
        return spec if spec.enabled and any(isinstance(t, FileTrigger) for t in spec.triggers) else None

    async def _load(self) -> None:
        jobs = [self._file_job(cached) for cached in await self._cache.all(mode=Mode.MIRROR.value)]
        self._jobs = {spec.key: spec for spec in jobs if spec is not None}
        await self._catch_up(self._triggers())  # baselines first: what is there before we watch
        self._restart_observer()
        await self._catch_up(self._triggers())  # what arrived before the observer started

    async def _reload(self, keys: set[str]) -> None:
        """Only the changed jobs; the observer restarts only if watched directories changed."""
        before = {t.watch for _, t in self._triggers()}
        for key in keys:
            spec = self._file_job(await self._cache.get(key))
            if spec is None:
                self._jobs.pop(key, None)
            else:
                self._jobs[key] = spec
        changed = [(key, t) for key, t in self._triggers() if key in keys]
        await self._catch_up(changed)  # a new job's baseline: what is there before it is watched
        if {t.watch for _, t in self._triggers()} != before:
            self._restart_observer()
        await self._catch_up(changed)

    async def _catch_up(self, triggers: list[tuple[str, FileTrigger]]) -> None:
        """Files that arrived (or changed) while nobody watched become candidates now; a job's
        first scan of a directory takes its baseline instead (done before its observer starts,
        so a file arriving after that is seen by the observer or the next scan, never swallowed)."""
        self._versions.keep_only((key, scope(t)) for key, t in self._triggers())
        for key, trigger in triggers:
            files = await asyncio.to_thread(matching_files, trigger)
            for path in self._versions.unrun(key, trigger, files):
                if (key, path) not in self._candidates:
                    log.info("%s: %s arrived while not watched: running it", key, path)
                    self._candidates[(key, path)] = _Candidate(path=path, key=key, trigger=trigger)

    @property
    def watching(self) -> bool:
        """Is the observer running? It starts once the jobs' baselines are taken (``_reload``)."""
        return self._observer is not None and self._observer.is_alive()

    def _restart_observer(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
        directories: dict[str, bool] = {}
        for _, trigger in self._triggers():
            directories[trigger.watch] = directories.get(trigger.watch, False) or trigger.recursive
        if not directories:
            return
        observer = Observer()
        handler = _Handler(self)
        for directory, recursive in directories.items():
            if not os.path.isdir(directory):
                log.warning("file trigger directory %s does not exist; not watched", directory)
                continue
            observer.schedule(handler, directory, recursive=recursive)
        observer.daemon = True
        observer.start()
        self._observer = observer
        log.info(
            "watching %d director(y/ies) for %d file-triggered job(s)", len(directories), len(self._jobs)
        )

    def overflowed(self) -> None:
        """The kernel dropped file events: what arrived meanwhile is found by a scan (on the loop)."""
        self._rescan = True

    def gone(self, path: str) -> None:
        """A file left (deleted, moved away): forget which of its versions ran."""
        self._versions.forget(path)

    def notice(self, path: str, kind: str) -> None:
        """A file system event arrived (on the loop thread): start or restart its settle clock."""
        directory, name = os.path.split(path)
        for key, trigger in self._triggers():
            in_dir = directory == trigger.watch or (
                trigger.recursive and directory.startswith(trigger.watch + "/")
            )
            if not in_dir or kind not in trigger.events:
                continue
            if any(fnmatch.fnmatch(name, pattern) for pattern in trigger.patterns):
                self._candidates[(key, path)] = _Candidate(path=path, key=key, trigger=trigger)

    async def run(self) -> None:
        watchdog_log = logging.getLogger(_WATCHDOG_LOGGER)
        watchdog_log.addFilter(self._spotter)
        try:
            await self._load()
            while True:
                if self._changed:
                    changed, self._changed = self._changed, set()
                    await self._reload(changed)
                if self._rescan:
                    self._rescan = False
                    log.warning("file events were lost (inotify queue full): scanning watched directories")
                    await self._catch_up(self._triggers())  # each file version not run yet runs
                await self._check_candidates()
                await asyncio.sleep(self._tick())
        finally:
            watchdog_log.removeFilter(self._spotter)
            if self._observer is not None:
                self._observer.stop()
                self._observer.join(timeout=5)
            for task in self._tasks:
                task.cancel()

    def _tick(self) -> float:
        settles = [t.settle for _, t in self._triggers()]
        return max(0.05, min(settles, default=1.0) / 4)

    async def _check_candidates(self) -> None:
        now = time.monotonic()
        for ident, candidate in list(self._candidates.items()):
            try:
                stat = os.stat(candidate.path)
            except FileNotFoundError:
                del self._candidates[ident]  # gone before it settled
                continue
            signature = (stat.st_size, stat.st_mtime_ns)
            if signature != candidate.signature:
                candidate.signature = signature
                candidate.stable_since = now
                continue
            if now - candidate.stable_since < candidate.trigger.settle:
                continue
            del self._candidates[ident]
            if self._versions.ran(*ident) == signature:
                continue  # this version of the file already had its run
            self._versions.note(*ident, signature)
            spec = self._jobs.get(candidate.key)
            if spec is not None:
                task = asyncio.create_task(self._launch(spec, candidate.path))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _launch(self, spec: JobSpec, path: str) -> None:
        limit = self._limits.setdefault(spec.key, asyncio.Semaphore(FILE_CONCURRENCY))
        async with limit:
            self.fired += 1
            event = await self._executor.launch(spec, trigger=RunTrigger.FILE, detail={"file": path})
            run = self._executor.active.get(spec.key, {}).get(event.run_id)
            if run is not None:
                await run.done.wait()
