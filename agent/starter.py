"""How a run starts and ends on this agent: its journal row, its process, its output and
events; and runs due at the same instant, started back to back (``start_together``).

:class:`agent.executor.JobExecutor` adds *when* a run may start (overlap queues, pauses
held, cluster-wide locks) on top of this.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from agent.environment import AgentVariables
from agent.journal import RunJournal
from agent.locks import ClusterLocks
from agent.outbox import EventOutbox
from agent.outcome import final_event
from agent.output import LogStreamer, RunOutput
from agent.prepare import Prepared, prepare_run
from agent.runner import ProcessRunner, RunningProcess
from agent.secretstore import SecretStore
from natsched.calendars import Holds
from natsched.events import RunEvent, RunState
from natsched.groupsettings import GroupSettings, output_limit
from natsched.models import JobSpec, Mode, Overlap
from natsched.secrets import Masker
from natsched.vocab import RunTrigger

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ActiveRun:
    event: RunEvent
    process: RunningProcess
    masker: Masker = field(default_factory=lambda: Masker(()))
    output: RunOutput | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True, slots=True)
class DueRun:
    """A run due at a known instant, made ready before it (:meth:`RunStarter.ready_run`)."""

    spec: JobSpec
    key: str
    event: RunEvent  # its first event (queued)
    ready: Prepared
    plain: bool  # nothing holds it and it starts with posix_spawn: start_together may start it
    started: RunEvent  # its journal row before the spawn, and that row's record
    row: bytes
    output: RunOutput


class RunStarter:
    """Starts prepared runs and sees them to their end; owns the runs going on (``active``)."""

    def __init__(
        self,
        *,
        agent: str,
        runner: ProcessRunner,
        outbox: EventOutbox,
        logs: LogStreamer,
        kill_grace: float = 5.0,
        journal: RunJournal | None = None,
        secrets: SecretStore | None = None,
        holds: Callable[[], Holds] = Holds,
        group_settings: Callable[[str], GroupSettings | None] = lambda group: None,
    ) -> None:
        self.agent = agent
        self.journal = journal
        self.runner = runner
        self.outbox = outbox
        self.logs = logs
        self.kill_grace = kill_grace
        self.active: dict[str, dict[str, ActiveRun]] = {}  # job key -> run id -> run
        self._queues: dict[str, asyncio.Lock] = {}  # overlap queue: the run holding its job's turn
        self._waiters: set[asyncio.Task[None]] = set()
        self.base_env = AgentVariables(os.environ)  # only its pass-through part reaches a job
        self.locks: ClusterLocks | None = None  # set once connected (cluster-wide overlap)
        self.holds = holds  # the calendars and pauses in force now
        self.secrets = secrets or SecretStore(None)  # gets NATS once connected, to read values
        self.group_settings = group_settings  # replicated per-group settings (env, user, cwd)

    def running_runs(self, limit: int) -> dict[str, str]:
        """run id -> job key of the runs going on here (the oldest ``limit``)."""
        runs = {run_id: key for key, active in self.active.items() for run_id in active}
        return dict(sorted(runs.items())[:limit])

    @property
    def running(self) -> int:
        return sum(len(runs) for runs in self.active.values())

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
        output = self._output(spec, event, ready.masker)
        cancelled: asyncio.CancelledError | None = None
        if self.journal is not None:
            # Committed before the process exists: an agent killed from here on leaves this row,
            # and the next one records the run (started, then lost). Without it a run could
            # execute while its started event was still in memory, and nobody would ever know.
            # The cluster lock it holds too: the next one releases it (the answer to the run
            # request goes out before the started event is journaled again with the pid).
            self.journal.started(
                event.moved_to(RunState.STARTED, started_at=time.time()), locked=self._cluster_locked(spec)
            )
            if not self.running:
                self.journal.flush_now()  # alone: nobody to share a commit with, no turn to wait
            else:
                # Runs going on end and start others: in one commit with the rows of the runs
                # starting in this turn of the loop (at 32 in flight, -19 % of the loop's CPU per run).
                try:
                    await self.journal.committed()
                except asyncio.CancelledError as exc:
                    # The row may be committed already: the run starts (and is seen to its end),
                    # as if the cancellation had come a moment later; the caller's comes after.
                    self.journal.flush_now()
                    cancelled = exc
        first: RunEvent
        try:
            process = await self.runner.start(ready.process, on_output=output.write)
        except Exception as exc:  # noqa: BLE001 - a run that cannot start is a failed run, not a crash
            first = await self._not_started(spec, event, ready.masker, exc)
        else:
            first = await self._running(spec, event, process, ready.masker, output)
        if cancelled is not None:
            raise cancelled
        return first

    def ready_run(self, spec: JobSpec, event: RunEvent, ready: Prepared) -> DueRun:
        """``event``'s run, due at its ``scheduled_at``, made ready for :meth:`start_together`
        before that instant: what can be decided and built ahead is, so that little is left
        between the slot and the spawn."""
        plain = (
            ready.process is not None
            and self.runner.startable_now(ready.process)
            and not self._cluster_locked(spec)
            and not self.hold_of(spec, event.trigger, event.scheduled_at)[0]
        )
        started = event.moved_to(RunState.STARTED, started_at=event.scheduled_at or time.time())
        output = self._output(spec, event, ready.masker)
        return DueRun(spec, spec.key, event, ready, plain, started, started.to_record(), output)

    async def start_together(self, runs: list[DueRun]) -> list[int]:
        """Start runs due at the same instant back to back, with no turn of the event loop
        between two spawns; return the indexes of the runs it did not start, for ``launch``.

        Why: started one task each, the k-th run waited for the k-1 before it *and* for
        everything they set going (event publishing, output, exits). Here each run's journal
        row is committed before its process exists (as ``_start`` does for one), in commits
        of 1, 2, 4... rows (the first run does not wait for the rows of 200), then the events
        go out. Left to ``launch``: a run that is held, prepared with an error, must start
        another way (user, cwd), or whose overlap policy has something to wait for or decide.
        """
        now: list[int] = []
        left: list[int] = []
        keys: set[str] = set()
        for index, run in enumerate(runs):
            if run.plain and await self._free_to_start(run.spec, run.key, keys):
                now.append(index)
                keys.add(run.key)
            else:
                left.append(index)
        spawned: list[tuple[DueRun, RunningProcess | Exception]] = []
        position, chunk = 0, 1
        while position < len(now):
            part = [runs[index] for index in now[position : position + chunk]]
            position, chunk = position + chunk, chunk * 2
            if self.journal is not None:
                for run in part:
                    self.journal.started(run.started, data=run.row)
                self.journal.flush_now()
            for run in part:
                assert run.ready.process is not None
                try:
                    spawned.append((run, self.runner.start_now(run.ready.process, run.output.write)))
                except Exception as exc:  # noqa: BLE001 - a run that cannot start is a failed run
                    spawned.append((run, exc))
        for run, outcome in spawned:  # these do not wait: every started run is tracked at once
            if not isinstance(outcome, Exception):
                await self._running(run.spec, run.event, outcome, run.ready.masker, run.output)
        for run, outcome in spawned:  # these wait for the journal's commit of their end
            if isinstance(outcome, Exception):
                await self._not_started(run.spec, run.event, run.ready.masker, outcome)
        return left

    async def _free_to_start(self, spec: JobSpec, key: str, taken: set[str]) -> bool:
        """Its overlap policy lets the run start now (taking the job's queue turn for ``queue``)."""
        if spec.overlap is Overlap.ALLOW:
            return True
        lock = self._queues.setdefault(key, asyncio.Lock()) if spec.overlap is Overlap.QUEUE else None
        if key in taken or self.active.get(key) or (lock is not None and lock.locked()):
            return False
        if lock is not None:
            await lock.acquire()  # free: taken at once, no turn of the loop
        return True

    def _output(self, spec: JobSpec, event: RunEvent, masker: Masker) -> RunOutput:
        limit = output_limit(spec.output_limit, self.group_settings(spec.group))
        return RunOutput(event.run_id, self.logs.publish, masker, limit)

    async def _not_started(self, spec: JobSpec, event: RunEvent, masker: Masker, exc: Exception) -> RunEvent:
        failed = event.moved_to(RunState.FAILED, reason=masker.text(str(exc) or type(exc).__name__))
        self._release_queue(spec)
        await self.publish(failed)
        await self._release_lock(spec, event.run_id)
        return failed

    async def _running(
        self, spec: JobSpec, event: RunEvent, process: RunningProcess, masker: Masker, output: RunOutput
    ) -> RunEvent:
        started = event.moved_to(RunState.STARTED, started_at=process.started_at, pid=process.pid)
        run = ActiveRun(event=started, process=process, masker=masker, output=output)
        self.active.setdefault(spec.key, {})[event.run_id] = run
        locked = self._cluster_locked(spec)
        task = asyncio.create_task(self._finish(spec, run, locked), name=f"run-{event.run_id}")
        self._waiters.add(task)
        task.add_done_callback(self._waiters.discard)
        return started

    async def _finish(self, spec: JobSpec, run: ActiveRun, locked: bool) -> None:
        """The run's started event, then its end. The started event waits one turn of the loop:
        the caller answers the run request (the pid, to the master) in this turn, and nats-py
        sends that answer before the event's work (journal, outbox, JetStream) is queued; the
        journal already holds the run (committed before the spawn)."""
        await asyncio.sleep(0)
        await self.publish(run.event, locked=locked)
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
                journal.spawned(event, locked=locked, data=data)  # its pid: the row is committed
            elif queued is not None:
                journal.queued(event, *queued)
        await self.outbox.publish(event, data)

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
