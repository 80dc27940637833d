"""Mirror scheduling: the agent fires its mirror jobs itself, from the local cache.

No master, no NATS needed. The shared scheduling core (``natsched.schedule``) computes fire
times on the wall-clock grid (never ``sleep(interval)`` accumulations, so no drift) and
applies misfire policies; this module gives it the agent's cursor store, SQLite. The last
fired slot of each job is committed *before* the run starts, so a restart never runs a slot
twice and applies the job's misfire policy to the slots it missed. The slots a cursor moves
past are first written to the run journal, and leave it with their run's first record: an
agent killed between the two (milliseconds) launches them at its next start, so a slot is
never neither run nor recorded.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from collections.abc import Callable, Sequence

import aiosqlite

from agent.cache import CachedJob, JobCache
from agent.executor import JobExecutor
from agent.journal import ClaimedSlot, RunJournal
from agent.nameguard import NameGate
from agent.prepare import first_event
from agent.starter import DueRun
from natsched.errors import CodecError
from natsched.events import RunEvent, RunState, new_run_id
from natsched.models import JobSpec, Mode
from natsched.schedule import Due, Schedule, Scheduler
from natsched.triggers.fire import time_triggers
from natsched.vocab import RunTrigger

log = logging.getLogger(__name__)

# Seconds a tick comes before its slots: claims and preparing every run due (~0.1 ms each)
# happen before the slot, so a burst of runs starts on the dot.
PREPARE_AHEAD = 0.1
SPIN = 0.002  # seconds before a slot the scheduler stops sleeping and waits it out (see _until)
_SCHEMA = "CREATE TABLE IF NOT EXISTS mirror_cursor (key TEXT PRIMARY KEY, last_fired REAL NOT NULL);"
_KINDS = {kind.value for kind in RunTrigger}
# Rows per claim statement: well under SQLite's limit of host parameters.
_CLAIM_BATCH = 5000
_Planned = tuple[Due, DueRun]  # a slot's run, prepared ahead of the slot


def mirror_scheduled(spec: JobSpec) -> bool:
    return spec.enabled and spec.mode is Mode.MIRROR and bool(time_triggers(spec))


def _first_slots(due: Sequence[Due]) -> tuple[list[Due], dict[str, list[Due]]]:
    """Each job's first slot (in slot order), and its further slots of the tick, in order."""
    first: list[Due] = []
    more: dict[str, list[Due]] = {}
    for each in sorted(due, key=lambda d: d.slot):  # stable: a job's slots stay in order
        if each.spec.key in more:
            more[each.spec.key].append(each)
        else:
            more[each.spec.key] = []
            first.append(each)
    return first, more


class SqliteCursors:
    """Per-job last fired slot in the agent's SQLite file; this process is its only writer,
    so the whole table is read once and kept in memory."""

    def __init__(self, db: aiosqlite.Connection, journal: RunJournal | None = None) -> None:
        self._db = db
        self._journal = journal
        self._cursors: dict[str, float] | None = None

    async def _all(self) -> dict[str, float]:
        if self._cursors is None:
            await self._db.executescript(_SCHEMA)
            await self._db.commit()
            async with self._db.execute("SELECT key, last_fired FROM mirror_cursor") as cursor:
                self._cursors = {row[0]: float(row[1]) for row in await cursor.fetchall()}
        return self._cursors

    async def load(self, key: str) -> float | None:
        return (await self._all()).get(key)

    async def claim(self, due: Sequence[Due]) -> list[Due]:
        """All slots of a tick in one transaction; a slot at or before a job's cursor is refused."""
        cursors = await self._all()
        claimed: list[Due] = []
        for each in due:
            if each.slot > cursors.get(each.spec.key, float("-inf")):
                cursors[each.spec.key] = each.slot
                claimed.append(each)
        if self._journal is not None and claimed:
            self._journal.slots_claimed([ClaimedSlot(d.spec.key, d.slot, d.trigger.value) for d in claimed])
        latest = {each.spec.key: cursors[each.spec.key] for each in claimed}
        rows = list(latest.items())
        for start in range(0, len(rows), _CLAIM_BATCH):
            await self._db.executemany(
                "INSERT OR REPLACE INTO mirror_cursor (key, last_fired) VALUES (?, ?)",
                rows[start : start + _CLAIM_BATCH],
            )
        await self._db.commit()
        return claimed

    async def forget(self, key: str) -> None:
        """A job no longer scheduled here: re-enabled later, it starts afresh (no backlog)."""
        if (await self._all()).pop(key, None) is not None:
            await self._db.execute("DELETE FROM mirror_cursor WHERE key = ?", (key,))
            await self._db.commit()


class MirrorScheduler:
    """Owns the schedule of every enabled mirror job in the cache."""

    def __init__(
        self,
        cache: JobCache,
        executor: JobExecutor,
        *,
        clock: Callable[[], float] = time.time,
        gate: NameGate | None = None,
    ) -> None:
        self._cache = cache
        self._executor = executor
        self._gate = gate or NameGate()
        self._clock = clock
        self.cursors = SqliteCursors(cache.db, executor.journal)
        self.core = Scheduler(
            Schedule(mirror_scheduled),
            self.cursors,
            self._lookup,
            self._fire,
            clock=clock,
            ahead=PREPARE_AHEAD,
        )
        self.on_late: Callable[[float], None] = lambda seconds: None  # e.g. a metrics histogram
        # Seconds between each slot and its firing, most recent last (for bench/ and metrics).
        self.lateness: collections.deque[float] = collections.deque(maxlen=100_000)

    @property
    def fired(self) -> int:
        return self.core.fired

    def on_change(self, keys: set[str]) -> None:
        """Called by the sync after definitions changed in the cache."""
        self.core.changed(keys)

    async def _lookup(self, key: str) -> JobSpec | None:
        """One job from the cache; None (and its cursor dropped) if it is gone, not mirror,
        disabled or invalid."""
        spec = self._schedulable(await self._cache.get(key))
        was_scheduled = key in self.core.schedule.jobs
        if spec is None:
            await self.cursors.forget(key)  # re-enabled later means: start afresh, no catch-up
            if was_scheduled:
                log.info("mirror job %s unscheduled", key)
        elif not was_scheduled:
            log.info("mirror job %s scheduled", key)
        return spec

    @staticmethod
    def _schedulable(cached: CachedJob | None) -> JobSpec | None:
        if cached is None or cached.mode != Mode.MIRROR.value:
            return None
        try:
            spec = cached.spec()
        except CodecError as exc:
            log.warning("mirror job %s is invalid in the cache, not scheduled: %s", cached.key, exc)
            return None
        return spec if mirror_scheduled(spec) else None

    async def _fire(self, due: list[Due]) -> None:
        """Launch one tick's slots (cursors committed): jobs at once, each job's slots in order.

        The tick comes ``PREPARE_AHEAD`` early: every run is prepared (event, environment,
        argv) before its slot, and at the slot the executor starts them back to back
        (``start_together``); what it leaves (held, waiting on an overlap policy, started
        another way) and a job's further slots of the tick go through ``launch``, a task per job.
        """
        if not await self._gate.ready():  # our name went to another agent while we were frozen
            await self._skip(due, "not run: this agent's name was taken over while it was silent")
            return
        now = self._clock()
        first, more = _first_slots(due)
        # Prepared side by side, until the first slot: one reading a secret from a slow NATS
        # must not hold the others back; it starts through ``launch`` once prepared.
        preparing = {each.spec.key: asyncio.create_task(self._plan(each, now)) for each in first}
        if preparing:
            await asyncio.wait(preparing.values(), timeout=max(0.0, first[0].slot - self._clock()))
        planned = [run for task in preparing.values() if task.done() and (run := task.result()) is not None]
        left = await self._start_together(planned)
        slow = {key: task for key, task in preparing.items() if not task.done()}
        if not left and not slow and not any(more.values()):
            return
        async with asyncio.TaskGroup() as group:
            for run in left:
                group.create_task(self._launch_rest(run, more.pop(run[0].spec.key, [])))
            for key, task in slow.items():
                group.create_task(self._launch_when_prepared(task, more.pop(key, [])))
            for slots in more.values():
                if slots:
                    group.create_task(self._launch_in_order(slots, now))

    async def _start_together(self, planned: list[_Planned]) -> list[_Planned]:
        """Each slot's runs started at the slot, back to back; returns those left to ``launch``."""
        left: list[_Planned] = []
        for slot, runs in itertools.groupby(planned, key=lambda run: run[0].slot):
            together = list(runs)
            await self._until(slot)
            for _ in together:
                self._late(self._clock() - slot)
            try:
                held = await self._executor.start_together([run for _, run in together])
            except Exception:  # a launch bug must not stop every other schedule
                log.exception("mirror runs due at %s could not be started", slot)
                continue
            left += [together[index] for index in held]
        return left

    async def _plan(self, due: Due, now: float) -> _Planned | None:
        """The run of ``due``, prepared ahead of its slot."""
        late = max(0.0, now - due.slot)
        detail = {"late_ms": f"{late * 1000:.1f}"} if late > 1 else {}
        executor = self._executor
        event = first_event(
            executor.agent, due.spec, trigger=due.trigger, scheduled_at=due.slot, detail=detail
        )
        try:
            return due, executor.ready_run(due.spec, event, await executor.prepare(due.spec, event, (), {}))
        except Exception:  # a launch bug must not stop every other schedule
            log.exception("mirror job %s could not be launched", due.spec.key)
            return None

    async def _until(self, slot: float) -> None:
        """Return at ``slot``, not up to a millisecond after: the loop's timers wake on epoll's
        millisecond timeouts (and late under load), so the last ``SPIN`` is waited out here."""
        early = slot - self._clock()
        if early > SPIN:
            await asyncio.sleep(early - SPIN)
        give_up = time.monotonic() + 2 * SPIN  # bounded whatever the clock does
        while self._clock() < slot and time.monotonic() < give_up:
            pass

    def _late(self, seconds: float) -> None:
        self.lateness.append(seconds)
        self.on_late(seconds)

    async def _launch_when_prepared(self, preparing: asyncio.Task[_Planned | None], slots: list[Due]) -> None:
        run = await preparing
        if run is not None:
            await self._launch_rest(run, slots)
        else:
            await self._launch_in_order(slots, self._clock())

    async def _launch_rest(self, run: _Planned, slots: list[Due]) -> None:
        """A run ``start_together`` left to ``launch``, then the job's further slots."""
        due, ready = run
        try:
            await self._executor.launch(
                due.spec,
                trigger=due.trigger,
                scheduled_at=due.slot,
                detail=ready.event.detail,
                run_id=ready.event.run_id,
                ready=ready.ready,
            )
        except Exception:  # a launch bug must not stop every other schedule
            log.exception("mirror job %s could not be launched", due.spec.key)
        await self._launch_in_order(slots, self._clock())

    async def skip_missed(self, timeout: float) -> None:
        """Stopping because another agent took our name: the slots that fell due since the last
        tick (all of a freeze, and those due while the stop waited for running jobs) get one
        more tick, which the gate turns into ``skipped`` records; else an agent whose heartbeat
        noticed first would leave them without a trace. Called after ``core.settle``: a plain
        ``step`` claims nothing then."""
        try:
            async with asyncio.timeout(timeout):
                await self.core.last_step(self._clock())
        except Exception as exc:  # noqa: BLE001 - stopping anyway: say what was not recorded
            log.warning("mirror slots missed while silent not recorded: %r", exc)

    async def _skip(self, due: list[Due], reason: str) -> None:
        """Recorded, not silently dropped: each slot gets a ``skipped`` event saying why."""
        log.warning("%d mirror slot(s) %s", len(due), reason)
        for each in due:
            event = RunEvent(
                run_id=new_run_id(),
                job=each.spec.key,
                agent=self._executor.agent,
                state=RunState.SKIPPED,
                trigger=each.trigger,
                scheduled_at=each.slot,
                reason=reason,
            )
            await self._executor.publish(event)

    async def _launch_in_order(self, slots: list[Due], now: float) -> None:
        for each in slots:
            await self._launch(each, max(0.0, now - each.slot))

    async def _launch(self, due: Due, late: float) -> None:
        early = due.slot - self._clock()
        if early > 0:  # prepared ahead (cursor already saved): start on the dot
            await asyncio.sleep(early)
        self._late(self._clock() - due.slot)
        detail = {"late_ms": f"{late * 1000:.1f}"} if late > 1 else {}
        try:
            await self._executor.launch(due.spec, trigger=due.trigger, scheduled_at=due.slot, detail=detail)
        except Exception:  # a launch bug must not stop every other schedule
            log.exception("mirror job %s could not be launched", due.spec.key)

    async def run(self) -> None:
        for index, cached in enumerate(await self._cache.all(mode=Mode.MIRROR.value)):
            if index % 500 == 499:
                await asyncio.sleep(0)  # decoding 100k jobs takes seconds: let heartbeats and sync run
            spec = self._schedulable(cached)
            if spec is not None:
                # Start-up: a never-fired job's on-time slot fires; missed ones follow its misfire policy.
                await self.core.add(spec.key, spec, fire_on_time=True)
        log.info("mirror scheduler: %d job(s) scheduled", len(self.core.schedule.jobs))
        await self._launch_unlaunched()
        await self.core.run()

    async def _launch_unlaunched(self) -> None:
        """The slots the previous start took but died before launching (see ClaimedSlot)."""
        journal = self._executor.journal
        if journal is None or not journal.unlaunched:
            return
        left, journal.unlaunched = journal.unlaunched, []
        due: list[Due] = []
        for each in left:
            spec = self.core.schedule.jobs.get(each.job)
            cursor = await self.cursors.load(each.job)
            if spec is None or cursor is None or each.slot > cursor or each.trigger not in _KINDS:
                # Gone, disabled or no longer ours; or its cursor never moved past the slot (the
                # schedule fires it as usual): nothing to launch from here.
                journal.settle_slot(each.job, each.slot)
                continue
            due.append(Due(spec, each.slot, RunTrigger(each.trigger)))
        if due:
            log.warning(
                "%d mirror slot(s) taken but not launched when this agent last stopped: launching them now",
                len(due),
            )
            await self._fire(due)
