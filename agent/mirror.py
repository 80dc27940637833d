"""Mirror scheduling: the agent fires its mirror jobs itself, from the local cache.

No master, no NATS needed. Fire times come from the pure trigger functions on the
wall-clock grid (never ``sleep(interval)`` accumulations, so no drift). The last fired
slot of each job is written to SQLite *before* the run starts, so a restart never runs
a slot twice and applies the job's misfire policy to the slots it missed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import logging
import time
from collections.abc import Callable

import aiosqlite

from agent.cache import CachedJob, JobCache
from agent.executor import JobExecutor
from natsched.errors import CodecError
from natsched.models import JobSpec, Mode
from natsched.triggers.fire import next_job_fire, time_triggers, trigger_kind, utc
from natsched.triggers.misfire import due_slots

log = logging.getLogger(__name__)

PREPARE_AHEAD = 0.01  # seconds
_SCHEMA = "CREATE TABLE IF NOT EXISTS mirror_cursor (key TEXT PRIMARY KEY, last_fired REAL NOT NULL);"


class MirrorScheduler:
    """Owns the schedule of every enabled mirror job in the cache."""

    def __init__(
        self, cache: JobCache, executor: JobExecutor, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._cache = cache
        self._executor = executor
        self._clock = clock
        self._jobs: dict[str, JobSpec] = {}
        self._cursors: dict[str, float] = {}
        self._heap: list[tuple[float, int, str, str]] = []  # (fire at, generation, key, trigger name)
        self._generation: dict[str, int] = {}
        self._changed: set[str] = set()
        self._wake = asyncio.Event()
        self.fired = 0
        self.on_late: Callable[[float], None] = lambda seconds: None  # e.g. a metrics histogram
        # Seconds between each slot and its firing, most recent last (for bench/ and metrics).
        self.lateness: collections.deque[float] = collections.deque(maxlen=100_000)

    @property
    def db(self) -> aiosqlite.Connection:
        return self._cache.db

    def on_change(self, keys: set[str]) -> None:
        """Called by the sync after definitions changed in the cache."""
        self._changed |= keys
        self._wake.set()

    async def _load_cursors(self) -> None:
        await self.db.executescript(_SCHEMA)
        await self.db.commit()
        async with self.db.execute("SELECT key, last_fired FROM mirror_cursor") as cursor:
            self._cursors = {row[0]: float(row[1]) for row in await cursor.fetchall()}

    async def _save_cursor(self, key: str, slot: float) -> None:
        self._cursors[key] = slot
        await self.db.execute(
            "INSERT OR REPLACE INTO mirror_cursor (key, last_fired) VALUES (?, ?)", (key, slot)
        )
        await self.db.commit()

    async def _forget_cursor(self, key: str) -> None:
        if self._cursors.pop(key, None) is not None:
            await self.db.execute("DELETE FROM mirror_cursor WHERE key = ?", (key,))
            await self.db.commit()

    async def _reload(self, key: str) -> JobSpec | None:
        """Read one job from the cache; None if it is gone, not mirror, disabled or invalid."""
        return self._schedulable(await self._cache.get(key))

    @staticmethod
    def _schedulable(cached: CachedJob | None) -> JobSpec | None:
        if cached is None or cached.mode != Mode.MIRROR.value:
            return None
        try:
            spec = cached.spec()
        except CodecError as exc:
            log.warning("mirror job %s is invalid in the cache, not scheduled: %s", cached.key, exc)
            return None
        return spec if spec.enabled and time_triggers(spec) else None

    def _push_next(self, spec: JobSpec, after: float) -> None:
        generation = self._generation.get(spec.key, 0) + 1
        self._generation[spec.key] = generation
        best = next_job_fire(spec, after)
        if best is not None:
            heapq.heappush(self._heap, (best[0], generation, spec.key, best[1]))

    async def _catch_up(self, spec: JobSpec, now: float) -> None:
        """Apply the misfire policy to slots missed since the job's last fired slot."""
        last = self._cursors.get(spec.key)
        slots: list[tuple[float, str]] = []
        for trigger in time_triggers(spec):
            due = due_slots(
                trigger, None if last is None else utc(last), utc(now), spec.misfire, spec.misfire_cap
            )
            slots.extend((slot.timestamp(), trigger_kind(trigger)) for slot in due)
        slots.sort()
        for slot, trigger_name in slots[-spec.misfire_cap :]:
            await self._fire(spec, slot, trigger_name, late=now - slot)

    async def _fire(self, spec: JobSpec, slot: float, trigger_name: str, late: float) -> None:
        await self._save_cursor(spec.key, slot)  # before the run: a crash now skips, never doubles
        await self._launch(spec, slot, trigger_name, late)

    async def _launch(self, spec: JobSpec, slot: float, trigger_name: str, late: float) -> None:
        early = slot - self._clock()
        if early > 0:  # prepared ahead (cursor already saved): start on the dot
            await asyncio.sleep(early)
        self.lateness.append(self._clock() - slot)
        self.on_late(self._clock() - slot)
        self.fired += 1
        detail = {"late_ms": f"{late * 1000:.1f}"} if late > 1 else {}
        try:
            await self._executor.launch(spec, trigger=trigger_name, scheduled_at=slot, detail=detail)
        except Exception:  # a launch bug must not stop every other schedule
            log.exception("mirror job %s could not be launched", spec.key)

    async def _fire_due(self, due: list[tuple[JobSpec, float, str]]) -> None:
        """Fire every job due at this tick: cursors in one transaction, then all launches at once."""
        for spec, slot, _ in due:
            self._cursors[spec.key] = slot
        await self.db.executemany(
            "INSERT OR REPLACE INTO mirror_cursor (key, last_fired) VALUES (?, ?)",
            [(spec.key, slot) for spec, slot, _ in due],
        )
        await self.db.commit()
        now = self._clock()
        if len(due) == 1:
            spec, slot, trigger_name = due[0]
            await self._launch(spec, slot, trigger_name, max(0.0, now - slot))
            return
        # Launched together: the twentieth job of a tick must not wait for nineteen spawns.
        async with asyncio.TaskGroup() as group:
            for spec, slot, trigger_name in due:
                group.create_task(self._launch(spec, slot, trigger_name, max(0.0, now - slot)))

    async def _apply_changes(self, now: float) -> None:
        changed, self._changed = self._changed, set()
        for key in changed:
            spec = await self._reload(key)
            if spec is None:
                if self._jobs.pop(key, None) is not None:
                    log.info("mirror job %s unscheduled", key)
                self._generation[key] = self._generation.get(key, 0) + 1  # invalidates heap entries
                await self._forget_cursor(key)  # re-enabled later means: start afresh, no catch-up
                continue
            fresh = key not in self._jobs
            self._jobs[key] = spec
            if fresh:
                log.info("mirror job %s scheduled", key)
            self._push_next(spec, max(now, self._cursors.get(key, 0.0)))

    async def run(self) -> None:
        await self._load_cursors()
        now = self._clock()
        for index, cached in enumerate(await self._cache.all(mode=Mode.MIRROR.value)):
            if index % 500 == 499:
                await asyncio.sleep(0)  # decoding 100k jobs takes seconds: let heartbeats and sync run
            spec = self._schedulable(cached)
            if spec is None:
                continue
            self._jobs[spec.key] = spec
            await self._catch_up(spec, now)
            self._push_next(spec, max(now, self._cursors.get(spec.key, 0.0)))
        log.info("mirror scheduler: %d job(s) scheduled", len(self._jobs))
        while True:
            if self._changed:
                await self._apply_changes(self._clock())
            await self._sleep_until_due()
            now = self._clock()
            due: list[tuple[JobSpec, float, str]] = []
            # Slots due within PREPARE_AHEAD are taken now: their cursors are committed before
            # the slot, so the process starts on time instead of after a SQLite commit.
            while self._heap and self._heap[0][0] <= now + PREPARE_AHEAD:
                at, generation, key, trigger_name = heapq.heappop(self._heap)
                spec = self._jobs.get(key)
                if spec is None or generation != self._generation.get(key):
                    continue  # superseded by a change
                if at > self._cursors.get(key, 0.0):
                    due.append((spec, at, trigger_name))
                self._push_next(spec, at)
            if due:
                await self._fire_due(due)

    async def _sleep_until_due(self) -> None:
        self._wake.clear()
        delay = (self._heap[0][0] - PREPARE_AHEAD - self._clock()) if self._heap else 3600.0
        if delay <= 0 or self._changed:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=delay)
