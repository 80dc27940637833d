"""One scheduling core, shared by the master (slave and load-balance jobs) and the agent (mirror jobs).

``Schedule`` is pure: given the jobs, their cursors (last fired slot) and ``now``,
``tick(now)`` says which slots are due, and ``set_job`` applies the job's misfire policy to
the slots missed since its cursor. ``Scheduler`` is the thin async shell around it: it sleeps
until the next due time (or a definition change), records each due slot in a
``CursorStore`` *before* firing it, and fires only what the store accepted. The store is the
only thing that differs between master and agent: ``natsched_state`` with compare-and-set
(two masters racing for a slot cannot both win) or the agent's SQLite file (a crash after
the commit skips a slot, never runs it twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from natsched.models import JobSpec
from natsched.triggers.fire import next_job_fire, time_triggers, trigger_kind, utc
from natsched.triggers.misfire import due_slots
from natsched.vocab import RunTrigger

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Due:
    """One slot of one job to fire: ``trigger`` is the kind that fires then (cron, interval, once)."""

    spec: JobSpec
    slot: float
    trigger: RunTrigger


class CursorStore(Protocol):
    """Where each job's last fired slot is kept (epoch seconds)."""

    async def load(self, key: str) -> float | None:
        """The job's last recorded slot; None if it never fired (or its cursor was dropped)."""

    async def claim(self, due: Sequence[Due]) -> list[Due]:
        """Record each slot as its job's last fired one and return those recorded now, in order.

        A slot at or before the job's recorded cursor (another scheduler fired it) is not
        returned, so it is not fired again.
        """


class Schedule:
    """Heap of next fires per job; a change bumps the job's generation, which retires its old entries."""

    def __init__(self, wants: Callable[[JobSpec], bool]) -> None:
        self.wants = wants  # is this job ours to schedule (mode, enabled, has time triggers)
        self.jobs: dict[str, JobSpec] = {}
        self.cursors: dict[str, float] = {}
        self._heap: list[tuple[float, int, str, RunTrigger]] = []  # (fire at, generation, key, trigger kind)
        self._generation: dict[str, int] = {}

    def set_job(self, key: str, spec: JobSpec | None, now: float, *, fire_on_time: bool = False) -> list[Due]:
        """Add, change or (with None) remove a job; returns the slots to catch up per its misfire policy.

        A job that never fired has no backlog; with ``fire_on_time`` (a scheduler starting
        up) its latest slot still fires if it is on time (within the misfire grace).
        """
        self._generation[key] = self._generation.get(key, 0) + 1
        if spec is None or not self.wants(spec):
            self.jobs.pop(key, None)
            self.cursors.pop(key, None)  # a later return reloads it from the store
            return []
        self.jobs[key] = spec
        last = self.cursors.get(key)
        catch_up: list[Due] = []
        if last is not None or fire_on_time:
            since = None if last is None else utc(last)
            for trigger in time_triggers(spec):
                for slot in due_slots(trigger, since, utc(now), spec.misfire, spec.misfire_cap):
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
        """Every slot due at ``now`` and not yet fired, each job's next slot queued behind it."""
        due: list[Due] = []
        while self._heap and self._heap[0][0] <= now:
            at, generation, key, kind = heapq.heappop(self._heap)
            spec = self.jobs.get(key)
            if spec is None or generation != self._generation.get(key):
                continue  # superseded by a change
            if at > self.cursors.get(key, float("-inf")):
                due.append(Due(spec, at, kind))
            self._push(spec, at)
        return due

    def fired(self, due: Due) -> None:
        """``due`` was recorded in the cursor store: it is now the job's last fired slot."""
        self.cursors[due.spec.key] = max(due.slot, self.cursors.get(due.spec.key, due.slot))


Lookup = Callable[[str], Awaitable[JobSpec | None]]
Fire = Callable[[list[Due]], Awaitable[None]]


class Scheduler:
    """Runs a ``Schedule``: changed definitions in, claimed slots out to ``fire``.

    ``lookup(key)`` reads a job's current definition (None: gone); ``fire`` gets the slots
    of one tick after the store recorded them. ``ahead`` takes slots that many seconds
    early, so their cursors are committed before the slot and ``fire`` can start on the dot.
    """

    def __init__(
        self,
        schedule: Schedule,
        store: CursorStore,
        lookup: Lookup,
        fire: Fire,
        *,
        clock: Callable[[], float] = time.time,
        ahead: float = 0.0,
    ) -> None:
        self.schedule = schedule
        self._store = store
        self._lookup = lookup
        self._fire = fire
        self._clock = clock
        self._ahead = ahead
        self._changed: set[str] = set()
        self._wake = asyncio.Event()
        self._finishing: set[asyncio.Future[list[Due]]] = set()  # steps outliving a cancelled run
        self._settling = False  # its store is about to close: a step applies no more changes
        self.fired = 0

    def changed(self, keys: Iterable[str]) -> None:
        """These definitions changed (or appeared, or went): re-read them before the next tick."""
        self._changed.update(keys)
        self._wake.set()

    async def add(self, key: str, spec: JobSpec | None, *, fire_on_time: bool = False) -> None:
        """Schedule (or unschedule) one job now, firing what its misfire policy catches up."""
        if spec is not None and self.schedule.wants(spec) and key not in self.schedule.cursors:
            cursor = await self._store.load(key)
            if cursor is not None:
                self.schedule.cursors[key] = cursor
        catch_up = self.schedule.set_job(key, spec, self._clock(), fire_on_time=fire_on_time)
        if catch_up:
            await self._claim_and_fire(catch_up)

    async def apply_changes(self) -> None:
        changed, self._changed = self._changed, set()
        ordered = sorted(changed)
        for index, key in enumerate(ordered):
            if self._settling:  # stopping: the rest is read again from the store at the next start
                self._changed.update(ordered[index:])
                return
            await self.add(key, await self._lookup(key))

    async def step(self, now: float) -> list[Due]:
        """One tick at ``now``: changes applied, due slots claimed and fired; returns those fired."""
        if self._changed:
            await self.apply_changes()
        if self._settling:
            return []  # nothing new is claimed once the store is about to close
        due = self.schedule.tick(now + self._ahead)
        return await self._claim_and_fire(due) if due else []

    async def _claim_and_fire(self, due: list[Due]) -> list[Due]:
        claimed = await self._store.claim(due)
        for each in claimed:
            self.schedule.fired(each)
        if claimed:
            self.fired += len(claimed)
            await self._fire(claimed)
        return claimed

    async def run(self) -> None:
        while True:
            await self._sleep_until_due()
            await self._to_the_end(self.step(self._clock()))

    async def _to_the_end(self, step: Awaitable[list[Due]]) -> None:
        """A step finishes even when ``run`` is cancelled meanwhile (a leader stepping down):
        a cursor write already sent may land, and a slot claimed must reach ``fire``."""
        task = asyncio.ensure_future(step)
        self._finishing.add(task)
        task.add_done_callback(self._finished)
        await asyncio.shield(task)

    async def settle(self, timeout: float) -> None:
        """Let a step that outlived a cancelled ``run`` finish (before its store is closed).

        A slot it claimed still reaches ``fire``; changes it has not applied yet (an agent
        stopped while taking up 100k jobs just synced: seconds of decoding) are left, so the
        step ends now instead of running on into a closed store.
        """
        self._settling = True
        if self._finishing:
            await asyncio.wait(set(self._finishing), timeout=timeout)

    async def last_step(self, now: float) -> list[Due]:
        """After ``settle``, its store still open: the slots due by ``now`` claimed and fired.

        Changes not taken up stay for the next start (as ``settle`` leaves them). For a stop
        whose ``fire`` records rather than runs: an agent whose name was taken over records the
        slots that fell due since its run was cancelled (``step`` claims nothing once settling).
        """
        due = self.schedule.tick(now)
        return await self._claim_and_fire(due) if due else []

    def _finished(self, task: asyncio.Future[list[Due]]) -> None:
        self._finishing.discard(task)
        if not task.cancelled() and task.exception() is not None:  # retrieved: also when nobody awaits
            log.warning("scheduler step failed: %r", task.exception())

    async def _sleep_until_due(self) -> None:
        self._wake.clear()
        if self._changed:
            return
        next_at = self.schedule.next_due()
        delay = 3600.0 if next_at is None else next_at - self._ahead - self._clock()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
