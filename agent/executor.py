"""Starting runs on this agent: overlap policy, environment, process, logs and events.

``launch`` returns once the process has started (or the run was skipped or failed to
start); a waiter task owned by the executor publishes the final event when it ends.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.environment import AgentVariables
from agent.journal import RunJournal
from agent.locks import ClusterLocks
from agent.outbox import EventOutbox
from agent.outcome import final_event
from agent.output import LogStreamer, RunOutput
from agent.prepare import Prepared, first_event, prepare_run
from agent.runner import ProcessRunner, RunningProcess
from agent.secretstore import SecretStore
from natsched.calendars import Holds
from natsched.events import RunEvent, RunState
from natsched.groupsettings import GroupSettings, output_limit
from natsched.models import JobSpec, Mode, Overlap
from natsched.secrets import Masker
from natsched.vocab import RunTrigger

log = logging.getLogger(__name__)

# How long a ``replace`` run waits for the run it replaces beyond the kill grace.
REPLACE_EXTRA_WAIT = 10.0
# Runs of one job that may wait here (overlap queue, cluster lock, agent paused with --queue);
# more are recorded skipped: a trigger storm must not pile up runs in memory.
MAX_QUEUED = 100


@dataclass(slots=True)
class ActiveRun:
    event: RunEvent
    process: RunningProcess
    masker: Masker = field(default_factory=lambda: Masker(()))
    output: RunOutput | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class JobExecutor:
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
        self.agent = agent
        self.journal = journal
        self.max_queued = max_queued
        self.runner = runner
        self.outbox = outbox
        self.logs = logs
        self.kill_grace = kill_grace
        self.active: dict[str, dict[str, ActiveRun]] = {}  # job key -> run id -> run
        self._queues: dict[str, asyncio.Lock] = {}
        self._waiters: set[asyncio.Task[None]] = set()
        self._queued: dict[asyncio.Task[Any], RunEvent] = {}  # waiting their turn
        self.base_env = AgentVariables(os.environ)  # only its pass-through part reaches a job
        self.locks: ClusterLocks | None = None  # set once connected (cluster-wide overlap)
        self.holds = holds  # the calendars and pauses in force now
        self.secrets = secrets or SecretStore(None)  # gets NATS once connected, to read values
        self.group_settings = group_settings  # replicated per-group settings (env, user, cwd)
        self._held: list[tuple[JobSpec, RunEvent, tuple[str, ...], Mapping[str, str]]] = []

    def running_runs(self, limit: int) -> dict[str, str]:
        """run id -> job key of the runs going on here (the oldest ``limit``)."""
        runs = {run_id: key for key, active in self.active.items() for run_id in active}
        return dict(sorted(runs.items())[:limit])

    @property
    def running(self) -> int:
        return sum(len(runs) for runs in self.active.values())

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

    def hold_of(self, spec: JobSpec, trigger: RunTrigger, at: float | None) -> tuple[str, str]:
        """(action, reason) of the calendars and pauses for this run ('' = go ahead).

        An agent pause holds every run here; a job's calendar and pause are the master's to
        apply, except for mirror jobs, which this agent fires itself.
        """
        holds = self.holds()
        action, reason = holds.agent_hold(self.agent, trigger)
        if not action and spec.mode is Mode.MIRROR:
            action, reason = holds.job_hold(
                spec.calendar, spec.key, trigger, time.time() if at is None else at
            )
        return action, reason

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

    async def prepare(
        self, spec: JobSpec, event: RunEvent, args: tuple[str, ...], trigger_env: Mapping[str, str]
    ) -> Prepared:
        """The run's process (environment, argv, user, cwd), or why it cannot start."""
        return await prepare_run(
            spec,
            event,
            args,
            trigger_env,
            agent=self.agent,
            group=self.group_settings(spec.group),
            secrets=self.secrets,
            base=self.base_env,
            kill_grace=self.kill_grace,
        )

    async def _start(
        self,
        spec: JobSpec,
        event: RunEvent,
        args: tuple[str, ...],
        trigger_env: Mapping[str, str],
        ready: Prepared | None = None,
    ) -> RunEvent:
        """``ready``: the run prepared already (while its claim was out), if it starts now."""
        if ready is None or ready.run_id != event.run_id:
            ready = await self.prepare(spec, event, args, trigger_env)
        if ready.process is None:
            failed = event.moved_to(RunState.FAILED, reason=ready.error)
            self._release_queue(spec)
            await self.publish(failed)
            await self._release_lock(spec, event.run_id)
            return failed
        process_spec, masker = ready.process, ready.masker
        limit = output_limit(spec.output_limit, self.group_settings(spec.group))
        output = RunOutput(event.run_id, self.logs.publish, masker, limit)
        if self.journal is not None:
            # Committed before the process exists: an agent killed from here on leaves this row,
            # and the next one records the run (started, then lost). Without it a run could
            # execute while its started event was still in memory, and nobody would ever know.
            self.journal.started(event.moved_to(RunState.STARTED, started_at=time.time()))
            await self.journal.flush()
        try:
            process = await self.runner.start(process_spec, on_output=output.write)
        except Exception as exc:  # noqa: BLE001 - a run that cannot start is a failed run, not a crash
            failed = event.moved_to(RunState.FAILED, reason=masker.text(str(exc) or type(exc).__name__))
            self._release_queue(spec)
            await self.publish(failed)
            await self._release_lock(spec, event.run_id)
            return failed
        started = event.moved_to(RunState.STARTED, started_at=process.started_at, pid=process.pid)
        run = ActiveRun(event=started, process=process, masker=masker, output=output)
        self.active.setdefault(spec.key, {})[event.run_id] = run
        await self.publish(started, locked=self._cluster_locked(spec))
        task = asyncio.create_task(self._finish(spec, run), name=f"run-{event.run_id}")
        self._waiters.add(task)
        task.add_done_callback(self._waiters.discard)
        return started

    async def _finish(self, spec: JobSpec, run: ActiveRun) -> None:
        try:
            result = await run.process.wait()
        finally:
            runs = self.active.get(spec.key, {})
            runs.pop(run.event.run_id, None)
            if not runs:
                self.active.pop(spec.key, None)
            self._release_queue(spec)
            run.done.set()
        if run.output is not None:
            await run.output.close()
        await self.publish(final_event(run.event, result, run.masker))
        await self._release_lock(spec, run.event.run_id)

    async def publish(
        self,
        event: RunEvent,
        queued: tuple[JobSpec, tuple[str, ...], Mapping[str, str]] | None = None,
        *,
        locked: bool = False,
    ) -> None:
        """To the outbox, and to the journal that a restart reads (an end is committed first)."""
        journal = self.journal
        data = event.to_json()  # once for both
        if journal is not None:
            if event.state.final:
                journal.settle_slot(event.job, event.scheduled_at)  # e.g. skipped: recorded
                await journal.ended(event.run_id)
            elif event.state is RunState.STARTED:
                journal.started(event, locked=locked, data=data)
            elif queued is not None:
                journal.queued(event, *queued)
        await self.outbox.publish(event, data)

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

    def _cluster_locked(self, spec: JobSpec) -> bool:
        """Load-balance jobs have one overlap domain, the cluster; mirror and slave, the agent."""
        return self.locks is not None and spec.mode is Mode.LOAD_BALANCE and spec.overlap is not Overlap.ALLOW

    async def _release_lock(self, spec: JobSpec, run_id: str) -> None:
        if self._cluster_locked(spec):
            assert self.locks is not None
            await self.locks.release(spec.key, run_id)

    def _release_queue(self, spec: JobSpec) -> None:
        if self._cluster_locked(spec):
            return
        lock = self._queues.get(spec.key)
        if lock is not None and lock.locked():
            lock.release()

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
