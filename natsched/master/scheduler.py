"""The master's scheduler for slave and load-balance jobs.

``Schedule`` is pure: given the jobs, their cursors (last fired slot) and ``now``,
``tick(now)`` says which slots are due. The service loop around it sleeps until the next
due time (or a definition change), *claims* each due slot by advancing the job's cursor
in ``natsched_state`` with compare-and-set, and only then dispatches. Two masters racing
for a slot cannot both win the CAS, so a slot is dispatched once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from natsched import codec, subjects
from natsched.errors import CodecError
from natsched.models import JobSpec, Mode
from natsched.triggers.fire import next_job_fire, time_triggers, trigger_kind, utc
from natsched.triggers.misfire import due_slots

log = logging.getLogger(__name__)


def master_scheduled(spec: JobSpec) -> bool:
    """Slave and load-balance jobs with a time trigger are the master's to fire."""
    return spec.enabled and spec.mode is not Mode.MIRROR and bool(time_triggers(spec))


@dataclass(frozen=True, slots=True)
class Due:
    spec: JobSpec
    slot: float
    trigger: str


class Schedule:
    """Pure scheduling state: no I/O, no clock."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobSpec] = {}
        self.cursors: dict[str, float] = {}
        self._heap: list[tuple[float, int, str, str]] = []
        self._generation: dict[str, int] = {}

    def set_job(self, key: str, spec: JobSpec | None, now: float) -> list[Due]:
        """Add, change or (with None) remove a job; returns catch-up slots per its misfire policy."""
        self._generation[key] = self._generation.get(key, 0) + 1
        if spec is None or not master_scheduled(spec):
            self.jobs.pop(key, None)
            return []
        self.jobs[key] = spec
        last = self.cursors.get(key)
        catch_up: list[Due] = []
        if last is not None:  # never fired: no backlog
            for trigger in time_triggers(spec):
                for slot in due_slots(trigger, utc(last), utc(now), spec.misfire, spec.misfire_cap):
                    catch_up.append(Due(spec, slot.timestamp(), trigger_kind(trigger)))
        catch_up.sort(key=lambda d: d.slot)
        self._push(spec, max(now, last or 0.0, *(d.slot for d in catch_up)))
        return catch_up[-spec.misfire_cap :]

    def _push(self, spec: JobSpec, after: float) -> None:
        best = next_job_fire(spec, after)
        if best is not None:
            heapq.heappush(self._heap, (best[0], self._generation[spec.key], spec.key, best[1]))

    def next_due(self) -> float | None:
        while self._heap and self._heap[0][1] != self._generation.get(self._heap[0][2]):
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def tick(self, now: float) -> list[Due]:
        """Every slot due at ``now``, each job's next slot queued behind it."""
        due: list[Due] = []
        while self._heap and self._heap[0][0] <= now:
            at, generation, key, name = heapq.heappop(self._heap)
            spec = self.jobs.get(key)
            if spec is None or generation != self._generation.get(key):
                continue
            due.append(Due(spec, at, name))
            self._push(spec, at)
        return due


class Cursors:
    """Per-job last fired slot in ``natsched_state``, advanced with compare-and-set."""

    def __init__(self, state: KeyValue) -> None:
        self._state = state
        self._revisions: dict[str, int] = {}

    async def load(self, key: str) -> float | None:
        try:
            entry = await self._state.get(subjects.cursor_key(key))
        except KeyNotFoundError:
            self._revisions[key] = 0
            return None
        self._revisions[key] = entry.revision or 0
        try:
            return float(codec.unpack(entry.value or b"", f"cursor {key}")["slot"])
        except (CodecError, KeyError, TypeError, ValueError):
            return None

    async def claim(self, key: str, slot: float) -> bool:
        """Advance the cursor to ``slot``; False if it is already there (another master fired it)."""
        for _ in range(3):
            revision = self._revisions.get(key)
            if revision is None:
                await self.load(key)
                continue
            try:
                self._revisions[key] = await self._state.update(
                    subjects.cursor_key(key), codec.pack({"slot": slot, "at": time.time()}), last=revision
                )
                return True
            except KeyWrongLastSequenceError:
                current = await self.load(key)
                if current is not None and current >= slot:
                    return False
        return False


class MasterScheduler:
    def __init__(
        self,
        jobs: KeyValue,
        state: KeyValue,
        fire: Callable[[Due], object],
        *,
        clock: Callable[[], float] = time.time,
        may_claim: Callable[[], bool] = lambda: True,
    ) -> None:
        self._jobs = jobs
        self._may_claim = may_claim
        self.cursors = Cursors(state)
        self.schedule = Schedule()
        self._fire = fire
        self._clock = clock
        self._wake = asyncio.Event()
        self.fired = 0

    async def _on_definition(self, key: str, value: bytes | None) -> None:
        spec: JobSpec | None = None
        if value:
            try:
                spec = codec.decode_job(value, key)
            except CodecError as exc:  # the master's job index warns about it, once
                log.debug("scheduler skips invalid job %s: %s", key, exc)
        if spec is not None and master_scheduled(spec) and key not in self.schedule.cursors:
            cursor = await self.cursors.load(key)
            if cursor is not None:
                self.schedule.cursors[key] = cursor
        for due in self.schedule.set_job(key, spec, self._clock()):
            await self._claim_and_fire(due)
        self._wake.set()

    async def _claim_and_fire(self, due: Due) -> None:
        if not self._may_claim():  # lease lost or stale (e.g. after a freeze): claim nothing
            log.warning(
                "%s slot %s not claimed: this master does not hold a fresh lease", due.spec.key, due.slot
            )
            return
        if await self.cursors.claim(due.spec.key, due.slot):
            self.schedule.cursors[due.spec.key] = due.slot
            self.fired += 1
            self._fire(due)

    async def watch_definitions(self) -> None:
        watcher = await self._jobs.watchall()
        async for entry in watcher:
            if entry is None:
                continue
            deleted = entry.operation in ("DEL", "PURGE")
            await self._on_definition(entry.key, None if deleted else entry.value)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self.watch_definitions())
            while True:
                self._wake.clear()
                next_at = self.schedule.next_due()
                delay = 3600.0 if next_at is None else next_at - self._clock()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), delay)
                for due in self.schedule.tick(self._clock()):
                    await self._claim_and_fire(due)
