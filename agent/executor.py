"""Starting runs on this agent: overlap policy, pauses and calendars, cluster-wide locks.

``launch`` returns once the process has started (or the run was skipped, queued or failed
to start); how a run starts and ends (journal, process, output, events) is
:class:`agent.starter.RunStarter`'s, and a waiter task it owns publishes the final event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from agent.journal import RunJournal
from agent.outbox import EventOutbox
from agent.output import LogStreamer
from agent.prepare import Prepared, first_event
from agent.runner import ProcessRunner
from agent.secretstore import SecretStore
from agent.starter import RunStarter
from natsched.calendars import Holds
from natsched.events import RunEvent, RunState
from natsched.groupsettings import GroupSettings
from natsched.models import JobSpec, Overlap
from natsched.vocab import RunTrigger

log = logging.getLogger(__name__)

# How long a ``replace`` run waits for the run it replaces beyond the kill grace.
REPLACE_EXTRA_WAIT = 10.0
# Runs of one job that may wait here (overlap queue, cluster lock, agent paused with --queue);
# more are recorded skipped: a trigger storm must not pile up runs in memory.
MAX_QUEUED = 100


class JobExecutor(RunStarter):
    """Starts runs per their job's overlap policy, the pauses in force and cluster-wide locks."""

    def __init__(
        self,
        *,
        agent: str,
        runner: ProcessRunner,
        outbox: EventOutbox,
        logs: LogStreamer,
        kill_grace: float = 5.0,
        journal: RunJournal | None = None,
        max_queued: int = MAX_QUEUED,
        secrets: SecretStore | None = None,
        holds: Callable[[], Holds] = Holds,
        group_settings: Callable[[str], GroupSettings | None] = lambda group: None,
    ) -> None:
        super().__init__(
            agent=agent,
            runner=runner,
            outbox=outbox,
            logs=logs,
            kill_grace=kill_grace,
            journal=journal,
            secrets=secrets,
            holds=holds,
            group_settings=group_settings,
        )
        self.max_queued = max_queued
        self._queued: dict[asyncio.Task[Any], RunEvent] = {}  # waiting their turn
        self._held: list[tuple[JobSpec, RunEvent, tuple[str, ...], Mapping[str, str]]] = []

    async def launch(
        self,
        spec: JobSpec,
        *,
        trigger: RunTrigger,
        scheduled_at: float | None = None,
        detail: Mapping[str, str] | None = None,
        run_id: str | None = None,
        attempt: int = 1,
        args: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
        ready: Prepared | None = None,
    ) -> RunEvent:
        """Start a run of ``spec`` per its overlap policy; return its first event.

        ``args`` are appended to the command; ``env`` (from a trigger) overrides the job's.
        ``ready``: the run prepared already (:meth:`prepare` of its :func:`first_event`), used if it
        starts at once; a run that waits its turn is prepared when it starts.
        """
        event = first_event(
            self.agent,
            spec,
            trigger=trigger,
            scheduled_at=scheduled_at,
            detail=detail,
            run_id=run_id,
            attempt=attempt,
        )
        action, reason = self.hold_of(spec, trigger, scheduled_at)
        if action == "queue" and self._waiting(spec.key) >= self.max_queued:
            action, reason = "skip", f"{reason}; {self.max_queued} runs already queued"
        if action == "skip":
            skipped = event.moved_to(RunState.SKIPPED, reason=reason)
            await self.publish(skipped)
            return skipped
        if action == "queue":
            self._held.append((spec, event, args, env or {}))
            await self.publish(event.moved_to(RunState.QUEUED, reason=reason), (spec, args, env or {}))
            return event
        return await self._launch_event(spec, event, args, env or {}, ready)

    async def release_held(self) -> None:
        """Start the held runs whose pause was lifted (called when the settings change)."""
        held, self._held = self._held, []
        for spec, event, args, env in held:
            if self.hold_of(spec, event.trigger, event.scheduled_at)[0] == "queue":
                self._held.append((spec, event, args, env))
                continue
            try:
                await self._launch_event(spec, event, args, env)
            except Exception:  # noqa: BLE001 - one bad launch must not keep the others held
                log.exception("held run %s of %s could not be started", event.run_id, spec.key)

    async def _launch_event(
        self,
        spec: JobSpec,
        event: RunEvent,
        args: tuple[str, ...],
        env: Mapping[str, str],
        ready: Prepared | None = None,
    ) -> RunEvent:
        if self._cluster_locked(spec):
            return await self._launch_exclusive(spec, event, args, env, ready)
        current = self.active.get(spec.key)
        if current and spec.overlap is Overlap.FORBID:
            skipped = event.moved_to(
                RunState.SKIPPED, reason=f"overlap forbid: {next(iter(current))} still running"
            )
            await self.publish(skipped)
            return skipped
        if current and spec.overlap is Overlap.REPLACE:
            ready = None  # prepared before the wait for the replaced run: prepare it afresh
            for run in list(current.values()):
                await run.process.kill(self.kill_grace)
                await run.done.wait()
        if spec.overlap is Overlap.QUEUE:
            lock = self._queues.setdefault(spec.key, asyncio.Lock())
            if lock.locked():
                if self._waiting(spec.key) >= self.max_queued:
                    return await self._queue_full(event)
                # Answer at once (a dispatcher must not wait for the running one to end): the
                # run is recorded queued and starts from a task when its turn comes.
                await self.publish(event, (spec, args, env))
                task = asyncio.create_task(self._start_in_turn(spec, event, args, env, lock))
                self._queued[task] = event
                task.add_done_callback(lambda t: self._queued.pop(t, None))
                return event
            await lock.acquire()
            try:
                return await self._start(spec, event, args, env, ready)
            except BaseException:
                lock.release()
                raise
        return await self._start(spec, event, args, env, ready)

    async def _launch_exclusive(
        self,
        spec: JobSpec,
        event: RunEvent,
        args: tuple[str, ...],
        env: Mapping[str, str],
        ready: Prepared | None = None,
    ) -> RunEvent:
        """A load-balance job with forbid/replace/queue: one run in the whole cluster.

        The run that holds the job's lock runs; for ``replace`` the holder is stopped (by the
        master's cancel when it runs elsewhere, here when it runs on this agent) and this run
        starts once the lock is free; for ``queue`` it starts when the holder ends. Both
        answer ``queued`` at once, so the dispatcher is never kept waiting.
        """
        assert self.locks is not None
        holder = await self.locks.acquire(spec.key, event.run_id)
        if holder is None:
            return await self._start(spec, event, args, env, ready)
        if spec.overlap is Overlap.FORBID:
            skipped = event.moved_to(RunState.SKIPPED, reason=f"overlap forbid: {holder} still running")
            await self.publish(skipped)
            return skipped
        if spec.overlap is Overlap.QUEUE and self._waiting(spec.key) >= self.max_queued:
            return await self._queue_full(event)
        if spec.overlap is Overlap.REPLACE:
            await self.cancel(holder.run_id)
        await self.publish(event, (spec, args, env))
        limit = None if spec.overlap is Overlap.QUEUE else self.kill_grace + REPLACE_EXTRA_WAIT
        task = asyncio.create_task(self._start_when_free(spec, event, args, env, limit))
        self._queued[task] = event
        task.add_done_callback(lambda t: self._queued.pop(t, None))
        return event

    async def _start_when_free(
        self,
        spec: JobSpec,
        event: RunEvent,
        args: tuple[str, ...],
        env: Mapping[str, str],
        limit: float | None,
    ) -> None:
        """Poll the lock (backing off to 0.5 s) until this run holds it, then start."""
        assert self.locks is not None
        loop = asyncio.get_running_loop()
        deadline = None if limit is None else loop.time() + limit
        delay = 0.02
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
            try:
                holder = await self.locks.acquire(spec.key, event.run_id)
            except Exception as exc:  # noqa: BLE001 - NATS away for a moment: keep waiting
                log.debug("lock of %s not readable now: %r", spec.key, exc)
                continue
            if holder is None:
                break
            if deadline is not None and loop.time() > deadline:
                reason = f"overlap replace: {holder} did not stop within {limit:g}s"
                await self.publish(event.moved_to(RunState.SKIPPED, reason=reason))
                return
        current = asyncio.current_task()
        if current is not None:
            self._queued.pop(current, None)  # its turn came: no longer waiting
        await self._start(spec, event, args, env)

    async def _start_in_turn(
        self,
        spec: JobSpec,
        event: RunEvent,
        args: tuple[str, ...],
        env: Mapping[str, str],
        lock: asyncio.Lock,
    ) -> None:
        await lock.acquire()
        current = asyncio.current_task()
        if current is not None:
            self._queued.pop(current, None)  # its turn came: no longer waiting
        try:
            await self._start(spec, event, args, env)
        except BaseException:
            lock.release()
            raise

    def _waiting(self, job_key: str) -> int:
        """Runs of the job waiting here (their turn, the cluster lock, or a pause)."""
        return sum(1 for e in self._queued.values() if e.job == job_key) + sum(
            1 for _, e, _, _ in self._held if e.job == job_key
        )

    async def _queue_full(self, event: RunEvent) -> RunEvent:
        reason = f"overlap queue: {self.max_queued} runs already waiting (the agent's limit per job)"
        skipped = event.moved_to(RunState.SKIPPED, reason=reason)
        await self.publish(skipped)
        return skipped

    async def cancel(self, run_id: str) -> bool:
        """Signal the run's process tree (TERM, KILL after the grace); False if not here."""
        for runs in self.active.values():
            run = runs.get(run_id)
            if run is not None:
                await run.process.kill(self.kill_grace)
                return True
        return False

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, let runs finish within ``grace``, kill the rest; final events go out."""
        for _, event, _, _ in self._held:
            await self.publish(event.moved_to(RunState.SKIPPED, reason="agent shut down while held"))
        self._held.clear()
        waiting = dict(self._queued)  # queued runs will not get their turn now
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        for event in waiting.values():
            await self.publish(event.moved_to(RunState.SKIPPED, reason="agent shut down while queued"))
        await self.runner.shutdown(grace)
        if self._waiters:
            await asyncio.wait(set(self._waiters), timeout=grace + self.kill_grace + 5)
